"""The prefix-aware policy of :mod:`llmds.server.routing` as a Ray Serve ``RequestRouter``.

Ray Serve builds one router per deployment handle, in the process that holds the handle (the
ingress) and calls :meth:`LlmdsRequestRouter.choose_replicas` for each request.  A request is
keyed by its ``prefix_keys`` keyword argument (the ingress computes them with
:func:`~llmds.server.routing.prompt_keys`); each replica's ``record_routing_stats`` report
(every ``request_routing_stats_period_s``) carries its prefix index's keys, which replace what
the :class:`~llmds.server.routing.PrefixTable` knew of it.  Loads come from
``replica_state.BOOK``, which the ingress keeps as it opens, reads and closes streams (same
process, so exact).  Calls without ``prefix_keys`` (``describe``) go to the less loaded of two
random replicas; a call naming a ``replica`` keyword (``engine_state``) goes to that one.
Each router registers in ``replica_state.ROUTERS``, so the ingress can read
every replica's last report for ``/health`` and ``/metrics``.

That shared state lives in :mod:`llmds.server.replica_state`, not here: Ray Serve ships a
router class *by value* (its whole module pickled), so globals of this module would be copies.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from llmds.server import replica_state as shared  # by reference: one BOOK and ROUTERS per process
from llmds.server.routing import PrefixTable, RouterConfig, choose_replica

__all__ = ["LlmdsRequestRouter"]

log = logging.getLogger(__name__)


class LlmdsRequestRouter(RequestRouter):
    """Longest advertised prefix match, power of two choices past the queue gap."""

    def initialize_state(self, block_size: int = 16, max_queue_gap: int = 8, waiting_weight: float = 2.0,
                         max_routed: int = 65_536, seed: int | None = None) -> None:
        self.config = RouterConfig(block_size, max_queue_gap, max_routed, waiting_weight=waiting_weight)
        shared.BOOK.waiting_weight = waiting_weight
        self.table = PrefixTable(max_routed)
        self.rng = random.Random(seed)
        self._report_times: dict[str, float] = {}
        self.decisions = {"prefix": 0, "balance": 0}
        if self not in shared.ROUTERS:
            shared.ROUTERS.append(self)

    def _refresh(self, replicas: list[RunningReplica]) -> None:
        for r in replicas:
            stats = r.routing_stats or {}
            t = stats.get("time")
            name = r.replica_id.unique_id
            if t is not None and self._report_times.get(name) != t:
                self._report_times[name] = t
                self.table.advertise(name, stats.get("keys", ()))

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        self._refresh(candidate_replicas)
        names = [r.replica_id.unique_id for r in candidate_replicas]
        asked = pending_request.kwargs.get("replica") if pending_request is not None else None
        if asked in names:  # a call for one replica (the web page's engine view)
            return [[candidate_replicas[names.index(asked)]]]
        loads = [shared.BOOK.load(n) for n in names]
        keys = pending_request.kwargs.get("prefix_keys") if pending_request is not None else None
        matches = self.table.matches(keys, names) if keys else [0] * len(names)
        i, why = choose_replica(matches, loads, self.config.max_queue_gap, self.rng)
        self.decisions[why] += 1
        if keys:
            self.table.routed(names[i], keys)
        token = pending_request.kwargs.get("route_token") if pending_request is not None else None
        if token is not None:  # counted now: a burst routed before any acceptance sees its own load
            before = shared.ROUTED.get(token)
            if before is not None:  # routed again (the first pick refused or died)
                shared.BOOK.finished(before, False)
            shared.BOOK.sent(names[i])
            shared.ROUTED[token] = names[i]
        rest = sorted((j for j in range(len(names)) if j != i), key=lambda j: loads[j])
        ranks = [[candidate_replicas[i]]]
        if rest:  # tried only if the chosen replica refuses (at max_ongoing_requests)
            ranks.append([candidate_replicas[j] for j in rest])
        return ranks

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._forget(replica_id.unique_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        old = {r.unique_id for r in self._replica_id_set}
        super().update_replicas(replicas)
        for name in old - {r.unique_id for r in self._replica_id_set}:
            self._forget(name)

    def _forget(self, name: str) -> None:
        self.table.remove(name)
        self._report_times.pop(name, None)
        shared.BOOK.forget(name)

    def reports(self) -> dict[str, dict[str, Any]]:
        """The last report of every replica this router can route to (``{}`` before the first)."""
        return {r.replica_id.unique_id: r.routing_stats for r in list(self._replicas.values()) if r.routing_stats}

