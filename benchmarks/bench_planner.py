"""Planner + block bookkeeping cost per decode step, against a naive nano-vllm-style baseline.

Workload (seeded): N requests, block size 16, prompts of 512–2048 tokens;
half of them start with one of four shared 1024-token prefixes; 128 new
tokens each.  All requests are added, prefilled in one step (untimed), then
every decode step is timed: ``schedule()`` + ``update()`` only (the "model"
is a no-op that samples a fixed token).  Reported: median µs per decode step
and per running request per step, over ``--repeats`` runs, for

* ``llmds``: ``Planner`` + ``BlockManager`` (shared ``PagedAllocator`` +
  ``PrefixCache``; blocks in the free list's order, the engine's placement);
* ``naive``: written here in nano-vllm's style: block objects with ref counts
  and a hash dict, a deque of free ids, deques of waiting/running sequences,
  a per-sequence loop in ``schedule`` and ``postprocess``.

Prefix-cache hit rate is compared with the ideal: the fraction of prompt
tokens that are shared-prefix tokens beyond each prefix's first occurrence.
``runs`` is the fraction of running requests whose block table is one run of
consecutive blocks, halfway through decoding (requests with a prefix hit
share blocks with others, so about half can be); ``admit ms`` is the prefill
step that admits and allocates every request (not part of the decode timing).

Run: ``python -m benchmarks.bench_planner [--quick]``; writes
``benchmarks/results/bench_planner.json``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import time
from collections import deque
from pathlib import Path

from llmds.engine.kv.block_manager import BlockManager
from llmds.engine.sched.planner import Planner, PlannerConfig
from llmds.engine.request import RequestState
from benchmarks._common import add_out_arg, out_path, ratio_rule, run_main, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "bench_planner.json"
BLOCK = 16
PREFIX_LEN = 1024
NUM_PREFIXES = 4
VOCAB = 49152
FIXED_TOKEN = 42


# ----------------------------------------------------------------------------- workload
def make_workload(n: int, seed: int = 0, max_new: int = 128):
    """[(prompt token ids, max_new)], and the ideal prefix hit rate of that workload."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(VOCAB) for _ in range(PREFIX_LEN)] for _ in range(NUM_PREFIXES)]
    seen, shareable, total, out = set(), 0, 0, []
    for i in range(n):
        if i % 2 == 0:  # shared: prefix + a suffix, 1040..2048 tokens in all
            k = rng.randrange(NUM_PREFIXES)
            length = rng.randint(PREFIX_LEN + BLOCK, 2048)
            toks = prefixes[k] + [rng.randrange(VOCAB) for _ in range(length - PREFIX_LEN)]
            if k in seen:
                shareable += PREFIX_LEN
            seen.add(k)
        else:
            toks = [rng.randrange(VOCAB) for _ in range(rng.randint(512, 2048))]
        total += len(toks)
        out.append((toks, max_new))
    return out, shareable / total


