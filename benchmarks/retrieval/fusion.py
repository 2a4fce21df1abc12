"""Which hybrid fusion to ship: every shared collection, held-out ones, per-query weights.

Data: the three BEIR-layout collections of ``<data>/ir`` (msmarco, business-reports,
arcd; ``benchmarks.retrieval.ir_data``) with their precomputed all-MiniLM-L6-v2
vectors, and held-out collections made at run time and used for validation only
(``benchmarks.retrieval.heldout``: MS MARCO with random or another query's vectors,
misspelt queries, in made-up words, half in made-up words; drawn collections with
and without topics where one side is noise).  Only judged queries count.

1. **Study** (the choice, numpy, exact scores).  BM25 (the pipeline's index) and exact
   cosine score every document; each side's top 50 (top 500 for Recall@100) are
   fused by TMM with filled-in scores (``llmds.retrieval.fusion``) under a dense share
   from each candidate estimator, written out again here: the old fixed 0.9, RRF
   (k = 60), the collection prior alone, the prior moved by NQC, by NQC and one or
   both match strengths, NQC and match strengths without the prior, and an
   agreement gate (how far the two top-50 lists overlap beyond chance, Poisson)
   that picks the more reliable side alone when they do not.  Rule: keep the
   estimators within 0.005 nDCG@10 of the better single retriever on every shared
   collection; among them, the most held-out collections within 0.005 of theirs;
   ties by whether the issue's targets on the shared collections are reached
   (MS MARCO >= 0.80, arcd >= 0.73, business-reports >= 0.085), the worst held-out
   margin, then mean nDCG@10.  (The rule first written put the targets first; on
   the run of 2026-12-06 it picked ``prior+nqc``: 0.005 ahead of ``prior+nqc+match``
   on MS MARCO (0.804 against 0.799, the target 0.80), within tolerance on 5
   held-out sets against 7, and 0.12 behind on random query vectors.  The issue's
   first goal is never below the better retriever, so that comes first.)
   No estimator has a parameter fitted to judgments; they differ in which
   predictors they use.
2. **Table** (the shipped pipeline, HNSW M=16 ef=50): nDCG@10 and R@100 of BM25,
   dense, RRF, TMM w=0.9 and the default on every collection, the default's
   per-query dense shares (``RetrievalPipeline.fusion_weights``), the goal check
   (``>= best single - 0.005``; ``+ 0.01`` where the two are within 20%) and a
   paired bootstrap 95% interval of default minus the better single retriever.
3. **Plot** ``results/plots/retrieval_fusion_weights.png`` (``llmds.bench_runner``,
   also drawn by ``llmds bench retrieval``): each query's dense share against which
   side won it (nDCG@10 dense minus BM25), one panel per collection.
4. **Cost**: median single-query ``search`` (top_k=10, cache off) on MS MARCO,
   default against ``fusion="tmm"`` in interleaved rounds.

Run ``python -m benchmarks.retrieval.fusion [--quick]`` (``--quick``: no held-out
collection that needs the embedder, fewer timing rounds).  Importing has no side effects.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import add_out_arg, machine_info, needs_bench_extra, out_path, write_results

RESULTS = Path(__file__).resolve().parents[1] / "results" / "retrieval_fusion.json"
HNSW = dict(M=16, ef_construction=200, ef_search=50, seed=0)
TOLERANCE = 0.005
TARGETS = {"msmarco": 0.80, "arcd": 0.73, "business-reports": 0.085}
BASE = 0.9  # TMM's dense share on MS MARCO, the previous default
DEPTH = 50  # candidates per side the estimators read (fusion.QPP_DEPTH)


# ------------------------------------------------------------------ collections
def collections(ir, quick: bool, log) -> list:
    """Shared collections first (as ``heldout.Collection``), then the held-out ones."""
    from benchmarks.retrieval import heldout

    out = []
    for name in ir.COLLECTIONS:
        doc_ids, texts, qids, qtexts, qrels = ir.load_collection(name)
        X, Q = ir.load_embeddings(name)
        keep, rels = heldout.qrels_by_index(doc_ids, qids, qrels)
        out.append(heldout.Collection(name, list(texts), X, [qtexts[j] for j in keep], Q[keep],
                                      rels, "shared"))
    embed = None
    if not quick:
        from llmds.retrieval import embeddings

        if embeddings.is_available():
            emb = embeddings.MiniLMEmbedder(num_threads=2).load()
            embed = emb.embed_batch
        else:
            log("embed extra not installed: the ciphered and misspelt MS MARCO sets are skipped")
    t = time.perf_counter()
    out += heldout.derived(ir, embed)
    log(f"  derived MS MARCO sets in {time.perf_counter() - t:.0f} s")
    for kind in ("both", "dense-noise", "lexical-noise"):
        out.append(heldout.scattered(kind))
    for kind in ("both", "dense-blind", "dense-random", "lexical-noise"):
        out.append(heldout.topical(kind))
    return out


def _metrics(ir, ranked: list[int], rel: dict[int, int]) -> tuple[float, float]:
    q = {str(d): g for d, g in rel.items()}
    r = [str(d) for d in ranked]
    return ir.ndcg_at_k(r, q, 10), ir.recall_at_k(r, q, 100)


# ------------------------------------------------------------------ study
def _features(l: np.ndarray, d: np.ndarray, lo: np.ndarray, do: np.ndarray, floor: float,
              unit: float) -> dict:
    """The predictors of ``llmds.retrieval.fusion.adaptive_weight``, from each side's top 50."""
    ls, ds = l[lo[:DEPTH]], d[do[:DEPTH]]
    span = ds[0] - floor
    return {
        "nqc_d": ds.std() / span if span > 0 else 0.0,
        "nqc_l": ls.std() / ls[0],
        "match_d": min(1.0, max(0.0, span / (1.0 - floor))),
        "match_l": min(1.0, ls[0] / unit),
        "overlap": np.intersect1d(lo[:DEPTH], do[:DEPTH]).size,
        "chance": min(DEPTH, lo.size) * min(DEPTH, do.size) / l.size,
    }


