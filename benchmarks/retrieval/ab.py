"""A/B of the retrieval search hot paths against another version of llmds, in one process.

``--baseline SRC`` is the ``src`` folder of another checkout (for example
``git archive <commit> src | tar -x -C /tmp/base``).  Both versions are imported
side by side (the baseline's ``llmds`` under its own module objects), built on
the same data, checked to return the same results, and timed in interleaved
rounds (median per round):

* ``InvertedIndex.search`` (one query per call) and ``search_many`` (all
  queries in one call), 200,000 Zipf documents (``--quick``: 20,000), ``rare``
  and ``zipf`` query sets (``benchmarks.retrieval.lexical.make_zipf_corpus``);
* ``HNSW.search`` and ``search_batch`` (k=10, ef=50), 50,000 x 128 clustered
  vectors (``--quick``: 10,000), 1,000 queries.

Ratio = baseline seconds / this version's seconds: > 1 means this version is faster.
Run ``python -m benchmarks.retrieval.ab --baseline /tmp/base/src [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import ratio_rule, write_results

RESULTS = Path(__file__).resolve().parents[1] / "results" / "retrieval_ab.json"


def _import_version(src: str | None):
    """``(InvertedIndex, HNSW)`` from ``src`` (None: the installed llmds), isolated modules."""
    for m in [m for m in sys.modules if m == "llmds" or m.startswith("llmds.")]:
        del sys.modules[m]
    if src:
        sys.path.insert(0, src)
    try:
        ii = importlib.import_module("llmds.inverted_index").InvertedIndex
        hn = importlib.import_module("llmds.hnsw").HNSW
    finally:
        if src:
            sys.path.remove(src)
    return ii, hn


def _interleaved(fns: dict, rounds: int) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm up
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def run_ab(baseline: str, quick: bool = False, rounds: int = 7) -> dict:
    from benchmarks.retrieval.lexical import make_zipf_corpus

    versions = {"baseline": _import_version(baseline), "this": _import_version(None)}
    n_docs = 20_000 if quick else 200_000
    data = make_zipf_corpus(n_docs, n_queries=1000)
    out: dict = {"benchmark": "retrieval_ab", "quick": quick, "baseline": baseline,
                 "lexical": {}, "dense": {}}
    idx = {}
    for name, (ii, _) in versions.items():
        t = time.perf_counter()
        idx[name] = ii()
        idx[name].add_documents(enumerate(data["texts"]))
        idx[name].search("warm up")
        out["lexical"][f"build_s_{name}"] = time.perf_counter() - t
    for qname, qs in data["queries"].items():
        qs = [" ".join(q) for q in qs]
        a = idx["baseline"].search_many(qs)
        b = idx["this"].search_many(qs)
        same = [[d for d, _ in r] for r in a] == [[d for d, _ in r] for r in b]
        fns = {}
        for name, ix in idx.items():
            fns[f"{name}/search"] = lambda ix=ix: [ix.search(q) for q in qs]
            fns[f"{name}/search_many"] = lambda ix=ix: ix.search_many(qs)
        med = _interleaved(fns, rounds)
        out["lexical"][qname] = {"same_ids": same, **{
            f"{m}_qps_{name}": len(qs) / med[f"{name}/{m}"] for name in idx
            for m in ("search", "search_many")},
            **{f"{m}_ratio": med[f"baseline/{m}"] / med[f"this/{m}"]
               for m in ("search", "search_many")}}
    del idx
    rng = np.random.default_rng(0)
    n, dim = (10_000, 128) if quick else (50_000, 128)
    centers = rng.standard_normal((100, dim)).astype(np.float32) * 4
    X = (centers[rng.integers(0, 100, n)] + rng.standard_normal((n, dim))).astype(np.float32)
    Q = (centers[rng.integers(0, 100, 1000)] + rng.standard_normal((1000, dim))).astype(np.float32)
    hs = {}
    for name, (_, hn) in versions.items():
        t = time.perf_counter()
        hs[name] = hn(dim, M=16, ef_construction=200, ef_search=50, seed=0)
        hs[name].add_items(X)
        out["dense"][f"build_s_{name}"] = time.perf_counter() - t
    same = np.array_equal(hs["baseline"].search_batch(Q, 10)[0], hs["this"].search_batch(Q, 10)[0])
    fns = {}
    for name, h in hs.items():
        fns[f"{name}/search"] = lambda h=h: [h.search(q, 10) for q in Q]
        fns[f"{name}/search_batch"] = lambda h=h: h.search_batch(Q, 10)
    med = _interleaved(fns, rounds)
    out["dense"].update({"vectors": n, "dim": dim, "same_ids": bool(same), **{
        f"{m}_qps_{name}": len(Q) / med[f"{name}/{m}"] for name in hs
        for m in ("search", "search_batch")},
        **{f"{m}_ratio": med[f"baseline/{m}"] / med[f"this/{m}"] for m in ("search", "search_batch")}})
    return out


def format_table(res: dict) -> str:
    lines = [f"\n== search hot paths, this version vs {res['baseline']} ("
             + ratio_rule("baseline seconds / this version's seconds", "this version") + ")"]
    for q in ("rare", "zipf"):
        r = res["lexical"][q]
        for m in ("search", "search_many"):
            lines.append(f"InvertedIndex.{m:<12} {q:<5} baseline {r[f'{m}_qps_baseline']:>9,.0f} q/s  "
                         f"this {r[f'{m}_qps_this']:>9,.0f} q/s  ratio {r[f'{m}_ratio']:.2f}  "
                         f"same results: {r['same_ids']}")
    d = res["dense"]
    for m in ("search", "search_batch"):
        lines.append(f"HNSW.{m:<13} {d['vectors']}x{d['dim']} baseline {d[f'{m}_qps_baseline']:>9,.0f} q/s  "
                     f"this {d[f'{m}_qps_this']:>9,.0f} q/s  ratio {d[f'{m}_ratio']:.2f}  "
                     f"same results: {d['same_ids']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="src folder of the other llmds version")
    ap.add_argument("--quick", action="store_true", help="smaller corpora")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    res = run_ab(args.baseline, args.quick, args.rounds)
    print(format_table(res))
    out = args.out or (RESULTS.parent / "quick" / RESULTS.name if args.quick else RESULTS)
    write_results(out, res)
    return res


if __name__ == "__main__":
    main()