def pool_blocks(work) -> int:
    return sum(-(-(len(t) + m) // BLOCK) for t, m in work) + 64


# ----------------------------------------------------------------------------- llmds
def run_llmds(work):
    n = len(work)
    bm = BlockManager(pool_blocks(work), BLOCK)
    cfg = PlannerConfig(max_num_batched_tokens=sum(len(t) for t, _ in work) + n, max_num_seqs=n)
    p = Planner(cfg, bm)
    seqs = [RequestState(i, toks, max_new_tokens=m) for i, (toks, m) in enumerate(work)]
    for s in seqs:
        p.add(s)
    toks = [FIXED_TOKEN] * n
    t0 = time.perf_counter()
    plan = p.schedule()
    p.update(plan, toks[: len(plan.sampling)])
    prefill_s = time.perf_counter() - t0
    assert p.num_running == n, "everything is prefilled in one step"
    steps = []
    clock = time.thread_time_ns
    runs = None
    gc.collect()
    gc.disable()
    try:
        while p.has_unfinished():
            t0 = clock()
            plan = p.schedule()
            p.update(plan, toks[: len(plan.decode)])
            steps.append(clock() - t0)
            assert not plan.prefill and len(plan.decode) == n
            if len(steps) == work[0][1] // 2:
                runs = sum(map(bm.is_contiguous, seqs)) / n
    finally:
        gc.enable()
    return steps, bm.hit_rate, prefill_s, runs


# ----------------------------------------------------------------------------- naive baseline
class NBlock:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id):
        self.block_id, self.ref_count, self.hash, self.token_ids = block_id, 0, -1, []


class NSeq:
    __slots__ = ("seq_id", "token_ids", "num_tokens", "num_prompt_tokens", "num_cached_tokens",
                 "block_table", "max_tokens", "finished")

    def __init__(self, seq_id, token_ids, max_tokens):
        self.seq_id, self.token_ids, self.max_tokens = seq_id, list(token_ids), max_tokens
        self.num_tokens = self.num_prompt_tokens = len(token_ids)
        self.num_cached_tokens, self.block_table, self.finished = 0, [], False

    @property
    def num_blocks(self):
        return (self.num_tokens + BLOCK - 1) // BLOCK

    def block(self, i):
        return self.token_ids[i * BLOCK : (i + 1) * BLOCK]


class NBlockManager:
    def __init__(self, num_blocks):
        self.blocks = [NBlock(i) for i in range(num_blocks)]
        self.hash_to_block_id: dict[int, int] = {}
        self.free_block_ids = deque(range(num_blocks))
        self.used_block_ids: set[int] = set()

    @staticmethod
    def compute_hash(token_ids, prefix=-1):
        return hash((prefix, tuple(token_ids)))

    def _allocate_block(self, block_id):
        b = self.blocks[block_id]
        b.ref_count, b.hash, b.token_ids = 1, -1, []
        self.free_block_ids.remove(block_id)
        self.used_block_ids.add(block_id)
        return b

    def _deallocate_block(self, block_id):
        self.used_block_ids.remove(block_id)
        self.free_block_ids.append(block_id)

    def can_allocate(self, seq):
        return len(self.free_block_ids) >= seq.num_blocks

    def allocate(self, seq):
        h, miss = -1, False
        for i in range(seq.num_blocks):
            tok = seq.block(i)
            h = self.compute_hash(tok, h) if len(tok) == BLOCK else -1
            bid = self.hash_to_block_id.get(h, -1)
            if bid == -1 or self.blocks[bid].token_ids != tok:
                miss = True
            if miss:
                bid = self.free_block_ids[0]
                b = self._allocate_block(bid)
            else:
                seq.num_cached_tokens += BLOCK
                if bid in self.used_block_ids:
                    b = self.blocks[bid]
                    b.ref_count += 1
                else:
                    b = self._allocate_block(bid)
            if h != -1:
                b.hash, b.token_ids = h, tok
                self.hash_to_block_id[h] = bid
            seq.block_table.append(bid)

    def deallocate(self, seq):
        for bid in reversed(seq.block_table):
            b = self.blocks[bid]
            b.ref_count -= 1
            if b.ref_count == 0:
                self._deallocate_block(bid)
        seq.num_cached_tokens = 0
        seq.block_table.clear()

    def can_append(self, seq):
        return len(self.free_block_ids) >= (seq.num_tokens % BLOCK == 1)

    def may_append(self, seq):
        bt = seq.block_table
        last = self.blocks[bt[-1]]
        if seq.num_tokens % BLOCK == 1:
            bid = self.free_block_ids[0]
            self._allocate_block(bid)
            bt.append(bid)
        elif seq.num_tokens % BLOCK == 0:
            tok = seq.block(seq.num_blocks - 1)
            prefix = self.blocks[bt[-2]].hash if len(bt) > 1 else -1
            h = self.compute_hash(tok, prefix)
            last.hash, last.token_ids = h, tok
            self.hash_to_block_id[h] = last.block_id


class NScheduler:
    def __init__(self, num_blocks, max_num_seqs, max_num_batched_tokens):
        self.bm = NBlockManager(num_blocks)
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: deque[NSeq] = deque()
        self.running: deque[NSeq] = deque()

    def add(self, seq):
        self.waiting.append(seq)

    def is_finished(self):
        return not self.waiting and not self.running

    def schedule(self):
        scheduled, batched = [], 0
        while self.waiting and len(scheduled) < self.max_num_seqs:
            seq = self.waiting[0]
            if batched + seq.num_tokens > self.max_num_batched_tokens or not self.bm.can_allocate(seq):
                break
            self.bm.allocate(seq)
            batched += seq.num_tokens - seq.num_cached_tokens
            self.waiting.popleft()
            self.running.append(seq)
            scheduled.append(seq)
        if scheduled:
            return scheduled, True
        while self.running and len(scheduled) < self.max_num_seqs:
            seq = self.running.popleft()
            while not self.bm.can_append(seq):
                if self.running:
                    self.preempt(self.running.pop())
                else:
                    self.preempt(seq)
                    break
            else:
                self.bm.may_append(seq)
                scheduled.append(seq)
        self.running.extendleft(reversed(scheduled))
        return scheduled, False

    def preempt(self, seq):
        self.bm.deallocate(seq)
        self.waiting.appendleft(seq)

    def postprocess(self, seqs, token_ids):
        for seq, t in zip(seqs, token_ids):
            seq.token_ids.append(t)
            seq.num_tokens += 1
            if seq.num_tokens - seq.num_prompt_tokens == seq.max_tokens:
                seq.finished = True
                self.bm.deallocate(seq)
                self.running.remove(seq)


def run_naive(work):
    n = len(work)
    s = NScheduler(pool_blocks(work), n, sum(len(t) for t, _ in work) + n)
    seqs = [NSeq(i, t, m) for i, (t, m) in enumerate(work)]
    for q in seqs:
        s.add(q)
    toks = [FIXED_TOKEN] * n
    t0 = time.perf_counter()
    batch, _ = s.schedule()
    s.postprocess(batch, toks)
    prefill_s = time.perf_counter() - t0
    assert len(s.running) == n
    hit = sum(q.num_cached_tokens for q in seqs) / sum(q.num_prompt_tokens for q in seqs)
    steps = []
    clock = time.thread_time_ns
    gc.collect()
    gc.disable()
    try:
        while not s.is_finished():
            t0 = clock()
            batch, _ = s.schedule()
            s.postprocess(batch, toks)
            steps.append(clock() - t0)
            assert len(batch) == n
    finally:
        gc.enable()
    return steps, hit, prefill_s, None


# ----------------------------------------------------------------------------- driver
def bench(sizes, repeats, max_new=128):
    rows = []
    for n in sizes:
        work, ideal = make_workload(n, seed=n, max_new=max_new)
        res = {}
        for name, fn in (("llmds", run_llmds), ("naive", run_naive)):
            med, mean, last, pre, hits = [], [], [], [], None
            for _ in range(repeats):
                steps, hits, prefill_s, runs = fn(work)
                med.append(statistics.median(steps) / 1e3)
                mean.append(statistics.mean(steps) / 1e3)
                last.append(steps[-1] / 1e3)
                pre.append(prefill_s * 1e3)
            us, us_mean = statistics.median(med), statistics.median(mean)
            res[name] = {"us_per_step": us, "us_per_request_step": us / n,
                         "mean_us_per_step": us_mean, "mean_us_per_request_step": us_mean / n,
                         "last_step_us": statistics.median(last), "num_decode_steps": len(steps),
                         "hit_rate": hits, "prefill_step_ms": statistics.median(pre), "contiguous_fraction": runs,
                         "repeat_median_us_per_step": med, "repeat_mean_us_per_step": mean}
        rows.append({"running": n, "ideal_hit_rate": ideal, **res,
                     "speedup_vs_naive": res["naive"]["us_per_step"] / res["llmds"]["us_per_step"],
                     "speedup_vs_naive_mean": res["naive"]["mean_us_per_step"] / res["llmds"]["mean_us_per_step"]})
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 repeat, 32 new tokens")
    ap.add_argument("--repeats", type=int, default=5)
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        sizes, repeats, max_new = [16, 64], 1, 32
    else:
        sizes, repeats, max_new = [64, 256, 1024], args.repeats, 128
    rows = bench(sizes, repeats, max_new)
    hdr = (f"{'running':>7} | {'llmds med':>9} {'us/req':>6} {'mean':>8} {'us/req':>6} | {'naive med':>9} "
           f"{'us/req':>6} {'mean':>8} {'us/req':>6} | {'x med':>5} {'x mean':>6} | "
           f"{'hit llmds':>9} {'naive':>6} {'ideal':>6} | {'runs':>5} | {'admit ms':>8} {'naive':>6}")
    print("decode step = schedule()+update(), CPU µs (thread time), GC off; med = median step, "
          "mean includes block boundaries and the final frees; "
          + ratio_rule("naive µs / llmds µs (x med, x mean)"))
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        a, b = r["llmds"], r["naive"]
        print(f"{r['running']:>7} | {a['us_per_step']:>9.1f} {a['us_per_request_step']:>6.3f} "
              f"{a['mean_us_per_step']:>8.1f} {a['mean_us_per_request_step']:>6.3f} | {b['us_per_step']:>9.1f} "
              f"{b['us_per_request_step']:>6.3f} {b['mean_us_per_step']:>8.1f} {b['mean_us_per_request_step']:>6.3f} | "
              f"{r['speedup_vs_naive']:>5.2f} {r['speedup_vs_naive_mean']:>6.2f} | "
              f"{a['hit_rate']:>9.4f} {b['hit_rate']:>6.4f} {r['ideal_hit_rate']:>6.4f} | "
              f"{a['contiguous_fraction']:>5.2f} | {a['prefill_step_ms']:>8.1f} {b['prefill_step_ms']:>6.1f}")
    result = {
        "benchmark": "bench_planner",
        "description": "schedule()+update() per decode step (CPU thread time, GC disabled while timing); "
                       "block size 16; prompts 512-2048, half sharing one of four 1024-token prefixes",
        "max_new_tokens": max_new,
        "repeats": repeats,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rows": rows,
    }
    write_results(out_path(args, RESULTS), result)
    return result


if __name__ == "__main__":
    run_main(main)
