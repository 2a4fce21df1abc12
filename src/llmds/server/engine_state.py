"""The engine as the web page draws it: a snapshot of its KV blocks, batch and counters, and a feed
of snapshots at a bounded rate (``GET /v1/engine/state``, ``GET /v1/engine/events``).

:func:`snapshot` reads one :class:`~llmds.engine.engine.LLMEngine` and is run on the engine thread
*between* two steps (``AsyncLLMEngine.call``), so it never races a step and costs the engine one
pause of O(num_blocks) numpy work plus O(live requests) Python each time it runs, never anything
per token: 0.1 ms for the default 2,912 blocks with 48 requests running (0.001 ms without the
block map and the request lists), measured on the 2-core development machine.  Each block is in
one state::

    0 free     refcount 0, no reusable content
    1 cached   refcount 0, holds a full prefix block a later request may reuse (evicted LRU)
    2 running  held by one running request
    3 shared   held by several requests (a shared prefix)
    4 pinned   a hot prefix pinned against eviction (``llmds.engine.kv.hot_prefix``)

and the block map travels as a string of those digits, one per block.

:class:`EngineFeed` takes at most one snapshot per ``interval`` (0.25 s) however many pages
watch, and only while someone asks; a cheaper counters-only snapshot every ``sample_period``
(1 s) feeds the charts' history (the last ``history_len`` samples).  A page's event stream sends
the whole state first, then, at most once per ``interval``, only what changed: the blocks whose
state changed (or the whole map when more than a quarter did), and nothing at all while the
engine is idle but for the history sample each second.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from contextlib import suppress
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np

__all__ = ["BLOCK_STATES", "EngineFeed", "block_states", "snapshot"]

BLOCK_STATES = ("free", "cached", "running", "shared", "pinned")
FREE, CACHED, RUNNING, SHARED, PINNED = range(5)
MAX_LISTED = 64  # running / waiting requests listed in one snapshot (the counts are exact)
_DIGITS = np.frombuffer(b"01234", np.uint8)


def block_states(block_manager) -> np.ndarray:
    """uint8 ``[num_blocks]``: each block's state (see the module docstring)."""
    alloc = block_manager.allocator
    ref = alloc.refcounts()
    out = np.zeros(ref.shape[0], np.uint8)
    out[alloc.cached_mask() & (ref == 0)] = CACHED
    out[ref == 1] = RUNNING
    out[ref > 1] = SHARED
    pc = block_manager.prefix_cache
    if pc is not None and pc.num_pinned:
        out[pc.pinned_pages()] = PINNED
    return out


def _running(s) -> dict[str, Any]:
    return {"id": str(s.request_id), "prompt_tokens": s.num_prompt_tokens, "cached_tokens": s.num_cached_tokens,
            "computed_tokens": s.num_computed_tokens, "output_tokens": s.num_output_tokens,
            "max_tokens": s.max_new_tokens, "blocks": len(s.block_table), "priority": s.priority,
            "preemptions": s.num_preemptions,
            "phase": "decode" if s.num_computed_tokens >= s.num_prompt_tokens else "prefill"}


def _waiting(s) -> dict[str, Any]:
    return {"id": str(s.request_id), "prompt_tokens": s.num_prompt_tokens, "output_tokens": s.num_output_tokens,
            "max_tokens": s.max_new_tokens, "priority": s.priority, "preemptions": s.num_preemptions}


def snapshot(engine, detail: bool = True) -> dict[str, Any]:
    """The engine's state now (call between steps).  ``detail=False``: counters and gauges only
    (no block map, no request lists), for the charts' history."""
    m, bm, planner = engine.metrics, engine.block_manager, engine.planner
    out: dict[str, Any] = {
        "time": time.time(),
        "num_blocks": engine.num_blocks, "block_size": engine.config.block_size,
        "kv_usage": bm.usage(), "num_running": planner.num_running, "num_waiting": planner.num_waiting,
        "counters": {"prompt_tokens": m.prompt_tokens, "generation_tokens": m.generation_tokens,
                     "prefix_cache_queries": bm.num_query_tokens, "prefix_cache_hits": bm.num_hit_tokens,
                     "preemptions": m.num_preemptions, "steps": m.num_steps,
                     "requests_finished": dict(m.requests_finished)},
    }
    if detail:
        states = block_states(bm)
        out["blocks"] = states
        out["block_counts"] = dict(zip(BLOCK_STATES, np.bincount(states, minlength=len(BLOCK_STATES)).tolist()))
        out["running"] = [_running(s) for s in planner.running[:MAX_LISTED]]
        waiting = planner.waiting() if planner.num_waiting <= 4 * MAX_LISTED else []
        out["waiting"] = [_waiting(s) for s in waiting[:MAX_LISTED]]
    return out


