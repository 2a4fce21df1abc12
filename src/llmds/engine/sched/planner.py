"""One step policy for continuous batching, shared by cb_lab and the engine.

The planner is pure policy: it sees request lengths, never tensors.  Each
``schedule()`` returns a :class:`StepPlan` (which requests decode one token,
which prefill how many prompt tokens, which were preempted); the caller runs
its model on the plan and hands the sampled tokens back to ``update()``.
``schedule()`` and ``update()`` alternate strictly; a caller whose model
fails on a plan passes it to ``cancel()`` instead of ``update()``.

The step policy, the queue orders and the costs: :mod:`llmds.engine.sched.step_plan`.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Sequence

from llmds.engine.sched.decode_batch import DecodeBatch
from llmds.engine.sched.fork import check_forks, fork_sequences
from llmds.engine.kv.kv_manager import KVManager, NullKV
from llmds.engine.request import RequestState, RequestStatus
from llmds.engine.sched.request_queue import RequestQueue, urgency_key
from llmds.engine.sched.step_plan import PlannerConfig, StepPlan
from llmds.errors import CapacityError, NotFoundError, StateError, ValidationError

__all__ = ["KVManager", "PlannerConfig", "StepPlan", "Planner"]

_RUNNING = RequestStatus.RUNNING
_WAITING = RequestStatus.WAITING
_PREEMPTED = RequestStatus.PREEMPTED
_STOPPED = RequestStatus.FINISHED_STOPPED
_LENGTH = RequestStatus.FINISHED_LENGTH
_ABORTED = RequestStatus.FINISHED_ABORTED


class Planner:
    """Continuous-batching step planner over a :class:`KVManager`.

    Parameters
    ----------
    config : PlannerConfig, optional
    kv : KVManager, optional
        Defaults to an unlimited ``NullKV``.

    Requests past their prefill live in a :class:`DecodeBatch` (one loop per step advances
    them); waiting ones in a :class:`~llmds.engine.sched.request_queue.RequestQueue`.
    """

    __slots__ = ("config", "kv", "_waiting", "_requests", "_batch", "_prefilling",
                 "_admits", "_admit_base", "_step", "_in_flight", "_deferred_aborts", "_rank")

    def __init__(self, config: PlannerConfig | None = None, kv: KVManager | None = None) -> None:
        if config is None:
            config = PlannerConfig()
        if not isinstance(config, PlannerConfig):
            raise ValidationError("config must be a PlannerConfig")
        if kv is None:
            kv = NullKV()
        if not isinstance(kv, KVManager):
            raise ValidationError("kv must implement the KVManager protocol")
        self.config = config
        self.kv = kv
        self._waiting = RequestQueue(config.policy)
        self._requests: dict[Hashable, RequestState] = {}  # waiting + running
        self._batch = DecodeBatch(kv.block_size)  # running, prefill done
        self._prefilling: list[RequestState] = []  # running, prefill in progress (admission order)
        self._admits = 0
        self._admit_base = 0  # _admits before the in-flight plan's admissions
        self._step = 0
        self._in_flight: StepPlan | None = None
        self._deferred_aborts: list[Hashable] = []
        self._rank = urgency_key(config.policy)

    # ----------------------------------------------------------------- queries
    @property
    def num_running(self) -> int:
        return len(self._batch) + len(self._prefilling)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def running(self) -> list[RequestState]:
        """Running requests: decoding ones, then those still prefilling (a new list)."""
        return self._batch.members() + self._prefilling

    def waiting(self) -> list[RequestState]:
        """Waiting requests in queue order (a sorted copy, O(n log n): for display)."""
        reqs = [self._requests[rid] for rid in self._requests if rid in self._waiting]
        return sorted(reqs, key=lambda s: s.queue_order)

    def get(self, request_id: Hashable) -> RequestState:
        """The live (waiting or running) request; ``NotFoundError`` otherwise."""
        try:
            return self._requests[request_id]
        except KeyError:
            raise NotFoundError(f"no live request with id {request_id!r}") from None

    def __contains__(self, request_id: Hashable) -> bool:
        return request_id in self._requests

    # ---------------------------------------------------------------- requests
    def add(self, seq: RequestState) -> bool:
        """Queue a new request.

        Returns True when queued, False when it finished at once (``max_new_tokens == 0``: status
        FINISHED_LENGTH). Raises ``ValidationError`` for a duplicate id or a request that is not new, and
        ``CapacityError`` (from the KV manager) for a request that could never fit the KV pool; nothing
        changes on error.
        """
        if not isinstance(seq, RequestState):
            raise ValidationError(f"expected a RequestState, got {type(seq).__name__}")
        if seq.request_id in self._requests:
            raise ValidationError(f"request id {seq.request_id!r} is already live; ids must be unique")
        if seq.status is not _WAITING or seq.num_computed_tokens or seq.block_table:
            raise ValidationError(f"request {seq.request_id!r} is not new (status {seq.status.name})")
        if seq.max_new_tokens == 0:
            seq.status = _LENGTH
            return False
        self.kv.check_fits(seq)
        self._waiting.add(seq)
        self._requests[seq.request_id] = seq
        return True

    def abort(self, request_id: Hashable) -> RequestState | None:
        """Finish a live request as FINISHED_ABORTED and free its KV.

        A no-op returning None for an unknown or already finished id (a late abort races with completion).
        Called while a plan is in flight, the abort of a running request takes effect at the end of
        ``update``.
        """
        seq = self._requests.get(request_id)
        if seq is None:
            return None
        if seq.status is _RUNNING and self._in_flight is not None:
            self._deferred_aborts.append(request_id)
            return seq
        self._finish_now(seq, _ABORTED)
        return seq

    # ---------------------------------------------------------------- the step
    def schedule(self) -> StepPlan:
        """Plan one step (see the module docstring for the policy)."""
        if self._in_flight is not None:
            raise StateError("schedule() called twice: pass the previous plan to update() first")
        cfg = self.config
        preempted: list[RequestState] = []
        self._admit_base = self._admits
        decode: list[RequestState] = []
        prefill: list[tuple[RequestState, int]] = []
        budget = cfg.max_num_batched_tokens
        if cfg.prefill_first and len(self._batch) and (self._waiting and self.num_running < cfg.max_num_seqs or any(
                s.num_computed_tokens < s.num_prompt_tokens for s in self._prefilling)):
            # a prefill-only step (outputs appended by extend() ride with the decodes instead); admissions
            # keep one free block per running request for its next one
            budget = self._plan_prefills(prefill, decode, budget, preempted, reserve=True)
        if not prefill:
            decode = self._plan_decodes(preempted)
            budget = self._plan_prefills(prefill, decode, budget - len(decode), preempted, reserve=False)
        plan = StepPlan(self._step, decode, prefill, preempted, cfg.max_num_batched_tokens - budget)
        self._step += 1
        self._in_flight = plan
        return plan

    def _plan_decodes(self, preempted: list[RequestState]) -> list[RequestState]:
        """1. Every decoding request, with a block for those crossing a block boundary."""
        kv = self.kv
        need = self._batch.crossing()
        if need and not kv.append_decode_slots(need):
            for s in sorted(need, key=self._rank):
                if s.status is not _RUNNING:
                    continue  # preempted as a victim above
                while not kv.append_slots(s, 1):
                    if self._preempt_one(preempted) is s:
                        break
        return self._batch.members()

    def _plan_prefills(self, prefill: list, decode: list, budget: int, preempted: list[RequestState],
                       reserve: bool) -> int:
        """2. running prefills and 3. admissions into ``prefill`` within ``budget``; the budget left.

        Admissions stop in a step that had to preempt and, with ``reserve``, where fewer free
        blocks than running requests (the admitted one included) would remain: each can then
        take its next block without preempting another.  A victim preempted from ``decode`` is
        unscheduled.
        """
        cfg, kv = self.config, self.kv
        chunk = cfg.prefill_chunk_size
        if self._prefilling:
            for s in sorted(self._prefilling, key=self._rank):  # a copy: preemption edits the list
                if budget <= 0:
                    break
                if s.status is not _RUNNING:
                    continue
                n = min(s.num_tokens - s.num_computed_tokens, chunk, budget)
                while not kv.append_slots(s, n):
                    victim = self._preempt_one(preempted)
                    if victim is s:
                        break
                    if victim in decode:
                        decode.remove(victim)  # a decode scheduled above: unschedule it
                        budget += 1
                else:
                    prefill.append((s, n))
                    budget -= n
        if preempted:
            return budget
        waiting, requests = self._waiting, self._requests
        room = cfg.max_num_seqs - len(self._batch) - sum(s.n for s in self._prefilling)  # n seats each
        while budget > 0 and waiting and (s := requests[waiting.peek()]).n <= room:
            if room == cfg.max_num_seqs:  # nothing runs, so nothing changed in this call yet
                self._check_still_fits(s)
            hit = kv.match_prefix(s)
            n = min(s.num_tokens - hit, chunk, budget)
            if not kv.allocate(s, n):
                break
            if reserve and kv.num_free_blocks < self.num_running + 1:
                kv.rollback(s, release=True)
                s.num_cached_tokens = 0
                break
            waiting.pop()
            s.status = _RUNNING
            s.admit_order = self._admits
            self._admits += 1
            self._prefilling.append(s)
            prefill.append((s, n))
            budget -= n
            room -= s.n
        return budget

    def update(self, plan: StepPlan, token_ids=None, finished_ids: Iterable[Hashable] = (),
               forks: dict[Hashable, list[tuple[RequestState, int]]] | None = None) -> list[RequestState]:
        """Apply a step's results; returns the requests that finished (their KV freed).

        ``token_ids``: one sampled id per request of ``plan.sampling`` (decodes, then completing prefills) as a
        list, array or tensor; None for lengths-only models (cb_lab's TinyLLM): outputs are counted, not stored,
        and stop ids not checked. ``finished_ids``: requests the caller stops after this step (e.g. a stop
        string), finished as FINISHED_STOPPED. Requests reaching ``max_new_tokens`` finish as FINISHED_LENGTH,
        on a stop id as FINISHED_STOPPED. ``forks``: ``{request id: [(new request, first token id), ...]}``, the
        other sequences of requests with ``n > 1`` whose prompt completes now (:mod:`~llmds.engine.sched.fork`;
        block copies go to ``plan.copies``). On a bad argument nothing changes.
        """
        if plan is not self._in_flight:
            raise StateError("update() expects the plan returned by the last schedule()")
        decode, prefill = plan.decode, plan.prefill
        nd = len(decode)
        if token_ids is not None:
            toks = plan.check_token_ids(token_ids)
        forks = forks or {}
        new = check_forks(plan, forks, self._requests) if forks else ()
        stops = list(finished_ids) if finished_ids else ()
        for rid in stops:
            if rid not in self._requests and rid not in new:
                raise NotFoundError(f"finished_ids: no live request with id {rid!r}")
        assert nd in (0, len(self._batch)), "the decode batch changed between schedule() and update()"

        # decodes: one clock tick advances every batch member by one token
        decoded = None if token_ids is None or not nd else toks if len(toks) == nd else toks[:nd]
        finished: list[RequestState] = self._batch.advance(decoded) if nd else []
        fin = finished.append
        # prefills: a completed prompt samples its first (or next) token
        if prefill:
            k = nd
            started, forked = [], []
            for s, n in prefill:
                c = s.num_computed_tokens + n
                s.num_computed_tokens = c
                if c != s.num_prompt_tokens + s.num_output_tokens:
                    continue
                s.num_output_tokens += 1
                if s.request_id in forks:
                    forked += fork_sequences(s, forks[s.request_id], self.kv, plan.copies)
                if token_ids is not None:
                    t = toks[k]
                    k += 1
                    s.output_token_ids.append(t)
                    if t in s.stop_token_ids:
                        s.status = _STOPPED
                        fin(s)
                        continue
                if s.num_output_tokens >= s.max_new_tokens:
                    s.status = _LENGTH
                    fin(s)
                else:
                    started.append(s)
            for s in forked:  # finished ones are freed below; those without a block wait
                self._requests[s.request_id] = s
                if s.is_finished:
                    fin(s)
                elif s.status is _PREEMPTED:
                    self._waiting.requeue(s)
                else:
                    started.append(s)
            if started or finished:
                gone = {id(s) for s in started}
                self._prefilling = [s for s in self._prefilling if s.status is _RUNNING and id(s) not in gone]
                for s in started:
                    self._batch.enter(s)
        for rid in stops:
            s = self._requests[rid]
            if not s.is_finished:
                self._finish_now(s, _STOPPED)
                fin(s)
        self._in_flight = None
        if self._deferred_aborts:
            finished += self._apply_deferred_aborts()
        if finished:
            free, requests = self.kv.free, self._requests
            for s in finished:
                if s.request_id in requests:  # _finish_now already released it
                    free(s)
                    del requests[s.request_id]
        return finished

    def cancel(self, plan: StepPlan) -> list[RequestState]:
        """Roll back a plan that will not be run (its model or a plugin failed); call it instead of ``update``.
        The one rollback path of a failed step (KV blocks are returned only here, through ``kv.rollback``;
        cb_lab cuts its caches back after it). No token advances; the plan's admissions go back to the queue
        at their position and free their blocks; running requests give back the blocks for the plan's new
        tokens; prefix-index entries of blocks the plan would have computed are removed, so no request is
        served their never written KV. Preemptions made by ``schedule()`` stand, and the next ``schedule()``
        reuses ``plan.step_id``.

        Returns the requests finished by aborts that arrived while the plan was in flight (FINISHED_ABORTED),
        as ``update`` would have.
        """
        if plan is not self._in_flight:
            raise StateError("cancel() expects the plan returned by the last schedule(), not yet updated")
        kv, base = self.kv, self._admit_base
        admitted = []
        for s in plan.decode:
            kv.rollback(s)
        for s, _ in plan.prefill:
            if s.admit_order >= base:
                admitted.append(s)
                kv.rollback(s, release=True)
            else:
                kv.rollback(s)
        if admitted:
            self._prefilling = [s for s in self._prefilling if s.admit_order < base]
            for s in admitted:
                s.num_computed_tokens = 0
                s.num_cached_tokens = 0
                s.status = _PREEMPTED if s.num_preemptions else _WAITING
                s.admit_order = -1
                self._waiting.requeue(s)
            self._admits = base
        self._step = plan.step_id
        self._in_flight = None
        return self._apply_deferred_aborts()

    def extend(self, request_id: Hashable, token_ids: Sequence[int]) -> None:
        """Append known output tokens (a grammar's forced run) to a decoding request: one chunk, then it samples."""
        s, k = self.get(request_id), len(token_ids)
        if self._in_flight is not None or request_id not in self._batch or not 0 < k < s.max_new_tokens - s.num_output_tokens:
            raise StateError(f"extend({request_id!r}, {k} tokens): a decoding request, between steps, keeping a token")
        self._batch.leave(s)
        s.output_token_ids.extend(token_ids)
        s.num_output_tokens += k
        self._prefilling.append(s)

    def preempt(self, request_id: Hashable) -> RequestState:
        """Preempt a running request now (free its KV, requeue it to be recomputed), e.g.
        for a caller that lost its KV.  ``NotFoundError`` for an id that is not live,
        ``StateError`` for one not running or while a plan is in flight."""
        if self._in_flight is not None:
            raise StateError("preempt() while a plan is in flight: update() or cancel() it first")
        seq = self.get(request_id)
        if seq.status is not _RUNNING:
            raise StateError(f"request {request_id!r} is not running (status {seq.status.name})")
        self._preempt(seq, [])
        return seq

    def pin_prefix(self, token_ids: Iterable[int]) -> list[int]:
        """Pin the cached blocks of a prefix (``BlockManager.pin_prefix``) unless a live request could then never
        finish (``CapacityError``, nothing pinned): pins never strand a live request (for pins made on the KV
        manager directly, see ``_check_still_fits``).

        Only between steps (``StateError`` while a plan is in flight: its blocks may be indexed before their
        KV is computed), so pinned blocks always hold KV.
        """
        pin = getattr(self.kv, "pin_prefix", None)
        if pin is None:
            raise StateError(f"{type(self.kv).__name__} has no prefix cache to pin")
        if self._in_flight is not None:
            raise StateError("pin_prefix() while a plan is in flight: pin before schedule() or after update()")
        return pin(list(token_ids), keep_fitting=list(self._requests.values()))

    def unpin(self, block_ids: Iterable[int]) -> None:
        """Drop the pins returned by :meth:`pin_prefix`."""
        unpin = getattr(self.kv, "unpin", None)
        if unpin is None:
            raise StateError(f"{type(self.kv).__name__} has no prefix cache to unpin")
        unpin(list(block_ids))

    # ---------------------------------------------------------------- internals
    def _apply_deferred_aborts(self) -> list[RequestState]:
        """Finish the requests aborted while the plan was in flight (FINISHED_ABORTED)."""
        out = []
        for rid in self._deferred_aborts:
            s = self._requests.get(rid)
            if s is not None and not s.is_finished:
                self._finish_now(s, _ABORTED)
                out.append(s)
        self._deferred_aborts.clear()
        return out

    def _check_still_fits(self, seq: RequestState) -> None:
        """The queue head, with nothing running: if it could never fit beside the current
        pins (made after it was added), say so instead of preempting it forever."""
        try:
            self.kv.check_fits(seq)
        except CapacityError as exc:
            raise CapacityError(
                f"cannot schedule: {exc} (it was queued before the blocks were pinned: abort it or unpin)"
            ) from None

    def _preempt_one(self, preempted: list[RequestState]) -> RequestState:
        """Preempt the least urgent running request (the victim) and requeue it."""
        return self._preempt(max(self._batch.members() + self._prefilling, key=self._rank), preempted)

    def _preempt(self, victim: RequestState, preempted: list[RequestState]) -> RequestState:
        if victim.request_id in self._batch:
            self._batch.leave(victim)
        else:
            self._prefilling.remove(victim)
        self.kv.free(victim)
        victim.num_computed_tokens = 0
        victim.num_cached_tokens = 0
        victim.status = _PREEMPTED
        victim.num_preemptions += 1
        self._waiting.requeue(victim)
        preempted.append(victim)
        return victim

    def _finish_now(self, seq: RequestState, status: RequestStatus) -> None:
        rid = seq.request_id
        if rid in self._waiting:
            self._waiting.remove(rid)
        elif rid in self._batch:
            self._batch.leave(seq)
        elif seq in self._prefilling:
            self._prefilling.remove(seq)
        self.kv.free(seq)
        seq.status = status
        del self._requests[rid]

