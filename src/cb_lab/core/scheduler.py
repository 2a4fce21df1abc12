"""cb_lab's continuous-batching scheduler: the shared planner + TinyLLM.

Which request computes how many tokens each step is decided by the one step
planner (:class:`llmds.engine.sched.planner.Planner`, also behind ``LLMEngine``):
decodes first, then prefill chunks of at most ``prefill_chunk_size`` under a
budget of ``max_tokens_per_step`` tokens.  This class only executes the plan:

1. gather every scheduled token (decode tokens and prefill chunks) into one
   ragged batch, with each request's cached K/V as context;
2. run one ``TinyLLM`` forward pass under the ragged causal mask;
3. append each request's new K/V to its cache, store sampled tokens (the
   output at a request's last computed position), and report the step.

Plugins are called at the points listed in :mod:`cb_lab.plugins.base`.

KV blocks.  With ``kv=BlockManager(...)`` the planner allocates real blocks
for every request, and each request's :class:`~cb_lab.core.kv_cache.PagedKVCache`
is bound, when the request is added, to store its rows into those blocks (in
one :class:`~llmds.engine.kv.storage.KVStorage` the scheduler sizes to the
block manager): the planner sees the blocks that hold the data, and
preempting or finishing a request frees them.  Without ``kv`` the planner only
enforces the token budget and paged caches keep their own (or a ``pool=``)
arena.

If the model or a plugin raises between planning and applying a step, the
step is cancelled and the error re-raised unchanged (with a note): the
planner rolls the step back (``Planner.cancel``, the one place that returns
the step's blocks, through ``BlockManager.rollback``), every request's KV
cache is cut back to its rows before the step and its outputs of the step are
dropped, so the next ``step()`` redoes the work.  A cache that a cache plugin
shrank during the failed step (e.g. compression) cannot be cut back exactly;
its request is preempted (cache cleared, recomputed later).  A plugin error
after the step was applied (``on_request_finished``, ``after_step``)
propagates too; the step stays applied and its finished requests are
reported by the next step.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Hashable

import torch

from cb_lab.core.request import Request
from cb_lab.core.batch_builder import pack_chunks, ragged_causal_mask
from cb_lab.exceptions import (
    ConfigurationError,
    DuplicateRequestError,
    KVMemoryError,
    RequestError,
    RequestNotFoundError,
    SchedulerError,
    ValidationError,
)
from cb_lab.core.kv_cache import PagedKVCache
from cb_lab.model.tiny_llm import TinyLLM
from cb_lab.plugins.base import AttentionRecord, PluginManager
from llmds._checks import check_bool, check_choice, check_int
from llmds.engine.kv.block_manager import BlockManager
from llmds.engine.kv.storage import KVStorage
from llmds.engine.sched.planner import KVManager, Planner, PlannerConfig
from llmds.engine.request import RequestStatus
from llmds.engine.sched.request_queue import POLICIES
from llmds.errors import CapacityError

__all__ = ["Scheduler"]


def _configuration(check, *args):
    """Run an ``llmds._checks`` check; a bad knob is cb_lab's ``ConfigurationError``."""
    try:
        return check(*args)
    except ValidationError as exc:
        raise ConfigurationError(str(exc)) from None


