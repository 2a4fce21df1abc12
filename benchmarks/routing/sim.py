"""Discrete-event simulation of N engine replicas behind one router.

Each replica is the engine's real step planner on a real :class:`BlockManager` (prefix caching,
LRU eviction of cached blocks, preemption), driven without a model: a step's duration comes
from :class:`StepModel`, and the tokens it "samples" are the reply the trace fixed, so replies
land in the KV cache as the engine's would and later turns hit them.  Events are arrivals (the
policy routes them) and step ends (outputs applied, finished requests freed).
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmds.engine.kv.block_manager import BlockManager
from llmds.engine.request import RequestState
from llmds.engine.sched.planner import Planner, PlannerConfig

__all__ = ["StepModel", "SimConfig", "simulate"]


@dataclass(frozen=True, slots=True)
class StepModel:
    """Seconds per engine step: ``overhead`` + the linear stack's time for the step's tokens,
    interpolated piecewise-linearly between measured token counts (extrapolated past the last).

    :meth:`from_bench_engine` reads ``benchmarks/results/bench_engine.json`` (llmds bf16): the
    linear stack's tok/s at 1, 32 and 512 tokens per step, and the single-request decode rate,
    whose step time minus the 1-token linear time is the per-step overhead (attention, norms,
    sampling, Python)."""

    tokens: tuple[int, ...]
    seconds: tuple[float, ...]
    overhead: float
    source: str = ""

    @classmethod
    def from_bench_engine(cls, path: Path, engine: str = "llmds bfloat16") -> StepModel:
        e = json.loads(Path(path).read_text())["engines"][engine]
        pts = sorted((int(n), int(n) / float(r)) for n, r in e["linear_tok_s"].items())
        overhead = max(0.0, 1.0 / float(e["single_decode_tok_s"]) - pts[0][1])
        return cls(tuple(n for n, _ in pts), tuple(s for _, s in pts), overhead,
                   f"{Path(path).name} [{engine}] on {json.loads(Path(path).read_text())['machine']['processor']}")

    def __call__(self, num_tokens: int) -> float:
        xs, ys = self.tokens, self.seconds
        if num_tokens <= xs[-1]:
            return self.overhead + float(np.interp(num_tokens, xs, ys))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return self.overhead + ys[-1] + slope * (num_tokens - xs[-1])


@dataclass(frozen=True, slots=True)
class SimConfig:
    num_blocks: int = 1024  # per replica
    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512


class SimReplica:
    """One engine: planner + block manager, stepping on simulated time."""

    def __init__(self, cfg: SimConfig, step_model: StepModel) -> None:
        self.bm = BlockManager(cfg.num_blocks, cfg.block_size)
        self.planner = Planner(PlannerConfig(cfg.max_num_batched_tokens, cfg.max_num_seqs), kv=self.bm)
        self.step_model = step_model
        self.plan = None
        self.reqs: dict[int, object] = {}  # rid -> TraceRequest
        self.first: dict[int, float] = {}  # rid -> first token time
        self.busy = 0.0  # seconds spent stepping

    def add(self, req, now: float) -> None:
        seq = RequestState(req.rid, req.prompt, max_new_tokens=len(req.reply), arrival_time=now)
        self.planner.add(seq)
        self.reqs[req.rid] = req

    def start_step(self, now: float) -> float | None:
        """Plan a step; its end time, or None when there is nothing to run."""
        if not self.planner.has_unfinished():
            return None
        self.plan = self.planner.schedule()
        if self.plan.is_empty:
            self.planner.cancel(self.plan)
            self.plan = None
            return None
        dt = self.step_model(self.plan.num_batched_tokens)
        self.busy += dt
        return now + dt

    def end_step(self, now: float) -> tuple[list, list]:
        """Apply the running step's tokens; the requests that got their first token, and the
        finished ones as ``(req, first token time)``."""
        plan, self.plan = self.plan, None
        toks, started = [], []
        for s in plan.sampling:
            if s.num_output_tokens == 0:
                self.first[s.request_id] = now
                started.append(self.reqs[s.request_id])
            toks.append(self.reqs[s.request_id].reply[s.num_output_tokens])
        done = self.planner.update(plan, toks)
        out = []
        for s in done:
            req = self.reqs.pop(s.request_id)
            out.append((req, self.first.pop(s.request_id)))
        return started, out


def simulate(trace: list, policy, n: int, cfg: SimConfig, step_model: StepModel) -> dict:
    """Run ``trace`` through ``n`` replicas routed by ``policy``; the figures of the run."""
    reps = [SimReplica(cfg, step_model) for _ in range(n)]
    loads = [0] * n
    area = [0.0] * n  # integral of requests in flight over time, per replica
    last = [0.0] * n
    steps: list[tuple[float, int]] = []
    stepping = [False] * n
    ttft, kinds, out_tokens, finish = [], [], 0, 0.0
    t_start = trace[0].arrival if trace else 0.0

    def change(i: int, now: float, d: int) -> None:
        area[i] += loads[i] * (now - last[i])
        last[i] = now
        loads[i] += d

    def kick(i: int, now: float) -> None:
        end = reps[i].start_step(now)
        stepping[i] = end is not None
        if end is not None:
            heapq.heappush(steps, (end, i))

    a = 0
    while a < len(trace) or steps:
        if a < len(trace) and (not steps or trace[a].arrival <= steps[0][0]):
            req = trace[a]
            a += 1
            now = req.arrival
            i = policy.route(req, loads, now, reps)
            change(i, now, +1)
            reps[i].add(req, now)
            if not stepping[i]:
                kick(i, now)
        else:
            now, i = heapq.heappop(steps)
            started, done = reps[i].end_step(now)
            for req in started:
                policy.started(i, req)
            for req, first in done:
                policy.finished(i, req)
                change(i, now, -1)
                ttft.append(first - req.arrival)
                kinds.append(req.kind)
                out_tokens += len(req.reply)
                finish = max(finish, now)
            kick(i, now)
    span = finish - t_start
    for i in range(n):
        change(i, finish, 0)
    q_tok = sum(r.bm.num_query_tokens for r in reps)
    mean_load = [x / span for x in area]
    tt, kk = np.asarray(ttft), np.asarray(kinds)
    return {
        "requests": len(trace),
        "hit_rate": sum(r.bm.num_hit_tokens for r in reps) / q_tok if q_tok else 0.0,
        "ttft_p50_ms": float(np.percentile(tt, 50) * 1000),
        "ttft_p99_ms": float(np.percentile(tt, 99) * 1000),
        "throughput_tok_s": out_tokens / span,
        "makespan_s": span,
        "imbalance": max(mean_load) / (sum(mean_load) / n) if sum(mean_load) else 1.0,
        "busy_fraction": sum(r.busy for r in reps) / (n * span),
        "ttft_p99_ms_by_kind": {k: float(np.percentile(tt[kk == k], 99) * 1000) for k in sorted(set(kinds))},
    }