def _odds(prior: float, rd: float, rl: float) -> float:
    a, b = prior * rd, (1.0 - prior) * rl
    return a / (a + b) if a + b > 0 else prior


def _poisson_cdf_below(k: int, lam: float) -> float:
    """P(X < k) for X ~ Poisson(lam): how unlikely an overlap of k is by chance."""
    term = total = math.exp(-lam)
    for i in range(1, k):
        term *= lam / i
        total += term
    return min(1.0, total) if k > 0 else 0.0


def _estimators() -> dict:
    """name -> f(features, prior) -> dense share (None: RRF)."""
    def full(f, p):
        return _odds(p, f["nqc_d"] * f["match_d"], f["nqc_l"] * f["match_l"])

    def gate(f, p):
        a = _poisson_cdf_below(f["overlap"], f["chance"])
        pick = 1.0 if p * f["nqc_d"] * f["match_d"] > (1 - p) * f["nqc_l"] * f["match_l"] else 0.0
        return a * full(f, p) + (1.0 - a) * pick

    return {
        "rrf k=60": None,
        "tmm w=0.9 (old default)": lambda f, p: BASE,
        "prior": lambda f, p: p,
        "prior+nqc": lambda f, p: _odds(p, f["nqc_d"], f["nqc_l"]),
        "prior+nqc+match_d": lambda f, p: _odds(p, f["nqc_d"] * f["match_d"], f["nqc_l"]),
        "prior+nqc+match_l": lambda f, p: _odds(p, f["nqc_d"], f["nqc_l"] * f["match_l"]),
        "prior+nqc+match": full,
        "nqc+match (no prior)": lambda f, p: full(f, BASE),
        "agreement gate": gate,
    }


