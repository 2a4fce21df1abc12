"""Seed import path of :mod:`llmds.scheduling.admissions`, where the module lives."""

from llmds.scheduling.admissions import AdmissionController  # noqa: F401
