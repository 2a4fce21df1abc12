"""Pin the engine's threads to CPUs: the stepping thread on one, the runtime's workers on the others.

A server process runs the engine's stepping thread, its OpenMP (torch) and numba workers, the
event loop and, on a small machine, the load generator too.  Left to the scheduler, a woken
thread often lands on the core where a worker is inside a parallel region, and the whole region
waits for that worker.  Pinned, the stepping thread keeps the first allowed CPU and the workers the
others; the event-loop thread (which runs between steps, see :mod:`llmds.engine.async_engine`) and
threads started later stay free.  On 2 cores this raised 4 streaming clients from ~140 to ~180
tok/s and 32 from ~490 to ~570 (``python -m benchmarks.bench_server``), level with the engine alone.

Workers are the threads of this process that Python did not start (``threading.enumerate()``
does not list them): OpenMP's, numba's, the tokenizer's.  Linux only (``os.sched_setaffinity``
takes a thread id there); elsewhere, or with one allowed CPU, nothing is pinned.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable

__all__ = ["pin_engine_threads"]


def _thread_ids() -> list[int]:
    try:
        return sorted(int(p.name) for p in Path("/proc/self/task").iterdir())
    except OSError:
        return []


def pin_engine_threads(engine_tid: int, cpus: Iterable[int] | None = None) -> dict[int, frozenset[int]]:
    """Pin thread ``engine_tid`` to the first of ``cpus`` (default: the CPUs this process may use)
    and every thread Python did not start to the rest; returns ``{thread id: CPUs}`` as applied
    (empty when nothing was pinned)."""
    if not hasattr(os, "sched_setaffinity"):
        return {}
    allowed = sorted(os.sched_getaffinity(0) if cpus is None else set(cpus))
    if len(allowed) < 2:
        return {}
    python_threads = {t.native_id for t in threading.enumerate()}
    plan = {engine_tid: frozenset(allowed[:1])}
    plan.update((tid, frozenset(allowed[1:])) for tid in _thread_ids() if tid not in python_threads)
    applied = {}
    for tid, mask in plan.items():
        try:
            os.sched_setaffinity(tid, mask)
        except OSError:  # the thread ended meanwhile
            continue
        applied[tid] = mask
    return applied