def _study_one(ir, c) -> dict:
    from llmds.retrieval.inverted_index import InvertedIndex

    idx = InvertedIndex()
    idx.add_documents(enumerate(c.texts))
    every = list(range(len(c.texts)))
    L = np.stack([idx.score_documents(q, every).astype(np.float64) for q in c.queries])
    Xn = c.X.astype(np.float64)
    Xn /= np.linalg.norm(Xn, axis=1, keepdims=True)
    Qn = c.Q.astype(np.float64)
    Qn /= np.linalg.norm(Qn, axis=1, keepdims=True)
    D = Qn @ Xn.T
    m = Xn.mean(0)
    prior = BASE * min(1.0, max(0.0, 1.0 - float(m @ m)))
    unit = math.log(1.0 + (len(c.texts) - 0.5) / 1.5)
    ests = _estimators()
    per = {k: ([], []) for k in ["bm25", "dense", *ests]}
    for i in range(len(c.queries)):
        l, d = L[i], D[i]
        lo = np.lexsort((np.arange(l.size), -l))[:500]
        lo = lo[l[lo] > 0]
        do = np.lexsort((np.arange(d.size), -d))[:500]
        for name, ranked in (("bm25", lo), ("dense", do)):
            nd, rc = _metrics(ir, ranked.tolist(), c.qrels[i])
            per[name][0].append(nd)
            per[name][1].append(rc)
        f = _features(l, d, lo, do, float(Qn[i] @ m), unit) if lo.size > 1 else None
        for name, est in ests.items():
            nd_rc = []
            for cand, top in ((DEPTH, 10), (500, 100)):
                a, b = lo[:cand], do[:cand]
                if est is None:
                    ranked = _rrf(a, b)
                elif f is None:
                    ranked = b if not a.size else _tmm(l, d, a, b, BASE)
                else:
                    ranked = _tmm(l, d, a, b, est(f, prior))
                nd_rc.append(_metrics(ir, ranked.tolist(), c.qrels[i])[0 if top == 10 else 1])
            per[name][0].append(nd_rc[0])
            per[name][1].append(nd_rc[1])
    return {k: {"ndcg@10": float(np.mean(v[0])), "recall@100": float(np.mean(v[1]))}
            for k, v in per.items()}


def _tmm(l, d, lo, do, w) -> np.ndarray:
    u = np.union1d(lo, do)
    s = w * (d[u] + 1.0) / (d[do[0]] + 1.0) + (1.0 - w) * l[u] / l[lo[0]]
    return u[np.lexsort((u, -s))]


def _rrf(lo, do, k: int = 60) -> np.ndarray:
    u = np.union1d(lo, do)
    s = np.zeros(u.size)
    for side in (lo, do):
        s[np.searchsorted(u, side)] += 1.0 / (k + np.arange(1, side.size + 1))
    return u[np.lexsort((u, -s))]


def goal(bm25: float, dense: float) -> float:
    """The issue's goal: better single - 0.005; + 0.01 where the two are within 20%."""
    best, worst = max(bm25, dense), min(bm25, dense)
    return best + 0.01 if worst >= 0.8 * best else best - TOLERANCE


def _choose(study: dict) -> dict:
    names = [k for k in next(iter(study.values())) if k not in ("bm25", "dense")]
    held = [c for c in study if c not in TARGETS]
    rows = []
    def margin(c, name):
        return study[c][name]["ndcg@10"] - max(study[c]["bm25"]["ndcg@10"],
                                               study[c]["dense"]["ndcg@10"])

    for name in names:
        targets = all(study[c][name]["ndcg@10"] >= t for c, t in TARGETS.items() if c in study)
        margins = [margin(c, name) for c in held]
        rows.append({
            "estimator": name,
            "shared_within_tolerance": all(margin(c, name) >= -TOLERANCE for c in TARGETS
                                           if c in study),
            "shared_targets_met": targets,
            "heldout_within_tolerance": sum(m >= -TOLERANCE for m in margins),
            "heldout_worst_margin": round(min(margins), 4) if margins else 0.0,
            "mean_ndcg@10": round(float(np.mean([study[c][name]["ndcg@10"] for c in study])), 4),
        })
    rows.sort(key=lambda r: (r["shared_within_tolerance"], r["heldout_within_tolerance"],
                             r["shared_targets_met"], r["heldout_worst_margin"],
                             r["mean_ndcg@10"]), reverse=True)
    return {"rule": f"within {TOLERANCE} of the better single retriever on every shared "
                    "collection, then on the most held-out ones, then shared targets met, "
                    "then worst held-out margin, then mean nDCG@10",
            "chosen": rows[0]["estimator"], "held_out": len(held), "ranking": rows}


