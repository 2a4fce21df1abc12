"""Which hybrid fusion to ship: chosen on MS MARCO, checked on business-reports.

Data: both BEIR-layout collections of ``<data>/ir`` (see ``benchmarks.retrieval.ir_data``)
with their precomputed all-MiniLM-L6-v2 embeddings.  Two parts:

1. **Study** (the selection).  For each collection and each of three BM25
   tokenizers (plain, English stop words, stop words + Snowball stemming) the
   pipeline's own BM25 and exact cosine score every document for every query;
   fusion functions are then applied in numpy to the candidate lists the
   pipeline would fuse (``max(5 * top_k, 50)`` per side; nDCG@10 from top 10,
   R@100 from top 100): convex combination (CC) with min-max, theoretical
   min-max (TMM: BM25 from 0, cosine from -1) and z-score normalisation, each
   with missing scores left at the side's floor or filled in exactly ("+fill"),
   over a grid of dense weights; RRF with k in {10, 60}.  Selection rule, fixed
   before looking at business-reports: on MS MARCO keep the candidates within
   0.005 nDCG@10 of the better single retriever under *every* tokenizer and
   pick the best mean nDCG@10 over the tokenizers; then check that choice on
   business-reports.  Reported beside it, not used by the rule: each
   candidate's "plateau" (mean over it and its neighbours on the parameter
   grid: the next weights; for RRF also the other k), a measure of how much a
   shift of the optimum on an untuned collection would cost.
   Bruch, Gai & Ingber (TOIS 2023) is why CC with TMM is in the set and why RRF
   is expected to be sensitive to k.
2. **Table** (the shipped pipeline, default tokenizer): nDCG@10 and R@100 of
   BM25, dense, the old default (min-max, w = 0.7), the new default (TMM with
   filled-in scores, w = 0.9) and plain RRF, computed by ``RetrievalPipeline``
   itself on both collections, with a paired bootstrap 95% interval of
   "default minus the better single retriever" (queries resampled).

Run ``python -m benchmarks.retrieval.fusion [--quick]`` (``--quick``: plain
tokenizer only, coarser grid).  Importing has no side effects.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import part_main

RESULTS = Path(__file__).resolve().parents[1] / "results" / "retrieval_fusion.json"
CHOOSE_ON, CHECK_ON = "msmarco", "business-reports"
TOLERANCE = 0.005  # the goal: never more than this below the better single retriever
HNSW = dict(M=16, ef_construction=200, ef_search=50, seed=0)


def _tokenizers(quick: bool) -> list[tuple[str, dict]]:
    out = [("plain", {})]
    if not quick:
        out.append(("stopwords", {"stopwords": "english"}))
        if importlib.util.find_spec("Stemmer") is not None:
            out.append(("stopwords+stem", {"stopwords": "english", "stemmer": "english"}))
    return out


# ------------------------------------------------------------------ study
def _norm(vals: np.ndarray, kind: str, low: float) -> tuple[float, float]:
    """(offset, scale) of a side's normalisation from its candidate scores."""
    if kind == "minmax":
        lo, hi = float(vals.min()), float(vals.max())
        return lo, (hi - lo) or 1.0
    if kind == "tmm":
        return low, (float(vals.max()) - low) or 1.0
    mu, sd = float(vals.mean()), float(vals.std())  # z-score
    return mu, sd or 1.0


def _fuse(lex: np.ndarray, den: np.ndarray, cand: int, method: str, w: float,
          fill: bool = False, rrf_k: int = 60) -> np.ndarray:
    """Ranked doc indices for one query from full score vectors (lex: BM25, den: cosine)."""
    n = lex.shape[0]
    lo = np.lexsort((np.arange(n), -lex))[:cand]
    lo = lo[lex[lo] > 0]
    do = np.lexsort((np.arange(n), -den))[:cand]
    if w == 0.0:  # a single retriever
        return lo
    if w == 1.0 or not lo.size:
        return do
    union = np.union1d(lo, do)
    score = np.zeros(union.size)
    if method == "rrf":
        for side, ws in ((do, w), (lo, 1 - w)):
            score[np.searchsorted(union, side)] += 2 * ws / (rrf_k + np.arange(1, side.size + 1))
        return union[np.lexsort((union, -score))]
    for full, side, ws, low in ((den, do, w, -1.0), (lex, lo, 1 - w, 0.0)):
        off, scale = _norm(full[side], method, low)
        vals = np.full(union.size, np.nan)
        vals[np.searchsorted(union, side)] = (full[side] - off) / scale
        missing = np.isnan(vals)
        if fill:
            vals[missing] = (full[union[missing]] - off) / scale
        else:  # the side's floor: 0 for min-max and TMM, its lowest z for z-score
            vals[missing] = np.nanmin(vals) if method == "z" else 0.0
        score += ws * vals
    return union[np.lexsort((union, -score))]


