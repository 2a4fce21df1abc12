"""TokenLRU, IndexedHeap and CountMinSketch against their peers, side by side in one process.

Run from the repo root:  PYTHONPATH=src python -m benchmarks.bench_structures [--quick]

* TokenLRU vs ``cachetools.LRUCache(maxsize=budget, getsizeof=len)``: put and get.
* IndexedHeap vs a bare ``heapq`` with lazy deletion (what one would hand-write)
  and vs a hand-written sift heap with a position map (the other design), on a
  push / pop / update mix; all three must pop the same sequence.
* CountMinSketch.add_many / estimate_many vs a pure-Python loop sketch and
  pyprobables' CountMinSketch (same width/depth), plus over-estimation.

Each measurement is the median of ``--repeats`` runs; peers alternate within a
repeat so machine noise hits both. Prints a table, writes
benchmarks/results/bench_structures.json.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import platform
import random
import sys
from pathlib import Path

import numpy as np

from llmds.sketches.cmsketch import CountMinSketch
from llmds.scheduling.indexed_heap import IndexedHeap
from llmds.memory.token_lru import TokenLRU
from llmds.utils import Timer, calculate_statistics
from benchmarks._common import (
    add_out_arg,
    out_path,
    ratio_rule,
    require_bench_extra,
    run_main,
    write_results,
)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_structures.json"


def measure(setups_runs: dict, repeats: int) -> dict[str, dict]:
    """{name: (setup, run)} -> {name: stats of run(setup()) seconds}, peers interleaved."""
    times: dict[str, list[float]] = {name: [] for name in setups_runs}
    for _ in range(repeats):
        for name, (setup, run) in setups_runs.items():
            state = setup()
            with Timer() as t:
                run(state)
            times[name].append(t.elapsed)
    return {name: calculate_statistics(ts) for name, ts in times.items()}


# ------------------------------------------------------------------ TokenLRU


def bench_token_lru(n_ops: int, repeats: int) -> list[dict]:
    from cachetools import LRUCache

    rng = random.Random(0)
    n_keys = max(1000, n_ops // 4)
    pool = ["x" * rng.randint(1, 64) for _ in range(1000)]
    keys = [rng.randrange(n_keys) for _ in range(n_ops)]
    values = [pool[rng.randrange(1000)] for _ in range(n_ops)]
    budget = n_keys * 32 // 4  # about a quarter of the key space fits: evictions are frequent
    gets = [rng.randrange(n_keys) for _ in range(n_ops)]

    def put_all(put):
        for k, v in zip(keys, values, strict=True):
            put(k, v)

    def filled_ours():
        c = TokenLRU(budget, len)
        put_all(c.put)
        return c

    def filled_ref():
        c = LRUCache(maxsize=budget, getsizeof=len)
        put_all(c.__setitem__)
        return c

    put = measure(
        {
            "llmds": (lambda: TokenLRU(budget, len), lambda c: put_all(c.put)),
            "cachetools": (
                lambda: LRUCache(maxsize=budget, getsizeof=len),
                lambda c: put_all(c.__setitem__),
            ),
        },
        repeats,
    )

    def get_all(cache):
        g = cache.get
        for k in gets:
            g(k)

    get = measure({"llmds": (filled_ours, get_all), "cachetools": (filled_ref, get_all)}, repeats)
    ours, ref = filled_ours(), filled_ref()
    hits = sum(k in ours for k in gets) / n_ops
    same = set(ours.keys()) == set(ref.keys())
    rows = []
    for op, res in (("put", put), ("get", get)):
        rows.append(
            row(
                "TokenLRU",
                op,
                n_ops,
                res["llmds"],
                "cachetools.LRUCache",
                res["cachetools"],
                note=f"budget={budget}, hit={hits:.2f}, same keys={same}",
            )
        )
    return rows


# --------------------------------------------------------------- IndexedHeap


class SiftHeap:
    """Hand-written binary heap with a position map (the alternative design)."""

    def __init__(self):
        self.keys: list = []  # heap array of (score, seq, key)
        self.pos: dict = {}
        self.seq = 0

    def _swap(self, i, j):
        a = self.keys
        a[i], a[j] = a[j], a[i]
        self.pos[a[i][2]] = i
        self.pos[a[j][2]] = j

    def _up(self, i):
        a = self.keys
        while i:
            p = (i - 1) >> 1
            if a[i] < a[p]:
                self._swap(i, p)
                i = p
            else:
                break

    def _down(self, i):
        a = self.keys
        n = len(a)
        while True:
            left, best = 2 * i + 1, i
            if left < n and a[left] < a[best]:
                best = left
            if left + 1 < n and a[left + 1] < a[best]:
                best = left + 1
            if best == i:
                return
            self._swap(i, best)
            i = best

    def push(self, key, score):
        self.keys.append((score, self.seq, key))
        self.seq += 1
        self.pos[key] = len(self.keys) - 1
        self._up(len(self.keys) - 1)

    def pop(self):
        a = self.keys
        top = a[0]
        last = a.pop()
        del self.pos[top[2]]
        if a:
            a[0] = last
            self.pos[last[2]] = 0
            self._down(0)
        return top[0], top[2]

    def update(self, key, score):
        i = self.pos[key]
        old = self.keys[i]
        self.keys[i] = (score, old[1], key)
        if score < old[0]:
            self._up(i)
        else:
            self._down(i)


def bench_indexed_heap(n_ops: int, repeats: int) -> list[dict]:
    rng = random.Random(1)
    n_pre = max(1000, n_ops // 20)
    pre = [(k, rng.random()) for k in range(n_pre)]
    ops = []  # (0=push | 1=update | 2=pop, key, score); updates may target popped keys
    nxt = n_pre
    for _ in range(n_ops):
        r = rng.random()
        if r < 0.5:
            ops.append((1, rng.randrange(nxt), rng.random()))
        elif r < 0.75:
            ops.append((0, nxt, rng.random()))
            nxt += 1
        else:
            ops.append((2, None, None))

    def run_ours(h):
        push, pop, update, out = h.push, h.pop, h.update, []
        for op, k, s in ops:
            if op == 1:
                if k in h:
                    update(k, s)
            elif op == 0:
                push(k, s)
            elif h:
                out.append(pop())
        return out

    def setup_ours():
        h = IndexedHeap()
        for k, s in pre:
            h.push(k, s)
        return h

    def setup_lazy():
        heap, index, seq = [], {}, itertools.count()
        for k, s in pre:
            e = [s, next(seq), k]
            index[k] = e
            heapq.heappush(heap, e)
        return heap, index, seq

    removed = object()

    def run_lazy(state):  # the textbook heapq recipe: mark stale, re-push, skip on pop
        heap, index, seq = state
        heappush, heappop, out = heapq.heappush, heapq.heappop, []
        for op, k, s in ops:
            if op == 1:
                e = index.get(k)
                if e is not None:
                    e[2] = removed
                    fresh = [s, e[1], k]
                    index[k] = fresh
                    heappush(heap, fresh)
            elif op == 0:
                e = [s, next(seq), k]
                index[k] = e
                heappush(heap, e)
            else:
                while heap:
                    e = heappop(heap)
                    if e[2] is not removed:
                        del index[e[2]]
                        out.append((e[0], e[2]))
                        break
        return out

    def setup_sift():
        h = SiftHeap()
        for k, s in pre:
            h.push(k, s)
        return h

    def run_sift(h):
        out = []
        for op, k, s in ops:
            if op == 1:
                if k in h.pos:
                    h.update(k, s)
            elif op == 0:
                h.push(k, s)
            elif h.keys:
                out.append(h.pop())
        return out

    same = run_ours(setup_ours()) == run_lazy(setup_lazy()) == run_sift(setup_sift())
    res = measure(
        {
            "llmds": (setup_ours, run_ours),
            "heapq_lazy": (setup_lazy, run_lazy),
            "sift": (setup_sift, run_sift),
        },
        repeats,
    )
    note = f"50% update/25% push/25% pop, {n_pre} preloaded, same pops={same}"
    return [
        row(
            "IndexedHeap",
            "mixed op",
            n_ops,
            res["llmds"],
            "heapq + lazy deletion",
            res["heapq_lazy"],
            note=note,
        ),
        row(
            "IndexedHeap",
            "mixed op",
            n_ops,
            res["llmds"],
            "hand-written sift heap",
            res["sift"],
            note=note,
        ),
    ]


# ------------------------------------------------------------ CountMinSketch


class LoopCMS:
    """Pure-Python baseline: per-item, per-row universal hashing into lists."""

    P = (1 << 61) - 1

    def __init__(self, width, depth, seed=0):
        r = random.Random(seed)
        self.width = width
        self.params = [(r.randrange(1, self.P), r.randrange(self.P)) for _ in range(depth)]
        self.rows = [[0] * width for _ in range(depth)]

    def add_many(self, items):
        P, w = self.P, self.width
        for x in items:
            for (a, b), row_ in zip(self.params, self.rows, strict=True):
                row_[(a * x + b) % P % w] += 1

    def estimate_many(self, items):
        P, w = self.P, self.width
        return [
            min(
                row_[(a * x + b) % P % w]
                for (a, b), row_ in zip(self.params, self.rows, strict=True)
            )
            for x in items
        ]


def bench_cmsketch(n_big: int, n_small: int, repeats: int) -> list[dict]:
    from probables import CountMinSketch as PyProbablesCMS

    width, depth = 2048, 4
    rng = np.random.default_rng(2)
    ints = (rng.zipf(1.2, n_big) % 100_000).astype(np.int64)
    strs = [f"doc-{i}" for i in ints.tolist()]
    small_ints = ints[:n_small].tolist()
    small_strs = strs[:n_small]
    CountMinSketch(width, depth).add_many(ints[:10])  # compile / load the kernels outside timing

    def ours(conservative=False):
        return lambda: CountMinSketch(width, depth, conservative=conservative)

    def filled(items):
        def make():
            c = CountMinSketch(width, depth)
            c.add_many(items)
            return c

        return make

    def filled_loop():
        c = LoopCMS(width, depth)
        c.add_many(small_ints)
        return c

    def filled_pp():
        c = PyProbablesCMS(width=width, depth=depth)
        for s in small_strs:
            c.add(s)
        return c

    def pp_add(c):
        for s in small_strs:
            c.add(s)

    def pp_check(c):
        for s in small_strs:
            c.check(s)

    def single_add(c):
        for s in small_strs:
            c.add(s)

    res = measure(
        {
            "add_int": (ours(), lambda c: c.add_many(ints)),
            "add_int_cu": (ours(True), lambda c: c.add_many(ints)),
            "add_str": (ours(), lambda c: c.add_many(strs)),
            "est_int": (filled(ints), lambda c: c.estimate_many(ints)),
            "est_str": (filled(strs), lambda c: c.estimate_many(strs)),
            "add_one_str": (ours(), single_add),
            "loop_add": (lambda: LoopCMS(width, depth), lambda c: c.add_many(small_ints)),
            "loop_est": (filled_loop, lambda c: c.estimate_many(small_ints)),
            "pp_add": (lambda: PyProbablesCMS(width=width, depth=depth), pp_add),
            "pp_check": (filled_pp, pp_check),
        },
        repeats,
    )

    # accuracy on the same string stream, same width/depth
    uniq, true = np.unique(np.array(small_strs), return_counts=True)
    ours_c = CountMinSketch(width, depth)
    ours_c.add_many(small_strs)
    over_ours = float((ours_c.estimate_many(uniq.tolist()) - true).mean())
    cu = CountMinSketch(width, depth, conservative=True)
    cu.add_many(small_strs)
    over_cu = float((cu.estimate_many(uniq.tolist()) - true).mean())
    pp = filled_pp()
    over_pp = float(np.mean([pp.check(s) for s in uniq.tolist()]) - true.mean())
    acc = (
        f"mean over-count on {len(uniq)} distinct: llmds {over_ours:.1f}, "
        f"conservative {over_cu:.1f}, pyprobables {over_pp:.1f}"
    )

    r = res
    return [
        row(
            "CountMinSketch",
            "add_many int64",
            n_big,
            r["add_int"],
            "Python loop (ints)",
            r["loop_add"],
            n_peer=n_small,
        ),
        row(
            "CountMinSketch",
            "add_many int64 CU",
            n_big,
            r["add_int_cu"],
            "Python loop (ints)",
            r["loop_add"],
            n_peer=n_small,
        ),
        row(
            "CountMinSketch",
            "add_many str",
            n_big,
            r["add_str"],
            "pyprobables add (str)",
            r["pp_add"],
            n_peer=n_small,
            note=acc,
        ),
        row(
            "CountMinSketch",
            "add(str) one by one",
            n_small,
            r["add_one_str"],
            "pyprobables add (str)",
            r["pp_add"],
            n_peer=n_small,
        ),
        row(
            "CountMinSketch",
            "estimate_many int64",
            n_big,
            r["est_int"],
            "Python loop (ints)",
            r["loop_est"],
            n_peer=n_small,
        ),
        row(
            "CountMinSketch",
            "estimate_many str",
            n_big,
            r["est_str"],
            "pyprobables check (str)",
            r["pp_check"],
            n_peer=n_small,
        ),
    ]


# ------------------------------------------------------------------- report


def row(structure, op, n, ours, peer, theirs, n_peer=None, note=""):
    n_peer = n if n_peer is None else n_peer
    ops = n / ours["p50"]
    peer_ops = n_peer / theirs["p50"]
    return {
        "structure": structure,
        "op": op,
        "n": n,
        "llmds_ops_per_s": ops,
        "llmds_median_s": ours["p50"],
        "llmds_cv_pct": ours["cv"],
        "peer": peer,
        "peer_n": n_peer,
        "peer_ops_per_s": peer_ops,
        "peer_median_s": theirs["p50"],
        "peer_cv_pct": theirs["cv"],
        "speed_ratio": ops / peer_ops,
        "note": note,
    }


def print_table(rows):
    head = (
        f"{'structure':<15} {'operation':<22} {'llmds ops/s':>12} {'peer':<26} "
        f"{'peer ops/s':>11} {'ratio':>7}"
    )
    print(ratio_rule("llmds ops/s / peer ops/s") + "; medians over repeats")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['structure']:<15} {r['op']:<22} {r['llmds_ops_per_s']:>12,.0f} {r['peer']:<26} "
            f"{r['peer_ops_per_s']:>11,.0f} {r['speed_ratio']:>6.2f}x"
        )
    notes = dict.fromkeys(f"{r['structure']}: {r['note']}" for r in rows if r["note"])
    for n in notes:
        print("  " + n)


def main(argv=None) -> dict:
    require_bench_extra("cachetools", "probables")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, smoke run")
    ap.add_argument("--repeats", type=int, default=5)
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.quick:
        n_lru, n_heap, n_big, n_small = 20_000, 20_000, 100_000, 3_000
    else:
        n_lru, n_heap, n_big, n_small = 200_000, 200_000, 1_000_000, 30_000
    rows = bench_token_lru(n_lru, args.repeats)
    rows += bench_indexed_heap(n_heap, args.repeats)
    rows += bench_cmsketch(n_big, n_small, args.repeats)
    print_table(rows)
    result = {
        "meta": {
            "quick": args.quick,
            "repeats": args.repeats,
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "rows": rows,
    }
    write_results(out_path(args, RESULTS), result)
    return result


if __name__ == "__main__":
    run_main(main)