# ------------------------------------------------------------------ the shipped pipeline
ROWS = (  # (label, fusion, dense weight, use text, use vector)
    ("bm25", "tmm", 0.0, True, False),
    ("dense", "tmm", 1.0, False, True),
    ("rrf k=60", "rrf", 0.5, True, True),
    ("tmm w=0.9", "tmm", 0.9, True, True),
    ("default", None, None, True, True),
)


def _bootstrap(a: np.ndarray, b: np.ndarray, reps: int = 10_000, seed: int = 0) -> list[float]:
    """95% interval of mean(a - b) over queries resampled with replacement."""
    rng = np.random.default_rng(seed)
    d = a - b
    means = d[rng.integers(0, d.size, (reps, d.size))].mean(1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def _pipeline(c):
    from llmds.retrieval.pipeline import RetrievalPipeline

    pipe = RetrievalPipeline(c.X.shape[1], cache_token_budget=0, hot_capacity=0, **HNSW)
    pipe.add_documents(list(enumerate(c.texts)), c.X)
    return pipe


def _table_one(ir, c) -> dict:
    pipe = _pipeline(c)
    rows, per_query = {}, {}
    for label, fusion, w, use_text, use_vec in ROWS:
        qs = c.queries if use_text else [""] * len(c.queries)
        metrics = {}
        for top, key in ((10, "ndcg@10"), (100, "recall@100")):
            res = pipe.search_many(qs, c.Q if use_vec else None, top_k=top, fusion_weight=w,
                                   fusion=fusion)
            vals = [_metrics(ir, [d for d, _ in r], c.qrels[i])[0 if top == 10 else 1]
                    for i, r in enumerate(res)]
            metrics[key] = float(np.mean(vals))
            if top == 10:
                per_query[label] = np.array(vals)
        rows[label] = metrics
    weights = pipe.fusion_weights(c.queries, c.Q)
    b, d = rows["bm25"]["ndcg@10"], rows["dense"]["ndcg@10"]
    best = "bm25" if b >= d else "dense"
    g = goal(b, d)
    return {
        "documents": len(c.texts), "queries": len(c.queries), "note": c.note, "rows": rows,
        "best_single": best, "goal_ndcg@10": round(g, 4),
        "goal_met": rows["default"]["ndcg@10"] >= g,
        "within_tolerance": rows["default"]["ndcg@10"] >= rows[best]["ndcg@10"] - TOLERANCE,
        "default_minus_best": round(rows["default"]["ndcg@10"] - rows[best]["ndcg@10"], 4),
        "default_minus_best_ci95": _bootstrap(per_query["default"], per_query[best]),
        "weights": [round(x, 4) for x in weights],
        "mean_weight": round(float(np.mean(weights)), 4),
        "dense_minus_bm25": [round(float(x), 4)
                             for x in per_query["dense"] - per_query["bm25"]],
    }


def _latency(ir, rounds: int) -> dict:
    """Median ms of one search (top_k=10, cache off) on MS MARCO: default vs fixed TMM."""
    doc_ids, texts, qids, qtexts, qrels = ir.load_collection("msmarco")
    X, Q = ir.load_embeddings("msmarco")
    from llmds.retrieval.pipeline import RetrievalPipeline

    pipe = RetrievalPipeline(X.shape[1], cache_token_budget=0, **HNSW)
    pipe.add_documents(list(enumerate(texts)), X)
    pipe.search("warm up", Q[0])
    times: dict[str, list[float]] = {"default": [], "tmm": []}
    for _ in range(rounds):
        for label, fusion in (("default", None), ("tmm", "tmm")):
            for i, q in enumerate(qtexts):
                t = time.perf_counter()
                pipe.search(q, Q[i], top_k=10, fusion=fusion)
                times[label].append(time.perf_counter() - t)
    out = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    out["default_over_tmm"] = out["default"] / out["tmm"]
    out["samples"] = len(times["tmm"])
    return out


def run_fusion(quick: bool = False, verbose: bool = False) -> dict:
    """Study, choice, the pipeline's table and the cost; a JSON-serialisable dict."""
    from benchmarks.retrieval import ir_data as ir
    from llmds import retrieval_pipeline as rp

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    t = time.perf_counter()
    cols = collections(ir, quick, log)
    study, table = {}, {}
    for c in cols:
        study[c.name] = _study_one(ir, c)
        table[c.name] = _table_one(ir, c)
        log(f"  {c.name}: default - best single {table[c.name]['default_minus_best']:+.4f}, "
            f"mean dense share {table[c.name]['mean_weight']:.2f}")
    return {
        "benchmark": "retrieval_fusion", "quick": quick,
        "choice": _choose(study),
        "shipped_default": {"fusion": rp.DEFAULT_FUSION, "fusion_weight": rp.DEFAULT_FUSION_WEIGHT},
        "table": table,
        "study": study,
        "latency_ms": _latency(ir, 2 if quick else 10),
        "cpu": machine_info(),
        "seconds": time.perf_counter() - t,
    }


def format_table(res: dict) -> str:
    labels = [r[0] for r in ROWS]
    lines = [
        "\n== hybrid fusion: nDCG@10 / R@100 of RetrievalPipeline (precomputed or drawn vectors, "
        "HNSW M=16 ef=50); goal: default >= best single - 0.005 (+0.01 where within 20%)",
        f"{'collection':<24} " + " ".join(f"{x:>15}" for x in labels)
        + f" {'share':>6} {'goal':>6} {'met':>4}",
    ]
    for name, t in res["table"].items():
        cells = " ".join(f"{t['rows'][x]['ndcg@10']:.3f}/{t['rows'][x]['recall@100']:.3f}".rjust(15)
                         for x in labels)
        lines.append(f"{name:<24} {cells} {t['mean_weight']:>6.2f} {t['goal_ndcg@10']:>6.3f} "
                     f"{'yes' if t['goal_met'] else ('tol' if t['within_tolerance'] else 'NO'):>4}")
    ch = res["choice"]
    lines.append(f"selection: {ch['rule']}; chosen: {ch['chosen']}; shipped: {res['shipped_default']}")
    lines.append(f"{'estimator (study, exact scores)':<32} {'shared ok':>9} {'targets':>8} "
                 f"{'held-out ok':>11} {'worst':>8} {'mean nDCG':>9}")
    for r in ch["ranking"]:
        lines.append(f"{r['estimator']:<32} {str(r['shared_within_tolerance']):>9} "
                     f"{str(r['shared_targets_met']):>8} "
                     f"{r['heldout_within_tolerance']:>6}/{ch['held_out']:<4} "
                     f"{r['heldout_worst_margin']:>+8.4f} {r['mean_ndcg@10']:>9.4f}")
    names = list(res["study"])
    lines.append("study nDCG@10 per collection: " + ", ".join(names))
    for est in [r["estimator"] for r in ch["ranking"]]:
        lines.append(f"  {est:<30} " + " ".join(f"{res['study'][c][est]['ndcg@10']:.3f}"
                                                for c in names))
    lt = res["latency_ms"]
    lines.append(f"CPU: {res['cpu']['processor']} (AMX: {res['cpu']['amx']})")
    lines.append(f"search top_k=10 on MS MARCO (median of {lt['samples']}): default "
                 f"{lt['default']:.3f} ms, tmm {lt['tmm']:.3f} ms "
                 f"(default / tmm {lt['default_over_tmm']:.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="no held-out set that needs the embedder, fewer timing rounds")
    add_out_arg(ap, RESULTS)
    args = ap.parse_args(argv)
    with needs_bench_extra():
        res = run_fusion(quick=args.quick, verbose=True)
    print(format_table(res))
    path = write_results(out_path(args, RESULTS), res)
    if importlib.util.find_spec("matplotlib") is not None:
        from llmds.bench_runner import plot_results

        for png in plot_results(path.parent, only=(path.stem,)):
            print(f"plot: {png}")
    return res


if __name__ == "__main__":
    main()
