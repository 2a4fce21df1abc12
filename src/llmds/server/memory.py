"""Giving freed memory back to the system: glibc's allocator, tuned at start and trimmed when idle.

What grows without this (``benchmarks/bench_bursts.py``, docs/serving.md): not a leak of
Python objects (every KV block and request is freed), but memory glibc's ``malloc`` keeps after
``free``: torch's activation and logits buffers of up to tens of MB per step, freed between
steps on the engine thread and the embedder's, land in heap arenas once glibc's *dynamic* mmap
threshold has risen past their size (it rises each time a large mmapped chunk is freed), and a
heap is only returned from its top.  So the server

* fixes the mmap threshold (``M_MMAP_THRESHOLD``, which also turns the dynamic rise off): buffers
  over it are mapped and unmapped on free; and caps the number of arenas (``M_ARENA_MAX``) so
  threads do not each keep one (:func:`tune_allocator`, called by ``llmds serve`` first thing);
* calls ``malloc_trim(0)`` once it has been idle (no request in flight) for a moment
  (:class:`IdleTrimmer`), returning the free pages inside the heaps.

Environment variables glibc reads (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``, ...) win:
when one is set, :func:`tune_allocator` leaves that setting alone.  Elsewhere than glibc (macOS,
musl) both are no-ops.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable

__all__ = ["tune_allocator", "trim", "IdleTrimmer"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
ARENA_MAX = 2
MMAP_THRESHOLD = 1 << 20  # bytes: below it, the per-token Python and numpy objects; above, activations
_ENV = {M_ARENA_MAX: "MALLOC_ARENA_MAX", M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_"}


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 (musl has neither)
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator(arena_max: int = ARENA_MAX, mmap_threshold: int = MMAP_THRESHOLD) -> dict[str, int]:
    """Set glibc's arena cap and a fixed mmap threshold unless the environment sets them; returns
    what was set (``{}`` off glibc).  Call before threads start allocating."""
    libc = _glibc()
    if libc is None:
        return {}
    done = {}
    for param, value in ((M_ARENA_MAX, arena_max), (M_MMAP_THRESHOLD, mmap_threshold)):
        if _ENV[param] not in os.environ and libc.mallopt(param, value) == 1:
            done[_ENV[param]] = value
    return done


def trim() -> bool:
    """``malloc_trim(0)``: return the free memory of every arena to the system; True if any was."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


class IdleTrimmer:
    """Trims once the server has stayed idle for ``delay`` seconds after its last request.

    ``busy()`` when a request enters, ``idle(schedule)`` when the last one leaves: ``schedule(delay,
    callback)`` (``loop.call_later`` on the event loop) arranges the check; the check trims (via
    ``run``, e.g. in an executor: a trim takes milliseconds) only if no request came in between,
    so a busy server is never trimmed, and each idle period is trimmed once.
    """

    def __init__(self, delay: float = 1.0, trim: Callable[[], object] = trim,
                 run: Callable[[Callable[[], object]], object] = lambda f: f()) -> None:
        self.delay, self._trim, self._run = delay, trim, run
        self._epoch = 0  # bumped by every busy(): a pending check of an older epoch does nothing
        self._trimmed = -1  # the epoch last trimmed
        self.num_trims = 0

    def busy(self) -> None:
        self._epoch += 1

    def idle(self, schedule: Callable[[float, Callable[[], None]], object]) -> None:
        epoch = self._epoch
        schedule(self.delay, lambda: self._check(epoch))

    def _check(self, epoch: int) -> None:
        if epoch == self._epoch != self._trimmed:  # still idle, not trimmed yet in this period
            self._trimmed = epoch
            self.num_trims += 1
            self._run(self._trim)
