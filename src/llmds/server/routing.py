"""Prefix-aware replica routing: which engine replica should serve a prompt.

A request is keyed by the chain keys of its prompt's full blocks
(:func:`~llmds.memory.prefix_cache.prefix_keys`, the block manager's own key: block ``i``'s
key names the whole prefix ``[0, (i + 1) * block_size)``), so the same prefix has the same key
on every replica and in the router.  :class:`PrefixTable` remembers which replica holds which
keys, from two sources:

* what each replica **advertises** (its prefix index's keys: hot pinned prefixes and every
  cached chain, ``BlockManager.cached_keys``), replaced whole at each report;
* what the router itself **routed** there since that report (a request's keys count as cached
  on its replica at once, before the replica's next report shows them).

:func:`choose_replica` is the policy, a pure function of the matched leading blocks and the
loads: the replica with the longest match (ties: the lower load, then the lower index), unless
nothing matches or its load exceeds the least loaded replica's by more than ``max_queue_gap``;
then the less loaded of two random replicas (power of two choices).  A replica's load
(:class:`LoadBook`) is its requests in flight plus ``waiting_weight`` per request that has no
first token yet: a queue of prompts to prefill delays a new request's first token far more than
the same number of decoding requests (in ``bench_routing`` this weighting cut the TTFT p99 at 64
replicas from ~0.95 s to ~0.7 s at the same hit rate).  No Ray here: the Ray Serve
adapter (:mod:`llmds.server.ray_router`) and the simulation (``benchmarks/bench_routing.py``)
both call these.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Sequence

from llmds._checks import check_float, check_int
from llmds.memory.prefix_cache import prefix_keys

__all__ = ["RouterConfig", "PrefixTable", "LoadBook", "choose_replica", "prompt_keys"]


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """``block_size``: tokens per KV block (the engine's).  ``max_queue_gap``: requests in
    flight by which the best-matching replica may exceed the least loaded one before the
    router falls back to power of two choices.  ``max_routed``: keys remembered per replica
    from routing decisions between two reports (oldest dropped first).  ``stats_period_s``:
    seconds between two reports of a replica (Ray Serve's ``request_routing_stats_period_s``).
    ``waiting_weight``: a request still waiting for its first token counts this much more than
    one that decodes (see :class:`LoadBook`)."""

    block_size: int = 16
    max_queue_gap: int = 8
    max_routed: int = 65_536
    stats_period_s: float = 1.0
    waiting_weight: float = 2.0

    def __post_init__(self) -> None:
        check_int("block_size", self.block_size, 1)
        check_int("max_queue_gap", self.max_queue_gap, 0)
        check_int("max_routed", self.max_routed, 1)
        check_float("stats_period_s", self.stats_period_s, 0.0, low_open=True)
        check_float("waiting_weight", self.waiting_weight, 0.0)


def prompt_keys(token_ids: Sequence[int], block_size: int) -> list[int]:
    """The routing key of a prompt: the chain keys of its full blocks, leaving its last token
    out (the engine never caches the block holding it, see ``BlockManager.match_prefix``)."""
    return prefix_keys(token_ids, block_size, (len(token_ids) - 1) // block_size)


def choose_replica(matches: Sequence[int], loads: Sequence[float], max_queue_gap: float,
                   rng: random.Random) -> tuple[int, str]:
    """``(index, reason)``: the replica for one request (see the module docstring).

    ``matches[i]``: leading blocks of the prompt replica ``i`` holds; ``loads[i]``: its
    requests in flight.  ``reason`` is ``"prefix"`` or ``"balance"`` (power of two choices:
    nothing matched, or the best match is ``max_queue_gap`` beyond the least loaded).
    """
    n = len(loads)
    if n == 0 or len(matches) != n:
        raise ValueError(f"need one match and one load per replica (got {len(matches)} and {n})")
    best = min(range(n), key=lambda i: (-matches[i], loads[i], i))
    if matches[best] > 0 and loads[best] - min(loads) <= max_queue_gap:
        return best, "prefix"
    if n == 1:
        return 0, "balance"
    a = rng.randrange(n)
    b = rng.randrange(n - 1)
    b += b >= a
    return (a if loads[a] <= loads[b] else b), "balance"


class PrefixTable:
    """Which replica holds which prefix keys (advertised + routed; see the module docstring).

    ``holders``: ``{key: {replica, ...}}``, the union of both sources, so a match walks only the
    replicas that still hold the prompt's leading blocks: O(blocks x holders), not O(replicas).
    A routed key stays for ``routed_ttl`` seconds whatever the reports say (a report may have
    been taken before the request reached the replica, or while it waited in its queue), then
    only the replica's own reports keep it.  ``clock`` is injectable (the simulation's time).
    """

    def __init__(self, max_routed: int = 65_536, routed_ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_routed = check_int("max_routed", max_routed, 1)
        self.routed_ttl = check_float("routed_ttl", routed_ttl, 0.0)
        self.clock = clock
        self.holders: dict[int, set[Hashable]] = {}
        self._advertised: dict[Hashable, frozenset[int]] = {}
        self._routed: dict[Hashable, OrderedDict[int, float]] = {}  # {replica: {key: when routed}}, oldest first

    @property
    def replicas(self) -> list[Hashable]:
        return list(self._advertised.keys() | self._routed.keys())

    def advertise(self, replica: Hashable, keys: Iterable[int]) -> None:
        """Replace what ``replica`` reported holding; routed keys older than ``routed_ttl`` are
        forgotten (the report is newer than them: a key still cached there is in it)."""
        new = frozenset(keys)
        old = self._advertised.get(replica, frozenset())
        self._advertised[replica] = new
        routed = self._routed.get(replica)
        gone = old - new
        if routed:
            cutoff = self.clock() - self.routed_ttl
            while routed:
                k, t = next(iter(routed.items()))
                if t > cutoff:
                    break
                del routed[k]
                gone = gone | {k}
        for k in gone - new:
            self._drop(k, replica)
        for k in new - old:
            self.holders.setdefault(k, set()).add(replica)

    def routed(self, replica: Hashable, keys: Sequence[int]) -> None:
        """``replica`` was sent a prompt with ``keys``: count them as held there from now on."""
        mine = self._routed.setdefault(replica, OrderedDict())
        now = self.clock()
        for k in keys:
            if k in mine:
                mine.move_to_end(k)
            else:
                self.holders.setdefault(k, set()).add(replica)
            mine[k] = now
        while len(mine) > self.max_routed:
            k, _ = mine.popitem(last=False)
            self._drop(k, replica)

    def remove(self, replica: Hashable) -> None:
        """Forget a replica that left (died or scaled down)."""
        for k in self._advertised.pop(replica, frozenset()) | self._routed.pop(replica, {}).keys():
            self._drop(k, replica)

    def matches(self, keys: Sequence[int], replicas: Sequence[Hashable]) -> list[int]:
        """Leading blocks of ``keys`` that each of ``replicas`` holds."""
        held = {r: 0 for r in replicas}
        alive = set(held)
        for i, k in enumerate(keys):
            alive &= self.holders.get(k, set())
            if not alive:
                break
            for r in alive:
                held[r] = i + 1
        return [held[r] for r in replicas]

    def _drop(self, key: int, replica: Hashable) -> None:
        if key in self._advertised.get(replica, ()) or key in self._routed.get(replica, ()):
            return  # still held through the other source
        s = self.holders.get(key)
        if s is not None:
            s.discard(replica)
            if not s:
                del self.holders[key]


class LoadBook:
    """Requests in flight and requests waiting for their first token, per replica, as the
    router's own process sees them (it sends every request and reads every stream)."""

    __slots__ = ("in_flight", "waiting", "waiting_weight")

    def __init__(self, waiting_weight: float = 2.0) -> None:
        self.waiting_weight = check_float("waiting_weight", waiting_weight, 0.0)
        self.in_flight: dict[Hashable, int] = {}
        self.waiting: dict[Hashable, int] = {}

    def sent(self, replica: Hashable) -> None:
        """A request was sent to ``replica`` (no output yet): counted from the routing decision,
        so a burst of requests routed before any is accepted sees the loads it makes."""
        self.in_flight[replica] = self.in_flight.get(replica, 0) + 1
        self.waiting[replica] = self.waiting.get(replica, 0) + 1

    def first_token(self, replica: Hashable) -> None:
        if replica in self.waiting:  # else forgotten (the replica left) while the request ran
            self.waiting[replica] -= 1

    def finished(self, replica: Hashable, had_first_token: bool) -> None:
        if replica in self.in_flight:
            self.in_flight[replica] -= 1
            if not had_first_token:
                self.waiting[replica] -= 1

    def load(self, replica: Hashable) -> float:
        return self.in_flight.get(replica, 0) + self.waiting_weight * self.waiting.get(replica, 0)

    def forget(self, replica: Hashable) -> None:
        self.in_flight.pop(replica, None)
        self.waiting.pop(replica, None)