class Scheduler:
    """Runs requests through TinyLLM with continuous batching.

    Parameters
    ----------
    model : TinyLLM
    max_tokens_per_step : int
        Token budget of one step (decode + prefill), > 0.  Also the most
        requests running at once, so each can decode every step.
    prefill_chunk_size : int
        Prompt tokens one request may prefill per step, in
        ``[1, max_tokens_per_step]`` (``ConfigurationError`` otherwise).
    plugins : PluginManager, optional
        Hooks called during ``add_request`` and ``step``.
    clock : callable
        Seconds, for ``step_duration`` (default ``time.perf_counter``).
    policy : {"fcfs", "priority", "edf"}
        Queue order of the planner.
    kv : BlockManager, optional
        The planner's KV blocks (default: unlimited, no blocks).  With a
        ``BlockManager`` the planner preempts when blocks run out (a preempted
        request's cache is cleared and it is recomputed later) and paged caches
        store into the requests' blocks (see the module docstring).
    release_finished_kv : bool
        Release a request's cache when it finishes (default True).  With False
        the cache keeps its rows (a paged cache copies them out of the
        planner's blocks, which are freed).
    """

    def __init__(
        self,
        model: TinyLLM,
        max_tokens_per_step: int = 8,
        prefill_chunk_size: int = 4,
        *,
        plugins: PluginManager | None = None,
        clock: Callable[[], float] = time.perf_counter,
        policy: str = "fcfs",
        kv: KVManager | None = None,
        release_finished_kv: bool = True,
    ) -> None:
        if not isinstance(model, TinyLLM):
            raise ValidationError(f"model must be a TinyLLM, got {type(model).__name__}")
        budget = _configuration(check_int, "max_tokens_per_step", max_tokens_per_step, 1)
        chunk = _configuration(check_int, "prefill_chunk_size", prefill_chunk_size, 1)
        if chunk > budget:
            raise ConfigurationError(
                f"prefill_chunk_size ({chunk}) cannot exceed max_tokens_per_step ({budget}): "
                "a chunk is computed within one step's token budget"
            )
        _configuration(check_choice, "policy", policy, POLICIES)
        if plugins is not None and not isinstance(plugins, PluginManager):
            raise ValidationError(f"plugins must be a PluginManager, got {type(plugins).__name__}")
        self.model = model
        self.max_tokens_per_step = budget
        self.prefill_chunk_size = chunk
        self.plugins = plugins if plugins is not None else PluginManager()
        self.clock = clock
        self.release_finished_kv = check_bool("release_finished_kv", release_finished_kv)
        config = PlannerConfig(
            max_num_batched_tokens=budget,
            max_num_seqs=budget,
            prefill_chunk_size=chunk,
            policy=policy,
        )
        self.planner = Planner(config, kv)
        self._storage: KVStorage | None = None  # paged caches' rows, in kv's blocks (made on first use)
        self._plan = None  # the plan being run (between schedule and update / cancel)
        self.step_id = 0
        # active requests in order of arrival: unfinished ones, and those finished at add
        # (max_new_tokens=0) until the next step() removes them, as the reference does
        self._live: dict[Hashable, Request] = {}
        self._finished_since_step: list[Request] = []  # finished outside step() (max_new_tokens=0, abort)

    # ------------------------------------------------------------------ queries
    @property
    def active(self) -> list[Request]:
        """Active requests in order of arrival: waiting or running ones, and one with
        ``max_new_tokens=0`` (finished when added) until the next ``step()`` removes it."""
        return list(self._live.values())

    @property
    def kv_storage(self) -> KVStorage | None:
        """Where bound paged caches keep their rows: one layer of ``[num_blocks, block_size,
        1, dim]`` blocks of the planner's block manager (None until a paged cache is bound)."""
        return self._storage

    def get(self, req_id: Hashable) -> Request:
        try:
            return self._live[req_id]
        except (KeyError, TypeError):
            raise RequestNotFoundError(f"no active request with id {req_id!r}") from None

    # ----------------------------------------------------------------- requests
    def add_request(self, req: Request) -> None:
        """Queue a new request; one with ``max_new_tokens=0`` finishes at once (it stays in
        ``active`` until the next ``step()`` removes and reports it).

        Raises ``ValidationError`` for a non-Request, a prompt that does not
        match the model or a paged cache that cannot store into the planner's
        blocks, ``DuplicateRequestError`` for an active id, ``RequestError``
        for a request that is not new or whose cache is not empty, and
        ``KVMemoryError`` when it could never fit the planner's KV budget;
        nothing changes on error.
        """
        if not isinstance(req, Request):
            raise ValidationError(f"req must be a cb_lab Request, got {type(req).__name__}")
        m = self.model
        if req.dim != m.dim or req.prompt.dtype != m.dtype:
            raise ValidationError(
                f"request {req.req_id!r} has [*, {req.dim}] {req.prompt.dtype} "
                f"tokens; the model takes [*, {m.dim}] {m.dtype}"
            )
        if req.req_id in self._live:
            raise DuplicateRequestError(f"request id {req.req_id!r} is already active")
        if (
            req.owner is not None
            or req.num_computed_tokens
            or req.num_output_tokens
            or req.status.value != 0
        ):
            raise RequestError(f"request {req.req_id!r} is not new (create a fresh Request)")
        if len(req.kv_cache) or any(r.kv_cache is req.kv_cache for r in self._live.values()):
            raise RequestError(
                f"request {req.req_id!r}: its KV cache is not empty or belongs to another active "
                "request; give each request its own empty cache"
            )
        storage = self._storage_for(req.kv_cache)
        try:
            queued = self.planner.add(req)
        except CapacityError as exc:  # it could never fit the planner's KV budget
            raise KVMemoryError(str(exc)) from None
        self._live[req.req_id] = req
        if queued:
            req.owner = self
            if storage is not None:
                req.kv_cache.bind(storage, req, self.planner.kv.is_contiguous)
            self.plugins.request_added(self, req)
        else:  # max_new_tokens == 0: finished at once, removed by the next step
            self._finished_since_step.append(req)
            self.plugins.request_added(self, req)
            self.plugins.request_finished(self, req)

    def _storage_for(self, cache) -> KVStorage | None:
        """The storage a paged cache binds to (None: it keeps its own arena); checks it can."""
        kv = self.planner.kv
        if not isinstance(cache, PagedKVCache) or not isinstance(kv, BlockManager):
            return None
        cache.check_bindable(kv.block_size)
        if self._storage is None:
            m = self.model
            self._storage = KVStorage(1, 1, m.dim, kv.num_blocks, kv.block_size, m.dtype, m.wq.device)
        return self._storage

    def abort(self, req_id: Hashable) -> Request:
        """Finish an active request now (status FINISHED_ABORTED); unknown ids raise.

        Not from a hook that runs while a step executes (``on_attention``,
        cache hooks): ``SchedulerError``; abort from ``before_step``/``after_step``.
        """
        req = self.get(req_id)
        if req.status.is_finished:  # max_new_tokens=0: already finished, removed by the next step
            return req
        if self._plan is not None:
            raise SchedulerError(
                f"abort({req_id!r}) while step {self.step_id} is running; abort before or after the step"
            )
        self.planner.abort(req_id)
        self._retire(req)
        self._finished_since_step.append(req)
        return req

    def _retire(self, req: Request) -> None:
        self._release(req)
        self.plugins.request_finished(self, req)

    def _release(self, req: Request) -> None:
        del self._live[req.req_id]
        req.owner = None
        cache = req.kv_cache
        if self.release_finished_kv:
            cache.release()
        if isinstance(cache, PagedKVCache):
            cache.unbind()  # its rows (if kept) move out of the planner's freed blocks

    # --------------------------------------------------------------------- step
    def step(self) -> dict[str, Any]:
        """Run one continuous-batching step; returns what was scheduled and done.

        Keys: ``step_id``, ``decode_tokens``, ``prefill_tokens``,
        ``total_tokens``, ``active_requests`` (after the step),
        ``finished_requests`` / ``finished_request_ids`` (finished since the
        previous step), ``preempted_request_ids``, ``step_duration`` (seconds,
        on the injected clock) and ``status`` (``"completed"``, or
        ``"no_active_requests"`` when ``active`` was empty).

        If the model or a plugin raises while the step runs, the step is
        cancelled (see the module docstring) and the error propagates; the
        next ``step()`` redoes it with the same ``step_id``.  ``KVMemoryError``
        when a queued request can no longer fit beside pinned KV blocks.
        """
        t0 = self.clock()
        self.plugins.before_step(self)
        decode_tokens = prefill_tokens = 0
        preempted: list[Request] = []
        done: list[Request] = []
        status = "completed" if self._live else "no_active_requests"
        if self.planner.has_unfinished():
            try:
                plan = self.planner.schedule()
            except CapacityError as exc:  # a queued request no longer fits beside pinned blocks
                raise KVMemoryError(str(exc)) from None
            self._plan = plan
            preempted = plan.preempted
            touched: list[tuple[Request, int, int]] = []  # (request, cache rows, rows appended) before
            try:
                for req in preempted:  # recomputed from scratch when readmitted
                    req.kv_cache.release()
                items = [(r, r.num_computed_tokens, 1) for r in plan.decode]
                items += [(r, r.num_computed_tokens, n) for r, n in plan.prefill]
                if items:
                    self._run(items, touched)
            except BaseException as exc:
                self._cancel(plan, touched)
                exc.add_note(f"cb_lab: step {self.step_id} was cancelled; the scheduler is as before it")
                raise
            finally:
                self._plan = None
            done = self.planner.update(plan)
            for req in done:
                self._release(req)
            decode_tokens, prefill_tokens = plan.num_decode_tokens, plan.num_prefill_tokens
        finished = self._finished_since_step + done
        self._finished_since_step = []
        for req in finished:  # requests finished when added leave ``active`` now
            if self._live.get(req.req_id) is req:
                del self._live[req.req_id]
        try:
            for req in done:
                self.plugins.request_finished(self, req)
        except BaseException:
            self._finished_since_step = finished + self._finished_since_step  # report them next step
            self.step_id += 1
            raise
        stats = {
            "step_id": self.step_id,
            "decode_tokens": decode_tokens,
            "prefill_tokens": prefill_tokens,
            "total_tokens": decode_tokens + prefill_tokens,
            "active_requests": len(self._live),
            "finished_requests": len(finished),
            "finished_request_ids": [r.req_id for r in finished],
            "preempted_request_ids": [r.req_id for r in preempted],
            "step_duration": self.clock() - t0,
            "status": status,
        }
        self.step_id += 1
        self.plugins.after_step(self, stats)
        return stats

    def _cancel(self, plan, touched: list[tuple[Request, int, int]]) -> None:
        """Undo a failed step: planner, KV caches (cut back to their rows before it), outputs."""
        aborted = self.planner.cancel(plan)
        lost = []
        for req, rows, appended in touched:
            cache = req.kv_cache
            added = cache.num_appended - appended
            if rows == 0:
                cache.release()
            elif len(cache) == rows + added:  # nothing dropped during the step: cut the new rows
                if added:
                    cache.truncate(rows)
            else:  # a cache plugin removed rows during the step: not restorable
                cache.release()
                lost.append(req)
            cache.num_appended = appended
        for req in plan.decode + [r for r, _ in plan.prefill]:
            del req.generated_tokens[req.num_output_tokens :]  # outputs recorded by the failed step
        for req in lost:
            if req.status is RequestStatus.RUNNING:
                self.planner.preempt(req.req_id)
        for req in aborted:
            if req.req_id in self._live:
                self._release(req)
                self._finished_since_step.append(req)

    def _run(self, items: list[tuple[Request, int, int]], touched: list) -> None:
        """One forward pass over ``(request, start, num_tokens)`` items; stores KV and outputs.

        Appends ``(request, len(cache), cache.num_appended)`` to ``touched``
        before each request's cache is first changed (what ``_cancel`` restores).
        """
        batch = pack_chunks([(r.req_id, s, r.token_rows(s, s + n)) for r, s, n in items])
        past = [r.kv_cache.get_kv() if len(r.kv_cache) else None for r, _, _ in items]
        lens = [0 if p is None else p[0].size(0) for p in past]
        kept = [p for p in past if p is not None]
        dev = batch.tokens.device
        # cached keys: their request's index, position -1 (visible to every new token)
        past_seq = torch.repeat_interleave(
            batch.seq[batch.starts[:-1]], torch.tensor(lens, dtype=torch.int64, device=dev)
        )
        k_seq = torch.cat((past_seq, batch.seq))
        k_pos = torch.cat((torch.full_like(past_seq, -1), batch.pos))
        mask = ragged_causal_mask(batch.seq, batch.pos, k_seq, k_pos)
        pk = torch.cat([p[0] for p in kept]) if kept else None
        pv = torch.cat([p[1] for p in kept]) if kept else None
        out = self.model.forward_ragged(batch.tokens, mask, pk, pv)
        if self.plugins.attention_plugins:
            self.plugins.attention(
                self,
                AttentionRecord(
                    self.step_id, tuple(batch.req_ids), batch.seq, batch.pos, k_seq, k_pos, out.attn
                ),
            )
        for i, (req, start, n) in enumerate(items):
            a, b = batch.starts[i], batch.starts[i + 1]
            touched.append((req, len(req.kv_cache), req.kv_cache.num_appended))
            self.plugins.append(req.kv_cache, out.k[a:b], out.v[a:b])
            if start + n == req.num_tokens:  # all known tokens computed: the last output is sampled
                req.record_output(out.out[b - 1])
