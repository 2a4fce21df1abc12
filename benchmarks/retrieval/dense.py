"""Dense retrieval: llmds.HNSW against hnswlib and faiss (IndexHNSWFlat), single-threaded.

Datasets
  * ``msmarco``: the 5,000 MS MARCO passage embeddings (all-MiniLM-L6-v2, 384-d,
    unit norm) as the base, its 50 queries repeated; metric inner product.
  * ``synthetic``: 100,000 x 128 float32 from 100 Gaussian clusters, 1,000
    queries drawn the same way (seeded); metric L2.  ``--quick`` uses 20,000.

For each library: build time (M=16, ef_construction=200, one thread), then for
ef_search in {10, 20, 50, 100, 200}: recall@10 against exact numpy search,
single-query QPS (one Python call per query) and batch QPS (one call for all
queries).  Exact numpy search is the baseline.  Timings are medians over
repeats, interleaved across libraries so machine load hits all alike.

Every time is taken twice: process CPU time (``time.process_time``, the
headline numbers: on a shared machine it is what the code costs, not how busy
the neighbours are; every library runs on one thread, so CPU time = work) and
wall-clock time (``*_wall`` fields in the JSON).

Run ``python -m benchmarks.retrieval.dense [--quick]``: prints a table and
writes ``benchmarks/results/retrieval_dense.json``.  Importing has no side
effects; ``run_dense(quick)`` returns the result dict.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import part_main

EF_SEARCH = (10, 20, 50, 100, 200)
M, EF_CONSTRUCTION, K = 16, 200, 10
RESULTS = Path(__file__).resolve().parents[1] / "results" / "retrieval_dense.json"


# ------------------------------------------------------------------ data
def _msmarco(quick: bool):
    try:
        from benchmarks.retrieval.ir_data import load_msmarco_embeddings
    except ImportError:  # run as a script from elsewhere
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from benchmarks.retrieval.ir_data import load_msmarco_embeddings
    X, Q = load_msmarco_embeddings()
    reps = 4 if quick else 20  # 50 distinct queries, repeated for stable timings
    return np.ascontiguousarray(X, np.float32), np.ascontiguousarray(np.tile(Q, (reps, 1)), np.float32)


def _synthetic(n: int, nq: int = 1000, dim: int = 128, clusters: int = 100, seed: int = 0):
    """Gaussian clusters: centres ~ N(0, 1), points = centre + N(0, 0.5^2) per coordinate."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    def draw(m):
        return (centres[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, dim))).astype(np.float32)
    return draw(n), draw(nq)


def _exact_scores(X, Q, metric):
    """Smaller is closer: -dot for ip, ||x||^2 - 2 q.x for l2 (||q||^2 is constant per row)."""
    if metric == "ip":
        return -(Q @ X.T)
    return (X * X).sum(1)[None, :] - 2.0 * (Q @ X.T)


def _exact_topk(X, Q, metric, k=K, block=100):
    out = np.empty((len(Q), k), np.int64)
    for s in range(0, len(Q), block):
        sc = _exact_scores(X, Q[s:s + block], metric)
        part = np.argpartition(sc, k, axis=1)[:, :k]
        order = np.take_along_axis(sc, part, 1).argsort(1)
        out[s:s + block] = np.take_along_axis(part, order, 1)
    return out


def _recall(ids, truth):
    return float(np.mean([len(set(a.tolist()) & set(t.tolist())) / truth.shape[1] for a, t in zip(ids, truth)]))


# -------------------------------------------------------------- libraries
class _Llmds:
    name = "llmds"

    def __init__(self, dim, metric):
        from llmds.retrieval.hnsw import HNSW
        self.index = HNSW(dim, M=M, ef_construction=EF_CONSTRUCTION, seed=0, metric=metric,
                          max_elements=1024)

    def build(self, X):
        self.index.add_items(X)

    def set_ef(self, ef):
        self.index.ef_search = ef

    def single(self, Q):
        s = self.index.search
        for q in Q:
            s(q, K)

    def batch(self, Q):
        return self.index.search_batch(Q, K)[0]


