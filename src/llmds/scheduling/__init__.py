"""Scheduling structures: the indexed heap, the seed micro-batching scheduler, admission control.

    indexed_heap  IndexedHeap: a heap with O(log n) update and delete by key
    scheduler     the seed Scheduler: micro-batches with SLO deadlines
    admissions    AdmissionController: sliding-window request and token rate limits

The engine's continuous-batching step planner is ``llmds.engine.sched`` (its waiting queue is
an ``IndexedHeap``); the server's admission gate is ``llmds.server.admission``.  The seed
paths ``llmds.indexed_heap``, ``llmds.scheduler`` and ``llmds.admissions`` re-export these
modules.
"""
