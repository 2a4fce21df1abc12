"""Seed import path of :mod:`llmds.scheduling.scheduler`, where the module lives."""

from llmds.scheduling.scheduler import Request, Scheduler, default_priority  # noqa: F401
