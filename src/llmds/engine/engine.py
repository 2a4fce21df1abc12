"""LLMEngine: a real model served on the paged KV cache with continuous batching.

One ``step()`` is schedule -> run -> update, as in nano-vllm and vLLM:

1. the :class:`~llmds.engine.sched.planner.Planner` picks the decodes and prefill chunks of this step
   under the token budget (its :class:`~llmds.engine.kv.block_manager.BlockManager` owns the block
   tables: allocation, prefix caching, preemption when blocks run out);
2. :func:`~llmds.engine.runner.build_batch` flattens them into one batch and the model runs one
   forward over it, writing K/V into the block tensors at the slots of those tables;
3. the sampler draws one token per request that completed its known tokens, the detokenizers
   turn them into text (stop strings), and ``Planner.update`` advances the requests and frees
   the finished ones' blocks.

A failed forward is undone through ``Planner.cancel`` (the one rollback path) and re-raised.
The engine holds no global state; several engines can live in one process.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import replace
from typing import Any, Callable, Hashable, Iterator, Sequence

import numba
import torch

from llmds._checks import check_int
from llmds.engine.config import EngineConfig, SamplingParams
from llmds.engine.kv.block_manager import BlockManager
from llmds.engine.kv.hot_prefix import HotPrefixes
from llmds.engine.kv.storage import KVStorage
from llmds.engine.quantized import load_for_engine
from llmds.engine.metrics import EngineMetrics
from llmds.engine.models.llama import LlamaModel
from llmds.engine.request import RequestOutput, RequestState
from llmds.engine.runner import build_batch
from llmds.engine.sampling import Sampler, SampleRow
from llmds.engine.sched.planner import Planner, PlannerConfig
from llmds.engine.sequence import Group, Live, SeqId
from llmds.engine.structured import Guides
from llmds.engine.text import Detokenizer, TextTokenizer
from llmds.errors import ValidationError

__all__ = ["LLMEngine"]

log = logging.getLogger(__name__)


class LLMEngine:
    """Serve a Llama-family model (default: the embedded SmolLM2-135M-Instruct).

    ``LLMEngine(model=None, **options)`` with the options of :class:`EngineConfig`, or
    ``LLMEngine(config=EngineConfig(...))``.  ``clock`` (seconds) is injectable for tests.
    """

    def __init__(self, model: str | None = None, *, config: EngineConfig | None = None,
                 clock: Callable[[], float] = time.perf_counter, **options: Any) -> None:
        t0 = time.perf_counter()
        if config is None:
            config = EngineConfig.from_kwargs(model=model, **options)
        elif model is not None or options:
            raise ValidationError("pass either config=EngineConfig(...) or model/options, not both")
        self.config = cfg = config
        self.clock = clock
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
            numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
        loaded, self.quantization_report = load_for_engine(cfg.model, cfg.torch_dtype, cfg.quantization)
        mc = self.model_config = loaded.config
        self.tokenizer = TextTokenizer(loaded.tokenizer_json, cfg.chat_template or loaded.chat_template,
                                       loaded.special_tokens)
        self.eos_token_ids = frozenset(mc.eos_token_ids)
        kv_shape = (mc.num_layers, mc.num_kv_heads, mc.head_dim)
        num_blocks = cfg.num_blocks or KVStorage.blocks_for_budget(cfg.kv_cache_memory, *kv_shape, cfg.block_size,
                                                                   cfg.kv_torch_dtype)
        self.num_blocks = num_blocks
        self.max_model_len = min(cfg.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings)
        # the one KV path: planner -> block manager (block tables) -> block ids -> this arena
        self.kv = KVStorage(*kv_shape, num_blocks, cfg.block_size, cfg.kv_torch_dtype)
        self.model = LlamaModel(mc, loaded.weights, cfg.torch_dtype, self.kv)
        tokenizer_json = loaded.tokenizer_json
        del loaded
        self.block_manager = BlockManager(num_blocks, cfg.block_size, enable_prefix_caching=cfg.enable_prefix_caching)
        self.planner = Planner(PlannerConfig(cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.prefill_chunk_size,
                                             cfg.policy, cfg.prefill_first), kv=self.block_manager)
        self.sampler = Sampler(cfg.seed)
        self.guides = Guides(tokenizer_json, mc.vocab_size, mc.eos_token_ids, cfg.grammar_cache_size, cfg.threads)
        self.grammars = self.guides.compiler
        self.metrics = EngineMetrics()
        self.hot = None
        if cfg.enable_prefix_caching and cfg.hot_prefix_threshold > 0 and cfg.max_pinned_fraction > 0:
            self.hot = HotPrefixes(cfg.block_size, cfg.hot_prefix_threshold,
                                   int(num_blocks * cfg.max_pinned_fraction), self.planner.pin_prefix,
                                   self.planner.unpin)
        self._live: dict[Hashable, Live] = {}  # {planner id: sequence}
        self._groups: dict[Hashable, Group] = {}  # requests with n > 1 until their last sequence finishes
        self._finished_now: list[Live] = []  # finished at add (max_tokens=0), reported by the next step
        self._ids = itertools.count()
        self.load_seconds = time.perf_counter() - t0

    # --------------------------------------------------------------- requests
    def add_request(self, prompt: str | Sequence[int] | Sequence[dict], sampling_params: SamplingParams | None = None,
                    request_id: Hashable | None = None, *, priority: int = 0, deadline: float | None = None) -> Hashable:
        """Queue a request; returns its id.

        ``prompt`` is text, token ids, or chat messages (``[{"role", "content"}, ...]``, rendered
        with the model's chat template).  Raises ``ValidationError`` for a bad prompt or a prompt
        longer than the context, ``CapacityError`` for one the KV cache could never hold; nothing
        is queued then.  With ``sampling_params.n > 1`` the request's ``n`` sequences report
        under its id with their ``index`` (see :class:`RequestOutput`).
        """
        params = SamplingParams() if sampling_params is None else sampling_params
        if not isinstance(params, SamplingParams):
            raise ValidationError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        if params.n > self.config.max_num_seqs:
            raise ValidationError(f"n must be at most max_num_seqs={self.config.max_num_seqs} (a request's "
                                  f"sequences run at once), got {params.n}")
        if params.logit_bias:
            self.tokenizer.check_ids([t for t, _ in params.logit_bias], "logit_bias token ids")
        ids = self.encode_prompt(prompt)
        guide = None if params.structured_outputs is None else self.guides.matcher(params.structured_outputs)
        if len(ids) >= self.max_model_len:
            raise ValidationError(
                f"the prompt has {len(ids)} tokens; the model's context is {self.max_model_len} "
                "(prompt + at least one generated token)")
        if request_id is None:
            request_id = f"req-{next(self._ids)}"
            while request_id in self._live or request_id in self._groups:
                request_id = f"req-{next(self._ids)}"
        elif request_id in self._live or request_id in self._groups:
            raise ValidationError(f"request id {request_id!r} is already live; ids must be unique")
        stops = set(params.stop_token_ids)
        if not params.ignore_eos:
            stops |= self.eos_token_ids
        max_new = min(params.max_tokens, self.max_model_len - len(ids))
        now = self.clock()
        seq = RequestState(request_id, ids, max_new_tokens=max_new, priority=check_int("priority", priority),
                           arrival_time=now, deadline=deadline, stop_token_ids=stops, sampling_params=params,
                           n=params.n)
        queued = self.planner.add(seq)  # CapacityError / ValidationError: nothing queued
        keys = self.hot.keys_of(ids) if self.hot is not None else []
        if self.hot is not None:
            self.hot.observe(keys)
        detok = Detokenizer(self.tokenizer, params.stop, params.skip_special_tokens)
        group = Group(request_id, params.n) if params.n > 1 else None
        live = Live(seq, params, detok, SampleRow(params, ids, seq.output_token_ids), now, keys, 0, group, guide)
        self._live[request_id] = live
        if group is not None:
            self._groups[request_id] = group
        if not queued:  # max_tokens == 0: finished already; reported by the next step()
            self._finished_now.append(live)
            for i in range(1, params.n):
                child = self._child(live, i)
                self._live[child.seq.request_id] = child
                self._finished_now.append(child)
        return request_id

    def _child(self, parent: Live, index: int) -> Live:
        """Sequence ``index`` of ``parent``'s request (parallel sampling; its seed is ``seed + index``)."""
        p, s = parent.params, parent.seq
        params = p if p.seed is None else replace(p, seed=(p.seed + index + 2**63) % 2**64 - 2**63)
        seq = RequestState(SeqId(s.request_id, index), s.prompt_token_ids, max_new_tokens=s.max_new_tokens,
                           priority=s.priority, arrival_time=s.arrival_time, deadline=s.deadline,
                           stop_token_ids=s.stop_token_ids, sampling_params=params)
        detok = Detokenizer(self.tokenizer, params.stop, params.skip_special_tokens)
        row = SampleRow(params, s.prompt_token_ids, seq.output_token_ids)
        guide = None if parent.guide is None else parent.guide.deep_copy()  # before the parent's first token
        live = Live(seq, params, detok, row, parent.arrival, parent.keys, index, parent.group, guide)
        live.pinned_checked = True  # the parent's prompt
        return live

    def encode_prompt(self, prompt: Any) -> list[int]:
        return self.tokenizer.encode_prompt(prompt)

    def abort(self, request_id: Hashable) -> bool:
        """Finish a request (all its sequences) now and free its KV blocks; False for an unknown
        or finished id."""
        group = self._groups.pop(request_id, None)
        found = False
        for sid in group.ids if group is not None else (request_id,):
            live = self._live.pop(sid, None)
            if live is None:
                continue
            found = True
            self.planner.abort(sid)
            if live in self._finished_now:
                self._finished_now.remove(live)
        if not found:
            return False
        self.metrics.requests_finished["abort"] += 1
        self._gauges()  # no step may follow (an idle engine): keep running/waiting/KV usage true
        return True

    def abort_all(self, reason: str = "abort") -> list[RequestOutput]:
        """Finish every live request now (``finish_reason=reason``), freeing all blocks; their final outputs."""
        outs = []
        for rid in list(self._live):
            live = self._live.pop(rid)
            self.planner.abort(rid)
            outs.append(self._final(live, [], reason=reason))
        self._finished_now.clear()
        self._groups.clear()
        self._gauges()
        return outs

    def has_unfinished_requests(self) -> bool:
        return bool(self._live)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._live)

    # -------------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        """Run one step; returns an output for every request that produced a token or finished."""
        t0 = time.perf_counter()
        outputs = [self._final(live, []) for live in self._drain_finished_now()]
        plan = self.planner.schedule()
        m = self.metrics
        if plan.is_empty:
            self.planner.update(plan, [])
            self._gauges()
            return outputs
        now = self.clock()
        for s, n in plan.prefill:
            live = self._live[s.request_id]
            if live.scheduled is None:
                live.scheduled = now
                m.request_queue_time_seconds.observe(now - live.arrival)
        m.num_preemptions += len(plan.preempted)
        try:
            batch = build_batch(plan, self.config.block_size)
            tf = time.perf_counter()
            logits = self.model.forward(batch)
            m.forward_seconds += time.perf_counter() - tf
            sampling = plan.sampling
            lives = [self._live[s.request_id] for s in sampling]
            guided = [i for i, live in enumerate(lives) if live.guide is not None]
            if guided:
                tm = time.perf_counter()
                self.guides.mask(logits, guided, [lives[i].guide for i in guided])
                m.structured_mask_seconds += time.perf_counter() - tm
            tokens, logprobs = self.sampler(logits, [live.row for live in lives])
            forks, sampled = self._sample_forks(sampling, logits)
        except BaseException:
            self.planner.cancel(plan)
            raise
        # (sequence, token, logprobs): this plan's, then the first tokens of the forked sequences
        sampled[:0] = zip((self._live[s.request_id] for s in sampling), tokens, logprobs or [None] * len(tokens))
        now = self.clock()
        stopped, deltas = [], []
        for live, tok, lp in sampled:
            s = live.seq
            text = "" if tok in s.stop_token_ids else live.detok.push(tok)
            if live.detok.stopped is not None:
                stopped.append(s.request_id)
            deltas.append(text)
            if live.first is None:
                live.first = now
                if live.index == 0:  # one TTFT per request
                    m.time_to_first_token_seconds.observe(now - live.arrival)
            else:
                m.inter_token_latency_seconds.observe(now - live.last)
            live.last = now
            if live.logprobs is not None:
                live.logprobs.append(lp)
        consumed = self.guides.advance([(lv.guide, t, lv.seq) for lv, t, _ in sampled if lv.guide], stopped) \
            if guided else []
        try:
            finished = self.planner.update(plan, tokens, stopped, forks)
        except BaseException:
            self.guides.rollback(consumed)  # the step did not happen: neither did the grammars' advance
            raise
        for live, _, _ in sampled[len(tokens):]:
            self._live[live.seq.request_id] = live
        if plan.copies:  # copy-on-write of the forked sequences' last prompt block
            self.kv.copy_blocks(plan.copies)
        m.generation_tokens += len(sampled)
        m.prompt_tokens += sum(n for _, n in plan.prefill)  # computed prompt tokens (recompute included)
        done = {s.request_id for s in finished}
        forced = self._jump_forward(sampled, deltas, done) if guided and self.config.jump_forward else {}
        for (live, tok, lp), text in zip(sampled, deltas):
            s = live.seq
            if self.hot is not None and not live.pinned_checked:  # its prompt's KV is computed (and cached)
                live.pinned_checked = True
                self.hot.maybe_pin(s.prompt_token_ids, live.keys)
            if s.request_id in done or s.request_id not in self._live:
                continue
            new = [tok] + forced[s.request_id] if s.request_id in forced else [tok]
            outputs.append(RequestOutput(live.request_id, new, text, False, None, s.num_prompt_tokens,
                                         s.num_output_tokens, s.num_cached_tokens, None if lp is None else [lp],
                                         arrival_time=live.arrival, first_token_time=live.first,
                                         index=live.index))
        if finished:
            at = {live.seq.request_id: j for j, (live, _, _) in enumerate(sampled)}
            for s in finished:
                live = self._live.pop(s.request_id, None)
                if live is None:
                    continue  # aborted by the caller
                j = at.get(s.request_id)
                if j is None:
                    outputs.append(self._final(live, []))
                else:
                    _, tok, lp = sampled[j]
                    outputs.append(self._final(live, [tok], None if lp is None else [lp], deltas[j]))
        self._gauges()
        m.num_steps += 1
        m.step_seconds += time.perf_counter() - t0
        return outputs

    def _jump_forward(self, sampled: list, deltas: list[str], done: set) -> dict[Hashable, list[int]]:
        """Append the tokens each running grammar forces next (one forward computes them all);
        ``{planner id: tokens}``, their text added to the step's delta."""
        forced = {}
        for j, (live, _, _) in enumerate(sampled):
            s = live.seq
            if live.guide is None or s.request_id in done or s.request_id not in self._live or not s.is_decoding \
                    or live.params.stop or live.logprobs is not None:
                continue  # forced tokens have no logprobs; stop strings could cut them
            ff = self.guides.forced(live.guide, s.max_new_tokens - s.num_output_tokens - 1, s.stop_token_ids)
            if ff:
                self.planner.extend(s.request_id, ff)
                deltas[j] += "".join(live.detok.push(t) for t in ff)
                forced[s.request_id] = ff
                self.metrics.structured_jump_forward_tokens += len(ff)
                self.metrics.generation_tokens += len(ff)
        return forced

    def _sample_forks(self, sampling, logits) -> tuple[dict, list]:
        """The first tokens of the other sequences of each request with ``n > 1`` whose prompt
        completes now, sampled from its logits row: the planner's ``forks`` and ``(sequence,
        token, logprobs)`` for each new sequence."""
        forks, sampled = {}, []
        for i, s in enumerate(sampling):
            if s.n == 1 or s.num_output_tokens:
                continue
            parent = self._live[s.request_id]
            lives = [self._child(parent, k) for k in range(1, s.n)]
            toks, lps = self.sampler(logits[i:i + 1].expand(len(lives), -1).contiguous(), [c.row for c in lives])
            forks[s.request_id] = [(c.seq, t) for c, t in zip(lives, toks)]
            sampled += zip(lives, toks, lps or [None] * len(lives))
        return forks, sampled

    def _final(self, live: Live, new: list[int], lp=None, delta: str = "", reason: str | None = None) -> RequestOutput:
        s, now = live.seq, self.clock()
        reason = reason or s.finish_reason or "length"
        stop_reason = live.detok.stopped
        if stop_reason is None and reason == "stop" and s.output_token_ids:
            stop_reason = s.output_token_ids[-1]
        group = live.group
        last = group is None or group.unfinished == 1
        if group is not None:
            group.unfinished -= 1
            if last:
                self._groups.pop(live.request_id, None)
        if last:  # per request, as vLLM counts them
            self.metrics.requests_finished[reason] = self.metrics.requests_finished.get(reason, 0) + 1
            self.metrics.e2e_request_latency_seconds.observe(now - live.arrival)
        text = delta + live.detok.flush()
        return RequestOutput(live.request_id, new, text, True, reason, s.num_prompt_tokens, s.num_output_tokens,
                             s.num_cached_tokens, lp, output_text=live.detok.text,
                             output_token_ids=list(s.output_token_ids), stop_reason=stop_reason,
                             output_logprobs=live.logprobs, arrival_time=live.arrival,
                             first_token_time=live.first, finished_time=now, index=live.index,
                             request_finished=last)

    def _drain_finished_now(self) -> list[Live]:
        done, self._finished_now = self._finished_now, []
        for live in done:
            self._live.pop(live.seq.request_id, None)
        return done

    def _gauges(self) -> None:
        m, bm = self.metrics, self.block_manager
        m.num_requests_running = self.planner.num_running
        m.num_requests_waiting = self.planner.num_waiting
        m.kv_cache_usage_perc = bm.usage()
        m.prefix_cache_queries = bm.num_query_tokens
        m.prefix_cache_hits = bm.num_hit_tokens
        m.num_pinned_blocks = self.hot.num_pinned_blocks if self.hot is not None else 0

    # -------------------------------------------------------------- drivers
    def generate(self, prompts: str | Sequence, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, use_tqdm: bool = False) -> list[RequestOutput]:
        """Run prompts to completion; the final output of each, in prompt order (``n`` outputs, in
        ``index`` order, for a prompt sampled with ``n > 1``).  Their ``text`` is the whole output
        text (as ``output_text``), as with vLLM's ``generate``."""
        single = isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                               and all(isinstance(t, int) for t in prompts))
        items = [prompts] if single else list(prompts)
        params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(items)
        if len(params) != len(items):
            raise ValidationError(f"got {len(params)} sampling params for {len(items)} prompts")
        ids: list[Hashable] = []
        results: dict[tuple, RequestOutput] = {}
        done = 0
        bar = None
        try:
            for p, sp in zip(items, params):
                ids.append(self.add_request(p, sp))
            if use_tqdm:
                from tqdm.auto import tqdm  # optional: installed with transformers, not required

                bar = tqdm(total=len(ids), desc="generate", unit="req")
            wanted = set(ids)
            while done < len(ids):
                for out in self.step():
                    if out.finished and out.request_id in wanted:
                        results[out.request_id, out.index] = replace(out, text=out.output_text)
                        if out.request_finished:
                            done += 1
                            if bar is not None:
                                bar.update(1)
        except BaseException:
            for rid in ids:
                self.abort(rid)
            raise
        finally:
            if bar is not None:
                bar.close()
        order = {rid: i for i, rid in enumerate(ids)}
        return [results[key] for key in sorted(results, key=lambda k: (order[k[0]], k[1]))]

    def stream(self, prompt: Any, sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield one request's outputs as they come (this call drives the engine's steps)."""
        rid = self.add_request(prompt, sampling_params)
        try:
            while True:
                for out in self.step():
                    if out.request_id == rid:
                        yield out
                        if out.request_finished:
                            return
        finally:
            self.abort(rid)

    def stats(self) -> dict[str, Any]:
        return {**self.metrics.summary(), **{f"kv_{k}": v for k, v in self.block_manager.stats().items()},
                "num_blocks": self.num_blocks, "block_size": self.config.block_size,
                "load_seconds": self.load_seconds}