class _Hnswlib:
    name = "hnswlib"

    def __init__(self, dim, metric):
        import hnswlib
        self.index = hnswlib.Index(space=metric, dim=dim)
        self.dim = dim

    def build(self, X):
        self.index.init_index(max_elements=len(X), M=M, ef_construction=EF_CONSTRUCTION, random_seed=0)
        self.index.set_num_threads(1)
        self.index.add_items(X, np.arange(len(X)), num_threads=1)

    def set_ef(self, ef):
        self.index.set_ef(ef)

    def single(self, Q):
        s = self.index.knn_query
        for q in Q:
            s(q, k=K, num_threads=1)

    def batch(self, Q):
        return self.index.knn_query(Q, k=K, num_threads=1)[0]


class _Faiss:
    name = "faiss"

    def __init__(self, dim, metric):
        import faiss
        faiss.omp_set_num_threads(1)
        mt = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        self.index = faiss.IndexHNSWFlat(dim, M, mt)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION

    def build(self, X):
        self.index.add(X)

    def set_ef(self, ef):
        self.index.hnsw.efSearch = ef

    def single(self, Q):
        s = self.index.search
        for i in range(len(Q)):
            s(Q[i:i + 1], K)

    def batch(self, Q):
        return self.index.search(Q, K)[1]


class _Exact:
    name = "exact-numpy"

    def __init__(self, X, metric, nq_single):
        self.X, self.metric, self.nq_single = X, metric, nq_single
        self.sq = (X * X).sum(1) if metric == "l2" else None

    def single(self, Q):
        X, sq = self.X, self.sq
        for q in Q[: self.nq_single]:
            s = -(X @ q) if sq is None else sq - 2.0 * (X @ q)
            p = np.argpartition(s, K)[:K]
            p[np.argsort(s[p])]

    def batch(self, Q):
        return _exact_topk(self.X, Q, self.metric)


class _Clock:
    """CPU and wall time of one block."""

    __slots__ = ("_c", "_w", "cpu", "wall")

    def __enter__(self):
        self._c, self._w = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu = time.process_time() - self._c
        self.wall = time.perf_counter() - self._w


def _median_time(fn, *args, repeats):
    """(median CPU seconds, median wall seconds) of ``fn(*args)``."""
    cpu, wall = [], []
    for _ in range(repeats):
        with _Clock() as c:
            fn(*args)
        cpu.append(c.cpu)
        wall.append(c.wall)
    return float(np.median(cpu)), float(np.median(wall))


# ------------------------------------------------------------ compile time
def _warmup_seconds() -> tuple[float, float]:
    """(CPU, wall) seconds of the first calls in this process: numba loads the
    cached kernels (or compiles them when the cache is empty or stale)."""
    from llmds.retrieval.hnsw import HNSW
    with _Clock() as c:
        h = HNSW(8, seed=0)
        h.add_items(np.random.default_rng(0).standard_normal((20, 8)))
        h.search(np.ones(8), 3)
        h.search_batch(np.ones((2, 8)), 3)
    return c.cpu, c.wall


def _cold_compile_seconds() -> tuple[float, float] | None:
    """(CPU, wall) compile seconds with an empty numba cache, in a child process."""
    code = "import benchmarks.retrieval.dense as b;print(*b._warmup_seconds())"
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d,
                   PYTHONPATH=os.pathsep.join([str(root / "src"), str(root), os.environ.get("PYTHONPATH", "")]))
        try:
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, timeout=900, check=True)
            cpu, wall = out.stdout.strip().splitlines()[-1].split()
            return float(cpu), float(wall)
        except (subprocess.SubprocessError, ValueError, IndexError):
            return None


