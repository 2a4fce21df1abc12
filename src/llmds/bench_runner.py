"""``llmds bench``: run the benchmarks of a source checkout, then plot their JSON with matplotlib.

Plots (PNG, beside the JSON in ``plots/``): server throughput vs concurrent clients and latency
percentiles; engine throughput vs batch size (when its benchmark is present); retrieval recall@10
vs queries/s (dense, MS MARCO); the hybrid default's dense share per query against which side won
it, per collection; llmds/peer speed ratios of the structures.  Benchmarks run as
``python -m benchmarks.<module>`` from the checkout's root, so they are the same programs
``make bench`` runs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from llmds.errors import StateError, ValidationError

__all__ = ["BENCHMARKS", "run_benchmarks", "plot_results"]

log = logging.getLogger(__name__)

BENCHMARKS = {
    "structures": ["bench_structures"],
    "kv": ["bench_kv_cache", "bench_kv_arena"],
    "planner": ["bench_planner"],
    "retrieval": ["bench_retrieval"],
    "engine": ["bench_engine", "bench_parallel"],
    "server": ["bench_server", "bench_bursts"],
    "ui": ["bench_ui"],
    "routing": ["bench_routing"],
    "structured": ["bench_structured"],
}


def checkout_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "_common.py").is_file():
        raise StateError("`llmds bench` runs the benchmarks of a source checkout; none was found beside "
                         f"this installation ({root})")
    return root


def run_benchmarks(which: list[str], args: list[str]) -> int:
    """Run the named benchmark groups (all when empty) and plot what they wrote; the worst exit status.

    Fails at once (``StateError``, one line) when the ``bench`` extra is missing: every benchmark
    compares against its peers."""
    import importlib.util
    import time

    unknown = [w for w in which if w not in BENCHMARKS]
    if unknown:
        raise ValidationError(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    root = checkout_root()
    common = _benchmarks_common(root)
    missing = sorted(m for m in common.BENCH_EXTRA_MODULES if importlib.util.find_spec(m) is None)
    if missing:
        raise StateError(f"the benchmarks need the `bench` extra (missing: {', '.join(missing)}): "
                         f"{common.INSTALL_HINT}")
    status = 0
    started = time.time()
    for group in which or list(BENCHMARKS):
        for module in BENCHMARKS[group]:
            if not (root / "benchmarks" / f"{module}.py").is_file():
                sys.stderr.write(f"llmds bench: {module} is not in this checkout; skipped\n")
                continue
            rc = subprocess.call([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=root)
            status = max(status, rc)
    quick = "--quick" in args
    results = root / "benchmarks" / "results" / ("quick" if quick else "")
    if importlib.util.find_spec("matplotlib") is None:
        sys.stderr.write("llmds bench: no plots: they need matplotlib (pip install -e '.[viz]')\n")
        return status
    for png in plot_results(results, since=started):
        sys.stdout.write(f"plot: {png}\n")
    return status


def _benchmarks_common(root: Path):
    """The checkout's ``benchmarks/_common.py`` (standard library only): the `bench` extra's modules."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_llmds_benchmarks_common", root / "benchmarks" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plot_results(results: Path, since: float = 0.0,
                 only: tuple[str, ...] | None = None) -> list[Path]:
    """Every plot the JSON files in ``results`` written at or after ``since`` (a ``time.time()``)
    allow (``only``: of these file stems); returns the PNG paths written."""
    import matplotlib

    matplotlib.use("Agg")
    out = results / "plots"
    written: list[Path] = []
    for name, fn in (("bench_server", _server), ("bench_engine", _engine), ("bench_retrieval", _retrieval),
                     ("retrieval_fusion", _fusion), ("bench_structures", _structures)):
        path = results / f"{name}.json"
        if (not path.is_file() or path.stat().st_mtime < since
                or (only is not None and name not in only)):
            continue
        try:
            written += fn(json.loads(path.read_text()), out)
        except (KeyError, TypeError, ValueError) as exc:  # an older or different result layout
            log.warning("cannot plot %s: %s", path, exc)
    return written


