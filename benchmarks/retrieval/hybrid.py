"""Hybrid retrieval on MS MARCO: llmds.RetrievalPipeline vs bm25s + hnswlib, same fusion.

Data: the 5,000-passage MS MARCO subset (50 queries, 43 judged) with the
precomputed all-MiniLM-L6-v2 embeddings (``<data>/ir/msmarco``, see ``benchmarks.retrieval.ir_data``).

Quality (nDCG@10 from ``top_k=10`` searches, Recall@100 from ``top_k=100``
searches, each side retrieving ``max(5 * top_k, 50)`` candidates as the
pipeline does by default) for: BM25 alone, dense alone (HNSW; exact numpy
search as a reference row), the default adaptive fusion (theoretical-min-max
fusion, TMM, with scores filled in and a dense share estimated per query; see
``benchmarks.retrieval.fusion`` for how it was chosen), TMM at fixed weights, min-max
weighted fusion at several dense weights and reciprocal-rank fusion (plain, and
weighted).  Every row is computed twice in
the same run: by the llmds pipeline and by the peer, bm25s (``method="lucene"``,
same ``\\w+`` lowercase tokens, k1=1.5, b=0.75) + hnswlib (M=16,
ef_construction=200, ef_search=50, cosine) fused by an independent numpy
implementation of the same formulas.  A second table repeats BM25, weighted
fusion at 0.5-0.8 and RRF with three BM25 tokenizers (plain, English stop
words, stop words + Snowball stemming when PyStemmer is installed).

Latency: median single-query ``search`` time (top_k=10, default fusion) with
the result cache cold (cleared before every pass) and warm, and the peer's
single-query time; with the ``embed`` extra installed (full run only) also the
query-embedding cost and the cold/warm latency with the embedder in the loop.

Run ``python -m benchmarks.retrieval.hybrid [--quick]``: prints a table and
writes ``benchmarks/results/retrieval_hybrid.json``.  Importing has no side
effects; ``run_hybrid(quick)`` returns the result dict.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import part_main

WEIGHTS = (0.3, 0.5, 0.7, 0.8, 0.9)
RRF_WEIGHTS = (0.5, 0.7, 0.8)  # 0.5 is plain RRF
RRF_K = 60
M, EF_CONSTRUCTION, EF_SEARCH = 16, 200, 50
RESULTS = Path(__file__).resolve().parents[1] / "results" / "retrieval_hybrid.json"


def _ir():
    try:
        from benchmarks.retrieval import ir_data
    except ImportError:  # run as a script from elsewhere
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from benchmarks.retrieval import ir_data
    return ir_data


def _candidates(top_k: int) -> int:
    return max(5 * top_k, 50)


# ------------------------------------------------------------------ peer
class _Peer:
    """bm25s + hnswlib, fused with a separate numpy implementation of the pipeline's formulas."""

    def __init__(self, texts: list[str], X: np.ndarray):
        import bm25s
        import hnswlib

        self._tok = lambda t: bm25s.tokenize(
            t,
            lower=True,
            token_pattern=r"(?u)\w+",
            stopwords=None,
            return_ids=False,
            show_progress=False,
        )
        self.bm25 = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
        self.bm25.index(self._tok(texts), show_progress=False)
        self.n = len(texts)
        self.hnsw = hnswlib.Index(space="cosine", dim=X.shape[1])
        self.hnsw.init_index(
            max_elements=len(X), M=M, ef_construction=EF_CONSTRUCTION, random_seed=0
        )
        self.hnsw.set_num_threads(1)
        self.hnsw.add_items(X, np.arange(len(X)), num_threads=1)
        self.hnsw.set_ef(EF_SEARCH)
        self.X = X / np.linalg.norm(X, axis=1, keepdims=True)  # for filled-in cosines
        self.mean_dir = self.X.astype(np.float64).mean(0)  # for the adaptive share

    def lexical(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        toks = self._tok([query])
        if not toks[0] or not any(t in self.bm25.vocab_dict for t in toks[0]):
            return np.zeros(0, np.int64), np.zeros(0)
        ids, sc = self.bm25.retrieve(toks, k=min(k, self.n), show_progress=False, n_threads=1)
        keep = sc[0] > 0
        return ids[0][keep].astype(np.int64), sc[0][keep].astype(np.float64)

    def dense(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, dist = self.hnsw.knn_query(q, k=min(k, self.n), num_threads=1)
        return ids[0].astype(np.int64), 1.0 - dist[0].astype(np.float64)

    def search(
        self, query: str, q: np.ndarray | None, top_k: int, w: float, fusion: str
    ) -> list[int]:
        cand = _candidates(top_k)
        li, ls = self.lexical(query, cand) if query else (np.zeros(0, np.int64), np.zeros(0))
        di, ds = self.dense(q, cand) if q is not None else (np.zeros(0, np.int64), np.zeros(0))
        if fusion == "adaptive" and w is None:
            w = self._adaptive(q, ds, ls)
        if fusion in ("tmm", "adaptive"):
            return self._tmm(query, q, di, ds, li, ls, w)[:top_k]
        return _fuse_reference(di, ds, li, ls, w, fusion)[:top_k]

    def _adaptive(self, q, ds, ls) -> float | None:
        """The adaptive dense share (``llmds.retrieval.fusion`` docstring), redone in numpy."""
        m = self.mean_dir
        prior = 0.9 * min(1.0, max(0.0, 1.0 - float(m @ m)))
        d, lx = np.sort(ds)[::-1][:50], np.sort(ls)[::-1][:50]
        if d.size < 2 or lx.size < 2:
            return prior
        floor = float(q.astype(np.float64) @ m) / float(np.linalg.norm(q))
        span = d[0] - floor
        if span <= 0:
            return 0.0
        rd = prior * d.std() / span * min(1.0, span / (1.0 - floor))
        rl = (1 - prior) * lx.std() / lx[0] * min(1.0, lx[0] / np.log(1 + (self.n - 0.5) / 1.5))
        return rd / (rd + rl) if rd + rl > 0 else prior

    def _tmm(self, query, q, di, ds, li, ls, w) -> list[int]:
        """TMM with every union document's BM25 and cosine filled in (bm25s full scores,
        numpy cosines), dict accumulation, ties by id: the pipeline's default, redone."""
        if not len(di) or not len(li):
            w = 1.0 if len(di) else 0.0
        union = sorted(set(di.tolist()) | set(li.tolist()))
        acc = {d: 0.0 for d in union}
        if len(di):
            qn = q.astype(np.float64) / np.linalg.norm(q)
            top = float(ds.max())
            for d in union:
                acc[d] += w * (float(self.X[d] @ qn) + 1.0) / (top + 1.0)
        if len(li):
            full = self.bm25.get_scores(self._tok([query])[0])
            top = float(ls.max())
            for d in union:
                acc[d] += (1.0 - w) * float(full[d]) / top
        return [d for d, _ in sorted(acc.items(), key=lambda t: (-t[1], t[0]))]


def _fuse_reference(di, ds, li, ls, w, fusion) -> list[int]:
    """Independent fusion: dict accumulation, sides ranked (score desc, id asc)."""
    sides = []
    for ids, sc in ((di, ds), (li, ls)):
        order = np.lexsort((ids, -sc))
        sides.append((ids[order], sc[order]))
    both = len(di) > 0 and len(li) > 0
    weights = (w, 1.0 - w) if both else ((1.0, 0.0) if len(di) else (0.0, 1.0))
    acc: dict[int, float] = {}
    for (ids, sc), ws in zip(sides, weights):
        if not len(ids):
            continue
        if fusion == "weighted":
            lo, hi = sc.min(), sc.max()
            norm = (sc - lo) / (hi - lo) if hi > lo else np.ones_like(sc)
            for d, v in zip(ids.tolist(), norm.tolist()):
                acc[d] = acc.get(d, 0.0) + ws * v
        else:
            for r, d in enumerate(ids.tolist(), 1):
                acc[d] = acc.get(d, 0.0) + (2.0 if both else 1.0) * ws / (RRF_K + r)
    return [d for d, _ in sorted(acc.items(), key=lambda t: (-t[1], t[0]))]


# ------------------------------------------------------------------ runs
def _methods():
    """(name, fusion, weight, use_text, use_vector)."""
    rows = [("bm25", "weighted", 0.0, True, False), ("dense (hnsw)", "weighted", 1.0, False, True)]
    rows += [("adaptive (default)", "adaptive", None, True, True)]
    rows += [(f"tmm w={w}", "tmm", w, True, True) for w in (0.8, 0.9)]
    rows += [(f"weighted w={w}", "weighted", w, True, True) for w in WEIGHTS]
    rows += [
        (f"rrf k={RRF_K}" + ("" if w == 0.5 else f" w={w}"), "rrf", w, True, True)
        for w in RRF_WEIGHTS
    ]
    return rows


def _median_ms(ts: list[float]) -> float:
    return float(np.median(ts)) * 1000.0


def run_hybrid(quick: bool = False, verbose: bool = False) -> dict:
    """Run the hybrid comparison; returns a JSON-serialisable dict.

    ``quick`` runs fewer latency passes and skips the embedder measurement.
    """
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    from llmds import retrieval_pipeline as rp
    from llmds.retrieval.pipeline import RetrievalPipeline

    ir = _ir()
    doc_ids, texts, qids, qtexts, qrels = ir.load_msmarco()
    X, Q = ir.load_msmarco_embeddings()
    n, nq = len(texts), len(qtexts)
    log(f"MS MARCO subset: {n} passages, {nq} queries")

    t = time.perf_counter()
    pipe = RetrievalPipeline(
        X.shape[1], M=M, ef_construction=EF_CONSTRUCTION, ef_search=EF_SEARCH, seed=0
    )
    pipe.add_documents(list(enumerate(texts)), X)
    pipe.search("warm up", Q[0])  # first search merges the BM25 postings
    pipe.clear_cache()
    build_llmds = time.perf_counter() - t
    t = time.perf_counter()
    peer = _Peer(texts, X)
    build_peer = time.perf_counter() - t
    log(f"build: llmds {build_llmds:.2f} s, bm25s+hnswlib {build_peer:.2f} s")

    def as_run(ranked_lists):
        return {qids[i]: [doc_ids[d] for d in ranked] for i, ranked in enumerate(ranked_lists)}

    rows = []
    for name, fusion, w, use_text, use_vec in _methods():
        row = {"method": name, "fusion": fusion, "fusion_weight": w}
        for lib in ("llmds", "peer"):
            metrics = {}
            for top_k, key in ((10, "ndcg@10"), (100, "recall@100")):
                qs = qtexts if use_text else [""] * nq
                if lib == "llmds":
                    res = pipe.search_many(
                        qs, Q if use_vec else None, top_k=top_k, fusion_weight=w, fusion=fusion
                    )
                    ranked = [[d for d, _ in r] for r in res]
                else:
                    ranked = [
                        peer.search(qs[i], Q[i] if use_vec else None, top_k, w, fusion)
                        for i in range(nq)
                    ]
                metrics[key] = ir.evaluate(as_run(ranked), qrels)[key]
            row[lib] = metrics
        rows.append(row)
        log(
            f"  {name:<18} llmds nDCG@10 {row['llmds']['ndcg@10']:.4f} "
            f"R@100 {row['llmds']['recall@100']:.4f}"
            f" | peer {row['peer']['ndcg@10']:.4f} {row['peer']['recall@100']:.4f}"
        )
    # exact dense reference (no ANN loss)
    S = Q @ X.T
    exact = np.argsort(-S, axis=1, kind="stable")
    rows.append(
        {
            "method": "dense (exact numpy)",
            "fusion": None,
            "fusion_weight": None,
            "llmds": None,
            "peer": {
                "ndcg@10": ir.evaluate(as_run(exact[:, :10].tolist()), qrels)["ndcg@10"],
                "recall@100": ir.evaluate(as_run(exact[:, :100].tolist()), qrels)["recall@100"],
            },
        }
    )

    # the shipped default
    cfg = pipe.config
    default_rank10 = [[d for d, _ in r] for r in pipe.search_many(qtexts, Q, top_k=10)]
    default_rank100 = [[d for d, _ in r] for r in pipe.search_many(qtexts, Q, top_k=100)]
    default = {
        "fusion": cfg.fusion,
        "fusion_weight": cfg.weight(cfg.fusion),
        "ndcg@10": ir.evaluate(as_run(default_rank10), qrels)["ndcg@10"],
        "recall@100": ir.evaluate(as_run(default_rank100), qrels)["recall@100"],
    }
    best_single = max(rows[0]["llmds"]["ndcg@10"], rows[1]["llmds"]["ndcg@10"])
    default["best_single_ndcg@10"] = best_single
    default["goal_met"] = bool(default["ndcg@10"] >= best_single - 0.005)
    best = max((r for r in rows if r["llmds"]), key=lambda r: r["llmds"]["ndcg@10"])
    default["best_row"] = best["method"]
    log(
        f"default {cfg.fusion} w={cfg.weight(cfg.fusion)}: nDCG@10 {default['ndcg@10']:.4f} "
        f"(best single {best_single:.4f}, goal met: {default['goal_met']})"
    )

    tokenizers = _tokenizer_sweep(texts, X, qtexts, Q, qids, doc_ids, qrels, ir, log)
    latency = _latency(pipe, peer, qtexts, Q, cfg, passes=3 if quick else 10)
    if not quick:
        latency.update(_embedder_latency(texts, X, qtexts, log))
    log(
        "latency ms: "
        + ", ".join(f"{k} {v:.3f}" for k, v in latency.items() if isinstance(v, float))
    )

    import numba

    return {
        "benchmark": "retrieval_hybrid",
        "quick": quick,
        "dataset": {
            "name": "msmarco-5k",
            "passages": n,
            "queries": nq,
            "judged_queries": ir.evaluate({}, qrels)["num_queries"],
        },
        "params": {
            "M": M,
            "ef_construction": EF_CONSTRUCTION,
            "ef_search": EF_SEARCH,
            "metric": "cosine",
            "k1": 1.5,
            "b": 0.75,
            "rrf_k": RRF_K,
            "candidates": "max(5*top_k, 50) per side",
            "peer": "bm25s(lucene) + hnswlib, same fusion in numpy",
        },
        "env": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "build_seconds": {"llmds": build_llmds, "peer": build_peer},
        "quality": rows,
        "default": default,
        "default_in_code": {"fusion": rp.DEFAULT_FUSION, "fusion_weight": rp.DEFAULT_FUSION_WEIGHT},
        "tokenizer_sweep": tokenizers,
        "latency_ms": latency,
    }


SWEEP_WEIGHTS = (0.5, 0.6, 0.7, 0.8)


def _tokenizer_sweep(texts, X, qtexts, Q, qids, doc_ids, qrels, ir, log) -> list[dict]:
    """Is the default weight robust to the BM25 tokenizer? nDCG@10 / R@100 per weight."""
    import importlib.util

    from llmds.retrieval.pipeline import RetrievalPipeline
    from llmds.retrieval.tokenizer import Tokenizer

    variants = [("plain", {}), ("stopwords", {"stopwords": "english"})]
    if importlib.util.find_spec("Stemmer") is not None:
        variants.append(("stopwords+stem", {"stopwords": "english", "stemmer": "english"}))
    rows = []
    for name, kw in variants:
        pipe = RetrievalPipeline(
            X.shape[1],
            tokenizer=Tokenizer(**kw),
            M=M,
            ef_construction=EF_CONSTRUCTION,
            ef_search=EF_SEARCH,
            seed=0,
            cache_token_budget=0,
        )
        pipe.add_documents(list(enumerate(texts)), X)

        def ev(vecs, w, fusion, top_k, key, pipe=pipe):
            res = pipe.search_many(qtexts, vecs, top_k=top_k, fusion_weight=w, fusion=fusion)
            run = {qids[i]: [doc_ids[d] for d, _ in r] for i, r in enumerate(res)}
            return ir.evaluate(run, qrels)[key]

        row = {
            "tokenizer": name,
            "bm25": {
                "ndcg@10": ev(None, 0.0, "weighted", 10, "ndcg@10"),
                "recall@100": ev(None, 0.0, "weighted", 100, "recall@100"),
            },
        }
        for w in SWEEP_WEIGHTS:
            row[f"weighted {w}"] = {
                "ndcg@10": ev(Q, w, "weighted", 10, "ndcg@10"),
                "recall@100": ev(Q, w, "weighted", 100, "recall@100"),
            }
        row["rrf"] = {
            "ndcg@10": ev(Q, 0.5, "rrf", 10, "ndcg@10"),
            "recall@100": ev(Q, 0.5, "rrf", 100, "recall@100"),
        }
        rows.append(row)
        log(
            f"  tokenizer {name}: "
            + ", ".join(f"{k} {v['ndcg@10']:.4f}" for k, v in row.items() if k != "tokenizer")
        )
    return rows


def _latency(pipe, peer, qtexts, Q, cfg, passes: int) -> dict:
    """Median single-query ms: pipeline cache cold / warm, and the peer (interleaved passes)."""
    cold, warm, peer_t = [], [], []
    w, fusion = cfg.weight(cfg.fusion), cfg.fusion
    for _ in range(passes):
        pipe.clear_cache()
        for i, q in enumerate(qtexts):
            t = time.perf_counter()
            pipe.search(q, Q[i], top_k=10)
            cold.append(time.perf_counter() - t)
        for i, q in enumerate(qtexts):
            t = time.perf_counter()
            pipe.search(q, Q[i], top_k=10)
            warm.append(time.perf_counter() - t)
        for i, q in enumerate(qtexts):
            t = time.perf_counter()
            peer.search(q, Q[i], 10, w, fusion)
            peer_t.append(time.perf_counter() - t)
    out = {
        "pipeline_cold": _median_ms(cold),
        "pipeline_warm": _median_ms(warm),
        "peer": _median_ms(peer_t),
    }
    out["ratio_peer_over_cold"] = out["peer"] / out["pipeline_cold"]  # > 1: llmds faster
    out["warm_speedup_vs_cold"] = out["pipeline_cold"] / out["pipeline_warm"]
    out["samples_per_case"] = len(cold)
    return out


def _embedder_latency(texts, X, qtexts, log) -> dict:
    """Query path with all-MiniLM-L6-v2 in the loop (needs the embed extra)."""
    from llmds import embeddings

    if not embeddings.is_available():
        log("embed extra not installed: skipping the embedder latency")
        return {}
    from llmds.retrieval.pipeline import RetrievalPipeline

    # one torch thread: on a shared 2-core box torch's default 2 threads spin against
    # each other and other processes (measured ~600 ms vs ~55 ms per query under load)
    emb = embeddings.MiniLMEmbedder(num_threads=1).load()
    pipe = RetrievalPipeline(
        X.shape[1], embedder=emb, M=M, ef_construction=EF_CONSTRUCTION, ef_search=EF_SEARCH, seed=0
    )
    pipe.add_documents(list(enumerate(texts)), X)  # documents: precomputed rows (same model)
    pipe.search("warm up")
    emb_t, cold, warm = [], [], []
    for q in qtexts:
        t = time.perf_counter()
        emb(q)
        emb_t.append(time.perf_counter() - t)
    pipe.clear_cache()
    for q in qtexts:
        t = time.perf_counter()
        pipe.search(q, top_k=10)
        cold.append(time.perf_counter() - t)
    for q in qtexts:
        t = time.perf_counter()
        pipe.search(q, top_k=10)
        warm.append(time.perf_counter() - t)
    return {
        "embed_query": _median_ms(emb_t),
        "embedder_cold": _median_ms(cold),
        "embedder_warm": _median_ms(warm),
    }


def format_table(res: dict) -> str:
    d = res["dataset"]
    lines = [
        f"\n== hybrid retrieval: MS MARCO {d['passages']} passages, {d['queries']} queries "
        f"({d['judged_queries']} judged); peer = bm25s + hnswlib, same fusion",
        f"build s: llmds {res['build_seconds']['llmds']:.2f}, "
        f"peer {res['build_seconds']['peer']:.2f}",
        f"{'method':<22} {'llmds nDCG@10':>13} {'R@100':>7} {'peer nDCG@10':>13} {'R@100':>7}",
    ]
    for r in res["quality"]:
        ll = r["llmds"]
        left = f"{ll['ndcg@10']:>13.4f} {ll['recall@100']:>7.4f}" if ll else f"{'-':>13} {'-':>7}"
        p = r["peer"]
        lines.append(f"{r['method']:<22} {left} {p['ndcg@10']:>13.4f} {p['recall@100']:>7.4f}")
    df = res["default"]
    lines.append(
        f"default ({df['fusion']}, fusion_weight={df['fusion_weight']}): "
        f"nDCG@10 {df['ndcg@10']:.4f}, "
        f"R@100 {df['recall@100']:.4f}; best single retriever {df['best_single_ndcg@10']:.4f}; "
        f"within 0.005: {'yes' if df['goal_met'] else 'NO'}; best row: {df['best_row']}"
    )
    sweep = res.get("tokenizer_sweep") or []
    if sweep:
        cols = [k for k in sweep[0] if k != "tokenizer"]
        lines.append("nDCG@10 / R@100 by BM25 tokenizer (llmds pipeline; dense side unchanged):")
        lines.append(f"{'tokenizer':<15} " + " ".join(f"{c:>15}" for c in cols))
        for r in sweep:
            cells = " ".join(
                f"{r[c]['ndcg@10']:>7.4f}/{r[c]['recall@100']:.4f}"[-15:].rjust(15) for c in cols
            )
            lines.append(f"{r['tokenizer']:<15} {cells}")
    lt = res["latency_ms"]
    lines.append(
        f"search latency (top_k=10, median of {lt['samples_per_case']}): cache cold "
        f"{lt['pipeline_cold']:.3f} ms, peer {lt['peer']:.3f} ms (ratio peer / llmds "
        f"{lt['ratio_peer_over_cold']:.2f}: > 1 means llmds is better), "
        f"warm {lt['pipeline_warm']:.4f} ms ({lt['warm_speedup_vs_cold']:.0f}x faster than cold)"
    )
    if "embed_query" in lt:
        lines.append(
            f"with MiniLM embedder (1 torch thread): embed one query {lt['embed_query']:.2f} ms; "
            f"search cold "
            f"{lt['embedder_cold']:.2f} ms, warm {lt['embedder_warm']:.4f} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return part_main(__doc__, run_hybrid, format_table, RESULTS, "fewer latency passes, no embedder timing", argv, verbose=True)


if __name__ == "__main__":
    main()