# ------------------------------------------------------------------- runs
def _run_dataset(name, X, Q, metric, repeats, nq_single_exact, log):
    log(f"[{name}] {X.shape[0]} x {X.shape[1]}, {len(Q)} queries, metric {metric}")
    truth = _exact_topk(X, Q, metric)
    libs = [cls(X.shape[1], metric) for cls in (_Llmds, _Hnswlib, _Faiss)]
    builds, builds_wall = {}, {}
    for lib in libs:
        with _Clock() as c:
            lib.build(X)
        builds[lib.name], builds_wall[lib.name] = c.cpu, c.wall
        log(f"  build {lib.name}: {c.cpu:.2f} s CPU, {c.wall:.2f} s wall")
    exact = _Exact(X, metric, nq_single_exact)
    ns = min(len(Q), nq_single_exact)
    ex_single = _median_time(exact.single, Q, repeats=repeats)
    ex_batch = _median_time(exact.batch, Q, repeats=repeats)
    rows = []
    for ef in EF_SEARCH:
        timings = {(lib.name, mode, clock): [] for lib in libs for mode in ("single", "batch")
                   for clock in ("cpu", "wall")}
        recall = {}
        for lib in libs:
            lib.set_ef(ef)
            recall[lib.name] = _recall(lib.batch(Q), truth)
            lib.single(Q[:20])  # warm caches
        for _ in range(repeats):  # interleaved so load spikes hit every library
            for lib in libs:
                for mode, fn in (("single", lib.single), ("batch", lib.batch)):
                    with _Clock() as c:
                        fn(Q)
                    timings[lib.name, mode, "cpu"].append(c.cpu)
                    timings[lib.name, mode, "wall"].append(c.wall)
        for lib in libs:
            qps = {f"{mode}_qps{'' if clock == 'cpu' else '_wall'}":
                   len(Q) / float(np.median(timings[lib.name, mode, clock]))
                   for mode in ("single", "batch") for clock in ("cpu", "wall")}
            rows.append({"library": lib.name, "ef_search": ef, "recall_at_10": recall[lib.name], **qps})
        log(f"  ef={ef} " + " ".join(
            f"{r['library']}: R={r['recall_at_10']:.3f} {r['single_qps']:.0f}/s" for r in rows[-3:]))
    ref = {r["ef_search"]: r for r in rows if r["library"] == "hnswlib"}
    for r in rows:
        h = ref[r["ef_search"]]
        for key in ("single_qps", "batch_qps", "single_qps_wall", "batch_qps_wall"):
            r[f"{key}_vs_hnswlib"] = r[key] / h[key]
    best = {}
    for lib in libs:  # fastest single-query setting that reaches recall@10 >= 0.95
        ok = [r for r in rows if r["library"] == lib.name and r["recall_at_10"] >= 0.95]
        best[lib.name] = max(ok, key=lambda r: r["single_qps"]) if ok else None
    hb = best.get("hnswlib")
    at95 = {n: None if b is None else {"ef_search": b["ef_search"], "recall_at_10": b["recall_at_10"],
                                       "single_qps": b["single_qps"],
                                       "vs_hnswlib": b["single_qps"] / hb["single_qps"] if hb else None}
            for n, b in best.items()}
    return {
        "n": int(X.shape[0]), "dim": int(X.shape[1]), "num_queries": len(Q), "metric": metric,
        "build_seconds": builds,
        "build_seconds_wall": builds_wall,
        "build_vs_hnswlib": {n: builds[n] / builds["hnswlib"] for n in builds},
        "exact_numpy": {"single_qps": ns / ex_single[0], "batch_qps": len(Q) / ex_batch[0],
                        "single_qps_wall": ns / ex_single[1], "batch_qps_wall": len(Q) / ex_batch[1],
                        "recall_at_10": 1.0},
        "rows": rows,
        "best_single_qps_at_recall_0.95": at95,
        "llmds_stats": {k: v for k, v in libs[0].index.stats().items()},
    }