def _grid(quick: bool) -> tuple[float, ...]:
    return (0.5, 0.7, 0.8, 0.9) if quick else (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


RRF_KS, RRF_WS = (10, 60), (0.5, 0.6, 0.7)


def _candidates(quick: bool) -> list[tuple[str, str, float, bool, int]]:
    """(label, method, dense weight, fill, rrf_k) of every fusion in the study."""
    out = []
    for method in ("minmax", "tmm", "z"):
        for fill in (False, True):
            out += [(f"{method}{'+fill' if fill else ''} w={w}", method, w, fill, 60)
                    for w in _grid(quick)]
    for k in RRF_KS:
        out += [(f"rrf k={k} w={w}", "rrf", w, False, k) for w in RRF_WS]
    return out


def _neighbours(label: str, quick: bool) -> list[str]:
    """The candidate and its neighbours on the parameter grid."""
    fam, w = label.rsplit(" w=", 1)
    ws = RRF_WS if fam.startswith("rrf") else _grid(quick)
    i = ws.index(float(w))
    out = [f"{fam} w={ws[j]}" for j in (i - 1, i, i + 1) if 0 <= j < len(ws)]
    if fam.startswith("rrf"):
        out += [f"rrf k={k} w={w}" for k in RRF_KS if f"rrf k={k}" != fam]
    return out


def _scores(ir, name: str, tok: dict):
    """Full BM25 (the pipeline's index) and cosine score matrices [queries, docs]."""
    from llmds.retrieval.inverted_index import InvertedIndex
    from llmds.retrieval.tokenizer import Tokenizer

    doc_ids, texts, qids, qtexts, qrels = ir.load_collection(name)
    X, Q = ir.load_embeddings(name)
    idx = InvertedIndex(Tokenizer(**tok))
    idx.add_documents(enumerate(texts))
    everything = list(range(len(texts)))
    lex = np.stack([idx.score_documents(q, everything).astype(np.float64) for q in qtexts])
    return doc_ids, qids, qrels, lex, (Q @ X.T).astype(np.float64)


def _study(ir, quick: bool, log) -> dict:
    conds = {}
    for name in ir.COLLECTIONS:
        for tname, tok in _tokenizers(quick):
            doc_ids, qids, qrels, L, D = _scores(ir, name, tok)

            def ev(method, w, fill=False, k=60):
                out = []
                for top, key, cand in ((10, "ndcg@10", 50), (100, "recall@100", 500)):
                    run = {qids[i]: [doc_ids[d] for d in _fuse(L[i], D[i], cand, method, w, fill, k)[:top]]
                           for i in range(len(qids))}
                    out.append(round(ir.evaluate(run, qrels)[key], 4))
                return out

            row = {"bm25": ev("minmax", 0.0), "dense": ev("minmax", 1.0)}
            for label, method, w, fill, k in _candidates(quick):
                row[label] = ev(method, w, fill, k)
            conds[f"{name}/{tname}"] = row
            log(f"  study {name}/{tname}: bm25 {row['bm25'][0]:.4f} dense {row['dense'][0]:.4f}")
    return conds


def _choose(conds: dict, quick: bool) -> dict:
    """Apply the selection rule (module docstring) and check the choice."""
    def margin(c, m):
        return conds[c][m][0] - max(conds[c]["bm25"][0], conds[c]["dense"][0])

    on = [c for c in conds if c.startswith(CHOOSE_ON + "/")]
    chk = [c for c in conds if c.startswith(CHECK_ON + "/")]
    labels = [m for m in conds[on[0]] if m not in ("bm25", "dense")]
    ranked = []
    for m in labels:
        worst = min(margin(c, m) for c in on)
        near = _neighbours(m, quick)
        plateau = sum(conds[c][x][0] for c in on for x in near) / (len(on) * len(near))
        ranked.append({
            "fusion": m, "worst_margin": round(worst, 4), "feasible": worst >= -TOLERANCE,
            "mean_ndcg@10": round(sum(conds[c][m][0] for c in on) / len(on), 4),
            "plateau_ndcg@10": round(plateau, 4),
            "check_worst_margin": round(min(margin(c, m) for c in chk), 4)})
    ranked.sort(key=lambda r: (r["feasible"], r["mean_ndcg@10"]), reverse=True)
    best = ranked[0]
    return {"rule": f"chosen on {CHOOSE_ON}: every tokenizer >= best single - {TOLERANCE}, then "
                    f"best mean nDCG@10 over tokenizers; checked on {CHECK_ON}",
            "chosen": best["fusion"], "check_passed": best["check_worst_margin"] >= -TOLERANCE,
            "ranking": ranked[:15]}


# ------------------------------------------------------------------ the shipped pipeline
def _bootstrap(a: np.ndarray, b: np.ndarray, reps: int = 10_000, seed: int = 0) -> list[float]:
    """95% interval of mean(a - b) over queries resampled with replacement."""
    rng = np.random.default_rng(seed)
    d = a - b
    means = d[rng.integers(0, d.size, (reps, d.size))].mean(1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


ROWS = (  # (label, fusion, dense weight, use text, use vector)
    ("bm25", "tmm", 0.0, True, False),
    ("dense (hnsw)", "tmm", 1.0, False, True),
    ("old default: min-max w=0.7", "weighted", 0.7, True, True),
    ("new default: tmm w=0.9", None, None, True, True),
    ("rrf k=60", "rrf", 0.5, True, True),
)


def _table(ir, log) -> dict:
    from llmds.retrieval.pipeline import RetrievalPipeline

    out = {}
    for name in ir.COLLECTIONS:
        doc_ids, texts, qids, qtexts, qrels = ir.load_collection(name)
        X, Q = ir.load_embeddings(name)
        pipe = RetrievalPipeline(X.shape[1], cache_token_budget=0, **HNSW)
        pipe.add_documents(list(enumerate(texts)), X)
        judged = [i for i, q in enumerate(qids) if any(g > 0 for g in qrels.get(q, {}).values())]
        rows, per_query = {}, {}
        for label, fusion, w, use_text, use_vec in ROWS:
            qs = qtexts if use_text else [""] * len(qtexts)
            metrics = {}
            for top, key in ((10, "ndcg@10"), (100, "recall@100")):
                res = pipe.search_many(qs, Q if use_vec else None, top_k=top, fusion_weight=w,
                                       fusion=fusion)
                ranked = [[doc_ids[d] for d, _ in r] for r in res]
                metrics[key] = ir.evaluate({qids[i]: ranked[i] for i in range(len(qids))}, qrels)[key]
                if key == "ndcg@10":
                    per_query[label] = np.array([ir.ndcg_at_k(ranked[i], qrels[qids[i]], 10)
                                                 for i in judged])
            rows[label] = metrics
        best = max(("bm25", "dense (hnsw)"), key=lambda r: rows[r]["ndcg@10"])
        new = "new default: tmm w=0.9"
        out[name] = {
            "documents": len(texts), "judged_queries": len(judged), "rows": rows,
            "best_single": best,
            "default_minus_best": round(rows[new]["ndcg@10"] - rows[best]["ndcg@10"], 4),
            "default_minus_best_ci95": _bootstrap(per_query[new], per_query[best]),
            "old_minus_best": round(rows[ROWS[2][0]]["ndcg@10"] - rows[best]["ndcg@10"], 4),
        }
        log(f"  table {name}: default - best single {out[name]['default_minus_best']:+.4f}")
    return out


def run_fusion(quick: bool = False, verbose: bool = False) -> dict:
    """The study, the choice and the pipeline's table; returns a JSON-serialisable dict."""
    from benchmarks.retrieval import ir_data as ir
    from llmds import retrieval_pipeline as rp

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    t = time.perf_counter()
    study = _study(ir, quick, log)
    choice = _choose(study, quick)
    table = _table(ir, log)
    return {
        "benchmark": "retrieval_fusion", "quick": quick,
        "choice": choice,
        "shipped_default": {"fusion": rp.DEFAULT_FUSION, "fusion_weight": rp.DEFAULT_FUSION_WEIGHT},
        "table": table,
        "study": study,
        "seconds": time.perf_counter() - t,
    }


def format_table(res: dict) -> str:
    lines = [
        "\n== hybrid fusion: nDCG@10 / R@100 of RetrievalPipeline (default tokenizer, "
        "precomputed MiniLM vectors, HNSW M=16 ef=50)",
        f"{'method':<28} " + " ".join(f"{n:>26}" for n in res["table"]),
    ]
    labels = list(next(iter(res["table"].values()))["rows"])
    for label in labels:
        cells = []
        for t in res["table"].values():
            m = t["rows"][label]
            cells.append(f"{m['ndcg@10']:.4f} / {m['recall@100']:.4f}".rjust(26))
        lines.append(f"{label:<28} " + " ".join(cells))
    for name, t in res["table"].items():
        lines.append(
            f"{name}: new default - best single ({t['best_single']}) nDCG@10 "
            f"{t['default_minus_best']:+.4f} (95% bootstrap {t['default_minus_best_ci95']}), "
            f"old default {t['old_minus_best']:+.4f}; {t['judged_queries']} judged queries")
    ch = res["choice"]
    lines.append(f"selection: {ch['rule']}")
    lines.append(f"chosen: {ch['chosen']}; holds on {CHECK_ON}: {'yes' if ch['check_passed'] else 'NO'}; "
                 f"shipped: {res['shipped_default']}")
    lines.append(f"{'candidate (study, numpy)':<26} {'worst margin':>12} {'mean nDCG':>10} "
                 f"{'plateau':>8} {'feasible':>8} {'check worst':>12}")
    for r in ch["ranking"][:12]:
        lines.append(f"{r['fusion']:<26} {r['worst_margin']:>+12.4f} {r['mean_ndcg@10']:>10.4f} "
                     f"{r['plateau_ndcg@10']:>8.4f} {str(r['feasible']):>8} "
                     f"{r['check_worst_margin']:>+12.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return part_main(__doc__, run_fusion, format_table, RESULTS,
                     "plain tokenizer only, coarser weight grid", argv, verbose=True)


if __name__ == "__main__":
    main()
