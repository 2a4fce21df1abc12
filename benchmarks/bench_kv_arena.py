"""TensorKVCache (block arena) vs naive per-request ``torch.cat`` growth.

Costs of alloc / write / append / view / free.

Both sides run the same seeded workload with SmolLM2-135M's KV shape (30
layers, 3 KV heads, head_dim 64, fp32):

* ``batch``: R requests are admitted (prompt lengths uniform in
  [prompt_min, prompt_max]), their prompts written, then T decode steps in
  which every request appends one token, writes its K/V in every layer and
  reads its K/V views in every layer (what attention does); then all are freed.
* ``long``: one request with a long prompt decodes T tokens (``torch.cat``
  copies the whole context per token: O(context) per step).
* ``scattered view``: views of a request whose blocks are not one run
  (gathered copies), against the zero-copy view of the same length.

Costs are per operation (per request for alloc/free, per token for decode, all
layers for write/view), median over repeats.  Run::

    python -m benchmarks.bench_kv_arena [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from llmds.kv_arena.arena import TensorKVCache
from benchmarks._common import add_out_arg, out_path, ratio_rule, run_main, write_results

L, H, D, BS = 30, 3, 64, 16  # SmolLM2-135M KV shape, block size 16
RESULTS = Path(__file__).resolve().parent / "results" / "bench_kv_arena.json"
OPS = ("alloc", "prefill write", "decode append+write", "view", "kv_views", "free")


class _Timer:
    """Accumulates ns per op name over one repeat."""

    def __init__(self):
        self.ns = dict.fromkeys(OPS, 0)
        self.n = dict.fromkeys(OPS, 0)

    def add(self, op, t0, count=1):
        self.ns[op] += time.perf_counter_ns() - t0
        self.n[op] += count

    def per_op_us(self):
        return {op: self.ns[op] / self.n[op] / 1e3 for op in OPS if self.n[op]}


def _kv(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, H, D, generator=g), torch.randn(n, H, D, generator=g)


def run_arena(prompts, decode, total_tokens):
    cache = TensorKVCache(L, H, D, total_tokens, block_size=BS)
    cache.warmup()
    tm, now = _Timer(), time.perf_counter_ns
    ids = range(len(prompts))
    for r, p in zip(ids, prompts, strict=True):
        t0 = now()
        ok = cache.allocate_for(r, p, max_tokens=p + decode)
        tm.add("alloc", t0)
        assert ok, "arena too small for the workload"
        k, v = _kv(p, r)
        t0 = now()
        for layer in range(L):
            cache.write(r, layer, range(p), k, v)
        tm.add("prefill write", t0)
    k1, v1 = _kv(1, -1)
    for _ in range(decode):
        for r in ids:
            t0 = now()
            cache.append_token(r)
            pos = cache.used_tokens(r) - 1
            for layer in range(L):
                cache.write(r, layer, pos, k1, v1)
            tm.add("decode append+write", t0)
            t0 = now()
            for layer in range(L):
                cache.k_view(r, layer)
                cache.v_view(r, layer)
            tm.add("view", t0)
            t0 = now()
            cache.kv_views(r)  # every layer's K and V in one op each
            tm.add("kv_views", t0)
    contiguous = cache.stats().contiguous_sequences / max(1, len(cache))
    for r in ids:
        t0 = now()
        cache.free_for(r)
        tm.add("free", t0)
    return tm.per_op_us(), contiguous


def run_naive(prompts, decode):
    tm, now = _Timer(), time.perf_counter_ns
    ks: dict[int, list[torch.Tensor]] = {}
    vs: dict[int, list[torch.Tensor]] = {}
    ids = range(len(prompts))
    for r, p in zip(ids, prompts, strict=True):
        t0 = now()
        ks[r] = [torch.empty(p, H, D) for _ in range(L)]
        vs[r] = [torch.empty(p, H, D) for _ in range(L)]
        tm.add("alloc", t0)
        k, v = _kv(p, r)
        t0 = now()
        for layer in range(L):
            ks[r][layer].copy_(k)
            vs[r][layer].copy_(v)
        tm.add("prefill write", t0)
    k1, v1 = _kv(1, -1)
    for _ in range(decode):
        for r in ids:
            t0 = now()
            kl, vl = ks[r], vs[r]
            for layer in range(L):
                kl[layer] = torch.cat([kl[layer], k1])
                vl[layer] = torch.cat([vl[layer], v1])
            tm.add("decode append+write", t0)
            t0 = now()
            for layer in range(L):
                ks[r][layer]
                vs[r][layer]
            tm.add("view", t0)
            t0 = now()
            for layer in range(L):  # the naive layout has no all-layer tensor: same lookups
                ks[r][layer]
                vs[r][layer]
            tm.add("kv_views", t0)
    for r in ids:
        t0 = now()
        del ks[r], vs[r]
        tm.add("free", t0)
    return tm.per_op_us()


def scattered_view_us(tokens, repeats):
    """All-layer K+V view cost of a request with scattered blocks vs a contiguous one."""
    nb = -(-tokens // BS)
    cache = TensorKVCache(L, H, D, 3 * nb * BS, block_size=BS)
    cache.warmup()
    cache.allocate_for("contiguous", tokens)  # blocks [0, nb)
    for i in range(2 * nb):  # one-block requests, then free every other one: no free run of 2
        cache.allocate_for(("f", i), BS)
    for i in range(0, 2 * nb, 2):
        cache.free_for(("f", i))
    cache.allocate_for("scattered", tokens)
    assert not cache.view_is_contiguous("scattered") and cache.view_is_contiguous("contiguous")
    out = {}
    for rid in ("contiguous", "scattered"):
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for layer in range(L):
                cache.k_view(rid, layer)
                cache.v_view(rid, layer)
            samples.append((time.perf_counter_ns() - t0) / 1e3)
        out[rid] = statistics.median(samples)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny workload, 1 repeat")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt-min", type=int, default=32)
    ap.add_argument("--prompt-max", type=int, default=192)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--long-prompt", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.decode, args.long_prompt, args.repeats = 4, 8, 256, 1
    args.out = out_path(args, RESULTS)
    torch.set_num_threads(1)  # small copies: threads only add noise on a shared machine
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(args.prompt_min, args.prompt_max + 1, size=args.requests).tolist()
    scenarios = {
        "batch": (prompts, args.decode, args.requests * (args.prompt_max + args.decode)),
        "long": ([args.long_prompt], args.decode, args.long_prompt + args.decode),
    }
    results, contiguous = {}, {}
    for name, (ps, dec, total) in scenarios.items():
        arena_runs, naive_runs = [], []
        for _ in range(args.repeats):  # interleaved so machine noise hits both sides alike
            a, contiguous[name] = run_arena(ps, dec, total)
            arena_runs.append(a)
            naive_runs.append(run_naive(ps, dec))
        results[name] = {
            op: {
                "arena_us": statistics.median(r[op] for r in arena_runs),
                "naive_us": statistics.median(r[op] for r in naive_runs),
            }
            for op in OPS
        }
        for row in results[name].values():
            row["naive_over_arena"] = row["naive_us"] / row["arena_us"]
    sv = scattered_view_us(max(args.prompt_max, BS * 4), max(5, args.repeats * 5))

    print(
        f"KV arena vs naive torch.cat growth  (L={L} H={H} D={D} bs={BS} fp32, "
        f"{args.requests} requests, prompts {args.prompt_min}-{args.prompt_max}, "
        f"decode {args.decode}, "
        f"long prompt {args.long_prompt}, median of {args.repeats}); "
        + ratio_rule("naive us / arena us")
    )
    print(
        f"{'scenario':<9} {'op (per unit)':<42} {'arena us':>10} {'naive us':>10} "
        f"{'ratio':>12}"
    )
    units = {
        "alloc": "request",
        "prefill write": "request, all layers",
        "decode append+write": "token, all layers",
        "view": "token, all layers K+V",
        "kv_views": "token, all layers K+V, one op",
        "free": "request",
    }
    for name, rows in results.items():
        for op, row in rows.items():
            print(
                f"{name:<9} {op + ' (' + units[op] + ')':<42} {row['arena_us']:>10.1f} "
                f"{row['naive_us']:>10.1f} {row['naive_over_arena']:>11.2f}x"
            )
    print(
        f"zero-copy requests at end of decode: batch {contiguous['batch']:.0%}, "
        f"long {contiguous['long']:.0%}"
    )
    print(
        f"all-layer K+V view, {max(args.prompt_max, BS * 4)} tokens: "
        f"contiguous {sv['contiguous']:.1f} us, "
        f"scattered (gathered copy) {sv['scattered']:.1f} us "
        f"({sv['scattered'] / sv['contiguous']:.1f}x)"
    )

    payload = {
        "benchmark": "bench_kv_arena",
        "config": {
            "num_layers": L,
            "num_kv_heads": H,
            "head_dim": D,
            "block_size": BS,
            "dtype": "float32",
            **{k: v for k, v in vars(args).items() if k != "out"},  # no machine path in the results
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "units": units,
        "results": results,
        "zero_copy_fraction": contiguous,
        "scattered_view_us": sv,
    }
    write_results(args.out, payload)
    return payload


if __name__ == "__main__":
    run_main(main)