def run_dense(quick: bool = False, verbose: bool = False) -> dict:
    """Run the dense-retrieval comparison; returns a JSON-serialisable dict.

    ``quick`` uses a 20k synthetic set, fewer query repeats and 3 timing repeats.
    """
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    import faiss
    import hnswlib
    import numba

    faiss.omp_set_num_threads(1)
    repeats = 3 if quick else 5
    out = {
        "benchmark": "retrieval_dense", "quick": quick,
        "params": {"M": M, "ef_construction": EF_CONSTRUCTION, "k": K, "ef_search": list(EF_SEARCH),
                   "threads": 1, "repeats": repeats, "statistic": "median"},
        "env": {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
                "faiss": getattr(faiss, "__version__", "?"),
                "hnswlib": getattr(hnswlib, "__version__", "?"), "cpu_count": os.cpu_count(),
                "machine": platform.machine()},
    }
    out["llmds_first_call_seconds"] = _warmup_seconds()
    out["llmds_cold_compile_seconds"] = None if quick else _cold_compile_seconds()
    log(f"llmds first call (CPU, wall) {out['llmds_first_call_seconds']}, cold compile "
        f"{out['llmds_cold_compile_seconds']}")
    try:
        X, Q = _msmarco(quick)
        out["msmarco"] = _run_dataset("msmarco", X, Q, "ip", repeats, len(Q), log)
    except FileNotFoundError as exc:  # ir_data.MissingData: the collection is not on this machine
        out["msmarco"] = {"skipped": str(exc)}
    X, Q = _synthetic(20_000 if quick else 100_000)
    out["synthetic"] = _run_dataset("synthetic", X, Q, "l2", repeats, 200, log)
    return out


def format_table(res: dict) -> str:
    lines = []
    for ds in ("msmarco", "synthetic"):
        d = res[ds]
        if "skipped" in d:
            lines.append(f"\n== {ds}: skipped ({d['skipped']})")
            continue
        lines.append(f"\n== {ds}: {d['n']} x {d['dim']}, {d['num_queries']} queries, metric {d['metric']}, "
                     f"M={M}, ef_construction={EF_CONSTRUCTION}, 1 thread")
        lines.append("build s (CPU): " + ", ".join(
            f"{n} {s:.2f} ({d['build_vs_hnswlib'][n]:.2f}x hnswlib)" for n, s in d["build_seconds"].items()))
        e = d["exact_numpy"]
        lines.append(f"exact numpy: single {e['single_qps']:.0f} q/s, batch {e['batch_qps']:.0f} q/s, recall 1.000")
        lines.append(f"{'library':<9} {'ef':>4} {'recall@10':>9} {'single q/s':>11} {'vs hnswlib':>10} "
                     f"{'batch q/s':>10} {'vs hnswlib':>10}   {'wall: single':>12} {'vs':>6}")
        for r in d["rows"]:
            lines.append(f"{r['library']:<9} {r['ef_search']:>4} {r['recall_at_10']:>9.3f} "
                         f"{r['single_qps']:>11.0f} {r['single_qps_vs_hnswlib']:>9.2f}x "
                         f"{r['batch_qps']:>10.0f} {r['batch_qps_vs_hnswlib']:>9.2f}x   "
                         f"{r['single_qps_wall']:>12.0f} {r['single_qps_wall_vs_hnswlib']:>5.2f}x")
        for n, b in d["best_single_qps_at_recall_0.95"].items():
            if b is None:
                lines.append(f"best single q/s at recall>=0.95: {n}: not reached")
            else:
                vs = "" if b["vs_hnswlib"] is None else f" ({b['vs_hnswlib']:.2f}x hnswlib)"
                lines.append(f"best single q/s at recall>=0.95: {n}: {b['single_qps']:.0f} "
                             f"(ef={b['ef_search']}, recall {b['recall_at_10']:.3f}){vs}")
    lines.append("\nq/s from process CPU time (one thread each); 'wall' = wall-clock q/s on this shared machine")
    cc = res.get("llmds_cold_compile_seconds")
    fc = res["llmds_first_call_seconds"]
    lines.append(f"llmds first call (numba cache load or compile): {fc[0]:.2f} s CPU, {fc[1]:.2f} s wall; "
                 "cold compile (empty cache): "
                 + ("not measured (--quick)" if cc is None else f"{cc[0]:.1f} s CPU, {cc[1]:.1f} s wall"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return part_main(__doc__, run_dense, format_table, RESULTS, "20k synthetic vectors, fewer repeats", argv, verbose=True)


if __name__ == "__main__":
    main()
