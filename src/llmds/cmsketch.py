"""Seed import path of :mod:`llmds.sketches.cmsketch`, where the module lives."""

from llmds.sketches.cmsketch import CountMinSketch  # noqa: F401