def _sample(snap: dict[str, Any]) -> list:
    """One history point: ``[time, prompt_tokens, generation_tokens, kv_usage, running, waiting]``."""
    c = snap["counters"]
    return [round(snap["time"], 3), c["prompt_tokens"], c["generation_tokens"], round(snap["kv_usage"], 4),
            snap["num_running"], snap["num_waiting"]]


def _blocks_text(states: np.ndarray) -> str:
    return _DIGITS[states].tobytes().decode()


class EngineFeed:
    """Snapshots of one server's engine at a bounded rate, for any number of pages.

    ``read(detail)`` returns a snapshot (``ServerState.engine_state``); ``clock`` is monotonic
    seconds (injectable for tests).
    """

    def __init__(self, read: Callable[[bool], Awaitable[dict[str, Any]]], interval: float = 0.25,
                 sample_period: float = 1.0, history_len: int = 300, heartbeat: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.interval = interval
        self.sample_period = sample_period
        self.heartbeat = heartbeat
        self.clock = clock
        self.history: deque[list] = deque(maxlen=history_len)
        self.num_snapshots = 0  # detailed snapshots taken (what the engine paid for)
        self._latest: tuple[float, dict[str, Any]] | None = None
        self._pending: asyncio.Future | None = None
        self._sampler: asyncio.Task | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start sampling the history (on the event loop)."""
        if self._sampler is None:
            self._sampler = asyncio.ensure_future(self._sample_forever())

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    async def _sample_forever(self) -> None:
        while True:
            with suppress(Exception):  # the engine stopping, a replica gone: the next sample retries
                self.history.append(_sample(await self.read(False)))
            await asyncio.sleep(self.sample_period)

    # ------------------------------------------------------------------- reads
    async def latest(self) -> dict[str, Any]:
        """A detailed snapshot at most ``interval`` seconds old; concurrent callers share one read."""
        now = self.clock()
        if self._latest is not None and now - self._latest[0] < self.interval:
            return self._latest[1]
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._take())
        return await asyncio.shield(self._pending)  # a caller that leaves cancels no one else's read

    async def _take(self) -> dict[str, Any]:
        try:
            snap = await self.read(True)
            self.num_snapshots += 1
            self._latest = (self.clock(), snap)
            return snap
        finally:
            self._pending = None

    async def state_json(self) -> dict[str, Any]:
        """The body of ``GET /v1/engine/state``: the latest snapshot with its history."""
        return self._whole(await self.latest())

    def _whole(self, snap: dict[str, Any]) -> dict[str, Any]:
        return {**_public(snap), "block_states": BLOCK_STATES, "history": list(self.history)}

    async def events(self) -> AsyncIterator[bytes]:
        """Server-sent events for one page: ``state`` (everything) first, then ``delta`` events
        of what changed, at most one per ``interval`` (see the module docstring)."""
        snap = await self.latest()
        last_sample = self.history[-1] if self.history else None
        yield _event("state", self._whole(snap))
        last_blocks, last_rest = snap["blocks"], _rest(snap)
        quiet_since = self.clock()
        while True:
            await asyncio.sleep(self.interval)
            snap = await self.latest()
            body: dict[str, Any] = {}
            changed = np.flatnonzero(snap["blocks"] != last_blocks)
            if changed.size * 4 > snap["blocks"].size:
                body["blocks"] = _blocks_text(snap["blocks"])
            elif changed.size:
                body["block_changes"] = {"i": changed.tolist(), "s": _blocks_text(snap["blocks"][changed])}
            rest = _rest(snap)
            if rest != last_rest:
                body.update(rest)
            new = self.history[-1] if self.history else None
            if new is not None and new is not last_sample:
                body["sample"] = last_sample = new
            if body:
                body["time"] = snap["time"]
                last_blocks, last_rest = snap["blocks"], rest
                quiet_since = self.clock()
                yield _event("delta", body)
            elif self.clock() - quiet_since >= self.heartbeat:
                quiet_since = self.clock()
                yield b": keep-alive\n\n"


def _public(snap: dict[str, Any]) -> dict[str, Any]:
    out = dict(snap)
    if "blocks" in out:
        out["blocks"] = _blocks_text(out["blocks"])
    return out


def _rest(snap: dict[str, Any]) -> dict[str, Any]:
    """What a delta event repeats whole when it changed: everything but the time and the map."""
    return {k: v for k, v in snap.items() if k not in ("time", "blocks")}


def _event(kind: str, body: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()
