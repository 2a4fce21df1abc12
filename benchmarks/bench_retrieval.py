"""All retrieval benchmarks in one run: lexical (BM25), dense (HNSW), hybrid, fusion, updates.

Calls ``run_<part>`` from ``benchmarks.retrieval_<part>`` for the parts
lexical, dense, hybrid, fusion (which fusion to ship, both collections) and
updates (single adds between searches, the pipeline lock) (each with ``quick``), prints
each part's table (its module's ``format_table``) and writes one JSON file,
``benchmarks/results/bench_retrieval.json``, keyed by part.  A part that fails
is reported (error and traceback in the JSON) and the others still run; the
exit status is 1 if any part failed.  A part whose IR collections are missing
(``$LLMDS_DATA_DIR``, default ``../shared/data``) is skipped with that note, and
lexical and dense then run their synthetic workloads only.

Usage::

    python -m benchmarks.bench_retrieval [--quick] [--only lexical,dense,...] [--updates] [--out PATH]

``--updates`` is ``--only updates``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import time
import traceback
from pathlib import Path
from benchmarks.retrieval.ir_data import MissingData
from benchmarks._common import (
    add_out_arg,
    missing_bench_extra,
    out_path,
    require_bench_extra,
    run_main,
    write_results,
)

PARTS = {  # part -> (module, runner)
    "lexical": ("benchmarks.retrieval.lexical", "run_lexical"),
    "dense": ("benchmarks.retrieval.dense", "run_dense"),
    "hybrid": ("benchmarks.retrieval.hybrid", "run_hybrid"),
    "fusion": ("benchmarks.retrieval.fusion", "run_fusion"),
    "updates": ("benchmarks.retrieval.updates", "run_updates"),
}
RESULTS = Path(__file__).resolve().parent / "results" / "bench_retrieval.json"


def run_all(quick: bool = False, only: list[str] | None = None, verbose: bool = True) -> dict:
    """Run the selected parts in order; returns ``{part: result dict or {"error": ...}}``."""
    out: dict = {"benchmark": "bench_retrieval", "quick": quick, "parts": {}}
    for part in only or list(PARTS):
        module_name, runner = PARTS[part]
        t = time.perf_counter()
        try:
            module = importlib.import_module(module_name)
            fn = getattr(module, runner)
            kwargs = {"verbose": verbose} if "verbose" in inspect.signature(fn).parameters else {}
            res = fn(quick=quick, **kwargs)
            table = module.format_table(res) if hasattr(module, "format_table") else None
        except MissingData as exc:  # not broken: its data is not on this machine
            res, table = {"skipped": str(exc)}, f"\n== {part}: skipped: {exc}"
        except Exception as exc:  # report and keep going: one broken part must not hide the others
            if missing_bench_extra(exc):
                raise  # not a broken part: the peers are not installed (run_main says so)
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            table = f"\n== {part}: FAILED: {res['error']}"
        res["wall_seconds"] = time.perf_counter() - t
        out["parts"][part] = res
        if verbose:
            print(
                table if table is not None else json.dumps(res, indent=2, default=str), flush=True
            )
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    require_bench_extra("bm25s", "rank_bm25", "tantivy", "hnswlib", "faiss")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run of every part")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts (default: all)")
    ap.add_argument("--updates", action="store_true", help="only the updates part")
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    only = ["updates"] if args.updates else [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in only if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    res = run_all(quick=args.quick, only=only)
    write_results(out_path(args, RESULTS), res)
    failed = [p for p, r in res["parts"].items() if "error" in r]
    if failed:
        print(f"FAILED parts: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
