"""KVCache benchmark: per-operation latency percentiles and pages saved by prefix sharing.

Two workloads, each run ``repeats`` times (percentiles are medians over repeats):

* **unique**: ``num_sequences`` sequences of ``tokens_per_seq`` random token ids,
  attached, read back (``get``) and detached one by one.  Peer: a naive cache,
  a dict of lists (no paging; copies on attach and on get), run side by side.
* **shared**: the same sizes, but 50% of the sequences start with one of
  ``num_prefixes`` shared prefixes of ``tokens_per_seq // 2`` tokens, passed
  as ``prefix_tokens``.  Peer: the same ``KVCache`` with
  ``enable_prefix_sharing=False``.  Reports pages in use once every sequence
  is attached, with and without sharing.

Token lists are generated before timing; each operation is timed with
``perf_counter_ns``; the garbage collector is paused while timing (as
``timeit`` does) for every peer alike; peers alternate which goes first.

Run ``python -m benchmarks.bench_kv_cache [--quick]``; writes
``benchmarks/results/bench_kv_cache.json`` (``--quick``: ``results/quick/``).
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np

from llmds.memory.kv_cache import KVCache
from llmds.utils import MemoryProfiler, compute_percentiles
from benchmarks._common import add_out_arg, out_path, ratio_rule, run_main, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "bench_kv_cache.json"
OPS = ("attach", "get", "detach")


class NaiveKVCache:
    """Peer: a dict of lists; attach and get copy (as a safe cache must), no paging."""

    __slots__ = ("_seqs",)

    def __init__(self) -> None:
        self._seqs: dict[int, list] = {}

    def attach(self, seq_id: int, kv_tokens: list, prefix_tokens: list | None = None) -> None:
        self._seqs[seq_id] = list(kv_tokens)

    def get(self, seq_id: int) -> list | None:
        s = self._seqs.get(seq_id)
        return None if s is None else list(s)

    def detach(self, seq_id: int) -> None:
        self._seqs.pop(seq_id, None)


def _workload(num_sequences: int, tokens_per_seq: int, shared: bool, num_prefixes: int,
              seed: int) -> list[tuple[list, list | None]]:
    """[(kv_tokens, prefix_tokens or None)]; shared: every other sequence carries a prefix."""
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, 50_000, size=(num_sequences, tokens_per_seq)).tolist()
    if not shared:
        return [(t, None) for t in toks]
    plen = tokens_per_seq // 2
    prefixes = rng.integers(0, 50_000, size=(num_prefixes, plen)).tolist()
    out = []
    for i, t in enumerate(toks):
        if i % 2 == 0:
            pre = prefixes[(i // 2) % num_prefixes]
            out.append((pre + t[plen:], pre))
        else:
            out.append((t, None))
    return out


def _run_once(cache, work, mem: MemoryProfiler) -> tuple[dict[str, list[float]], int | None]:
    """Time every attach, get and detach (ms); pages allocated when all are attached."""
    lat = {op: [] for op in OPS}
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        la = lat["attach"]
        for i, (kv, pre) in enumerate(work):
            t0 = clock()
            cache.attach(i, kv, pre)
            la.append(clock() - t0)
        mem.sample()
        pages = cache.stats()["allocated_pages"] if isinstance(cache, KVCache) else None
        lg = lat["get"]
        for i in range(len(work)):
            t0 = clock()
            cache.get(i)
            lg.append(clock() - t0)
        ld = lat["detach"]
        for i in range(len(work)):
            t0 = clock()
            cache.detach(i)
            ld.append(clock() - t0)
    finally:
        gc.enable()
    return {op: [v / 1e6 for v in vals] for op, vals in lat.items()}, pages


def _summarize(runs: list[dict[str, list[float]]]) -> dict[str, float]:
    out = {}
    for op in OPS:
        pcts = [compute_percentiles(r[op]) for r in runs]
        for q in ("p50", "p95", "p99"):
            out[f"{op}_{q}_ms"] = median(p[q] for p in pcts)
    return out


def benchmark_kv_cache(num_sequences: int = 1000, tokens_per_seq: int = 1000,
                       page_size: int = 512, repeats: int = 5, num_prefixes: int = 8,
                       seed: int = 0) -> dict:
    """Latency percentiles of KVCache vs a dict-of-lists peer, and prefix-sharing savings.

    Returns a dict with ``attach_p50_ms`` .. ``detach_p99_ms`` (KVCache, unique
    workload), ``peak_rss_mb``, ``naive`` (the peer's percentiles),
    ``peer_over_llmds_p50`` (naive p50 / KVCache p50: > 1 means KVCache is faster),
    and ``shared_prefix`` (sharing on vs off: percentiles, ``off_over_on_p50`` (> 1
    means sharing is faster), ``pages_with_sharing``, ``pages_without_sharing``,
    ``pages_saved``).
    """
    ppseq = math.ceil((tokens_per_seq // 2) / page_size) + math.ceil(tokens_per_seq / page_size) + 1
    max_pages = num_sequences * ppseq + num_prefixes
    unique = _workload(num_sequences, tokens_per_seq, False, num_prefixes, seed)
    shared = _workload(num_sequences, tokens_per_seq, True, num_prefixes, seed + 1)
    mem = MemoryProfiler()
    mem.start()
    peers = {
        "kv_cache": lambda: KVCache(page_size, max_pages, True),
        "naive": NaiveKVCache,
        "shared_on": lambda: KVCache(page_size, max_pages, True),
        "shared_off": lambda: KVCache(page_size, max_pages, False),
    }
    runs: dict[str, list] = {k: [] for k in peers}
    pages: dict[str, list] = {k: [] for k in peers}
    for r in range(repeats):
        for pair, work in ((("kv_cache", "naive"), unique), (("shared_on", "shared_off"), shared)):
            order = pair if r % 2 == 0 else pair[::-1]
            for name in order:
                lat, n = _run_once(peers[name](), work, mem)
                runs[name].append(lat)
                pages[name].append(n)
    res = _summarize(runs["kv_cache"])
    naive = _summarize(runs["naive"])
    on, off = _summarize(runs["shared_on"]), _summarize(runs["shared_off"])
    with_s, without_s = pages["shared_on"][0], pages["shared_off"][0]
    res.update(
        peak_rss_mb=mem.get_peak_rss_mb(),
        naive=naive,
        peer_over_llmds_p50={op: naive[f"{op}_p50_ms"] / res[f"{op}_p50_ms"] for op in OPS},
        shared_prefix={
            "sharing_on": on,
            "sharing_off": off,
            "off_over_on_p50": {op: off[f"{op}_p50_ms"] / on[f"{op}_p50_ms"] for op in OPS},
            "pages_with_sharing": with_s,
            "pages_without_sharing": without_s,
            "pages_saved": without_s - with_s,
            "pages_saved_pct": 100.0 * (without_s - with_s) / without_s,
            "shared_fraction": 0.5,
            "prefix_tokens": tokens_per_seq // 2,
            "num_prefixes": num_prefixes,
        },
        config={
            "num_sequences": num_sequences,
            "tokens_per_seq": tokens_per_seq,
            "page_size": page_size,
            "max_pages": max_pages,
            "repeats": repeats,
            "seed": seed,
            "python": sys.version.split()[0],
            "machine": platform.machine(),
        },
    )
    return res


def _table(res: dict) -> str:
    lines = []
    cfg = res["config"]
    lines.append(
        f"KVCache benchmark: {cfg['num_sequences']} sequences x {cfg['tokens_per_seq']} tokens, "
        f"page_size {cfg['page_size']}, medians over {cfg['repeats']} repeats (ms per op)"
    )
    hdr = f"{'op':<8}{'p50':>10}{'p95':>10}{'p99':>10} | {'peer p50':>10}{'p95':>10}{'p99':>10} | {'ratio':>9}"
    lines += ["", "unique sequences: KVCache vs naive dict-of-lists; "
              + ratio_rule("naive p50 / KVCache p50"), hdr, "-" * len(hdr)]
    nv = res["naive"]
    for op in OPS:
        lines.append(
            f"{op:<8}" + "".join(f"{res[f'{op}_{q}_ms']:>10.4f}" for q in ("p50", "p95", "p99"))
            + " | " + "".join(f"{nv[f'{op}_{q}_ms']:>10.4f}" for q in ("p50", "p95", "p99"))
            + f" | {res['peer_over_llmds_p50'][op]:>8.2f}x"
        )
    sp = res["shared_prefix"]
    lines += ["", f"50% of sequences share one of {sp['num_prefixes']} prefixes of "
              f"{sp['prefix_tokens']} tokens: sharing on vs off; "
              + ratio_rule("sharing-off p50 / sharing-on p50", "sharing (llmds)"), hdr, "-" * len(hdr)]
    on, off = sp["sharing_on"], sp["sharing_off"]
    for op in OPS:
        lines.append(
            f"{op:<8}" + "".join(f"{on[f'{op}_{q}_ms']:>10.4f}" for q in ("p50", "p95", "p99"))
            + " | " + "".join(f"{off[f'{op}_{q}_ms']:>10.4f}" for q in ("p50", "p95", "p99"))
            + f" | {sp['off_over_on_p50'][op]:>8.2f}x"
        )
    lines += [
        "",
        f"pages in use: {sp['pages_with_sharing']} with sharing, {sp['pages_without_sharing']} without "
        f"-> {sp['pages_saved']} saved ({sp['pages_saved_pct']:.1f}%)",
        f"peak RSS: {res['peak_rss_mb']:.1f} MiB",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 sequences, 2 repeats")
    ap.add_argument("--num-sequences", type=int, default=1000)
    ap.add_argument("--tokens-per-seq", type=int, default=1000)
    ap.add_argument("--page-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.num_sequences, args.repeats = 200, 2
    res = benchmark_kv_cache(args.num_sequences, args.tokens_per_seq, args.page_size, args.repeats)
    print(_table(res))
    write_results(out_path(args, RESULTS), res)
    return res


if __name__ == "__main__":
    run_main(main)