def _save(fig, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _server(r: dict, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in r["servers"].items():
        levels = sorted(s.get("levels", {}), key=int)
        if levels:
            ax.plot([int(n) for n in levels], [s["levels"][n]["tok_s"] for n in levels], marker="o", label=name)
    ax.set(xlabel="concurrent streaming clients", ylabel="output tokens/s", title="throughput vs clients")
    ax.legend()
    paths = [_save(fig, out, "server_throughput")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    names = [n for n, s in r["servers"].items() if s.get("levels")]
    for ax, metric in zip(axes, ("ttft", "itl")):
        for j, name in enumerate(names):
            top = r["servers"][name]["levels"][max(r["servers"][name]["levels"], key=int)]
            ax.bar([j - 0.2, j + 0.2], [top[f"{metric}_p50_ms"], top[f"{metric}_p99_ms"]], width=0.4,
                   color=["C0", "C1"])
        ax.set_xticks(range(len(names)), names)
        ax.set(ylabel="ms", title=f"{metric.upper()} p50 / p99 at {max(r['clients'])} clients", yscale="log")
    paths.append(_save(fig, out, "server_latency"))
    return paths


def _engine(r: dict, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    engines = {name: e for name, e in r["engines"].items() if "offline" in e}
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(engines)
    ax.barh(names, [engines[n]["offline"]["tok_s"] for n in names])
    n = r.get("workload", {}).get("requests", "?")
    ax.set(xlabel="output tokens/s", title=f"engines, {n} chat requests at once")
    return [_save(fig, out, "engine_throughput")]


def _retrieval(r: dict, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fusion = r["parts"].get("fusion", {})
    paths = _fusion(fusion, out) if "table" in fusion else []
    dense = r["parts"].get("dense", {})
    data = next((dense[k] for k in ("msmarco", "synthetic") if "rows" in dense.get(k, {})), None)
    if data is None:  # the part was skipped or failed
        return paths
    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for lib in sorted({row["library"] for row in rows}):
        pts = [(row["recall_at_10"], row["single_qps"]) for row in sorted(rows, key=lambda x: x["ef_search"])
               if row["library"] == lib]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lib)
    ax.set(xlabel="recall@10", ylabel="queries/s (single query)", title=f"HNSW recall vs QPS ({data['n']:,} vectors)",
           yscale="log")
    ax.legend()
    return [*paths, _save(fig, out, "retrieval_recall_qps")]


def _fusion(r: dict, out: Path) -> list[Path]:
    """One panel per collection: each query's dense share under the default fusion against
    nDCG@10 dense minus BM25 (blue: dense won, red: BM25 won), the mean share dashed."""
    import matplotlib.pyplot as plt

    names = list(r["table"])
    cols = 4
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.5 * nrows), sharey=True, squeeze=False)
    for ax, name in zip(axes.flat, names):
        t = r["table"][name]
        x = t["dense_minus_bm25"]
        ax.scatter(x, t["weights"], s=9,
                   c=["tab:blue" if v > 0 else "tab:red" if v < 0 else "0.6" for v in x])
        ax.axhline(t["mean_weight"], color="k", lw=0.8, ls="--")
        ax.set_title(f"{name}{'' if t['within_tolerance'] else ' (below best)'}", fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.supxlabel("nDCG@10 dense - BM25, per query", fontsize=9)
    fig.supylabel("dense share of the default fusion", fontsize=9)
    return [_save(fig, out, "retrieval_fusion_weights")]


def _structures(r: dict, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    rows = r["rows"]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{row['structure']} {row['op']}" for row in rows]
    ax.barh(labels, [row["speed_ratio"] for row in rows])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set(xlabel="llmds / peer speed (> 1: llmds faster)", xscale="log", title="structures vs their peers")
    return [_save(fig, out, "structures_ratio")]
