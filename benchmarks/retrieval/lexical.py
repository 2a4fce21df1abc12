"""Lexical retrieval benchmark: llmds InvertedIndex vs bm25s, rank_bm25 and tantivy.

Two workloads, each system measured side by side in one run:

1. MS MARCO subset (5,000 passages, 50 queries, graded qrels; see
   ``shared/data/README.md``): build docs/s, single-query and batched QPS,
   nDCG@10 and Recall@100 (``benchmarks.retrieval.ir_data``), top-10 overlap with bm25s.
2. Synthetic Zipf corpus (default 200,000 documents of 20-200 tokens drawn from a
   Zipf(1.1) vocabulary of 100,000 words, seeded) for scale: build time and QPS
   on two 1,000-query sets of 2-6 words: ``zipf`` (words drawn with the corpus
   distribution, so head words with huge posting lists are common) and ``rare``
   (words drawn uniformly from the vocabulary, i.e. mostly short posting lists).

Fairness notes (also written to the JSON):
* llmds is timed from raw text (its tokenizer included) for build and queries.
* bm25s and rank_bm25 get the *same* tokens, pre-tokenized by llmds' Tokenizer
  (tokenization excluded from their times).  bm25s: ``BM25(method="lucene",
  k1=1.5, b=0.75)``; "numba" = ``backend="numba"`` +
  ``backend_selection="numba"``, "numpy" = ``backend="numpy"`` +
  ``backend_selection="numpy"``, both serial (``n_threads=0``), one shared index.
* tantivy uses its own tokenizer at index time ("en_stem" on MS MARCO,
  "default" on the synthetic corpus), k1=1.2 / b=0.75 (not configurable),
  one writer thread, in-RAM index; a query is an OR of term queries built from
  the same query tokens; single-query timing returns doc addresses only.
* rank_bm25 (BM25Okapi, its own idf with an epsilon floor) is only run on
  MS MARCO, single-query.

Builds: median of 3 (MS MARCO) or a single build (synthetic).  Query loops:
interleaved rounds across all systems, median seconds per loop;
QPS = queries / median loop time.
Run: ``python -m benchmarks.retrieval.lexical [--quick]``.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import part_main
from benchmarks.retrieval.ir_data import skip_without_data

RESULTS_PATH = Path(__file__).resolve().parents[1] / "results" / "retrieval_lexical.json"
K1, B = 1.5, 0.75
REFERENCE = {  # figures from the issue, measured earlier on these machines
    "bm25s_numpy_qps_200k": 33,
    "bm25s_numba_qps_200k": "4.7k-6.7k",
    "tantivy_qps_200k": 15000,
    "tantivy_index_s_200k": 3.8,
}


# ---------------------------------------------------------------- helpers
def _median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _overlap(a: list[list[int]], b: list[list[int]], k: int = 10) -> float:
    vals = [len(set(x[:k]) & set(y[:k])) / max(1, min(k, len(y))) for x, y in zip(a, b) if y]
    return float(np.mean(vals)) if vals else float("nan")


def make_zipf_corpus(
    n_docs: int, vocab_size: int = 100_000, s: float = 1.1, n_queries: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Seeded synthetic corpus; words are base-26 letter strings ("a", "b", ..., "aa", ...)."""
    rng = np.random.default_rng(seed)
    p = np.arange(1, vocab_size + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(p / p.sum())

    def word(k: int) -> str:
        out = []
        k += 1
        while k:
            k, r = divmod(k - 1, 26)
            out.append(chr(97 + r))
        return "".join(out)

    words = np.array([word(k) for k in range(vocab_size)], dtype=object)

    def draw(n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(n)), vocab_size - 1)

    lens = rng.integers(20, 201, n_docs)
    ids = draw(int(lens.sum()))
    bounds = np.concatenate([[0], np.cumsum(lens)])
    tokens = [words[ids[bounds[i] : bounds[i + 1]]].tolist() for i in range(n_docs)]
    texts = [" ".join(t) for t in tokens]
    qlens = rng.integers(2, 7, n_queries)
    zq = draw(int(qlens.sum()))
    uq = rng.integers(0, vocab_size, int(qlens.sum()))
    qb = np.concatenate([[0], np.cumsum(qlens)])
    zipf_q = [words[zq[qb[i] : qb[i + 1]]].tolist() for i in range(n_queries)]
    rare_q = [words[uq[qb[i] : qb[i + 1]]].tolist() for i in range(n_queries)]
    return {"texts": texts, "tokens": tokens, "queries": {"zipf": zipf_q, "rare": rare_q}}


# ---------------------------------------------------------------- systems
# Each system gives a build function and, per query set, named timing closures
# {"single": fn, "batch": fn or None}; every closure returns ranked doc ids.
# Query timings are interleaved across systems and modes (repeat r runs every
# closure once) so that load changes on the shared machine hit all alike.


def _interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, min_round_s: float = 0.25
) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per call of every closure, measured in interleaved rounds.

    Each round calls every closure; a fast closure is called several times per
    round (enough for ``min_round_s``, at most 20) so that short bursts of load
    on the shared machine do not decide its median.
    """
    reps: dict[str, int] = {}
    for name, fn in fns.items():  # warm-up (numba compile, caches) and sizing
        t0 = time.perf_counter()
        fn()
        reps[name] = int(min(20, max(1, min_round_s // max(time.perf_counter() - t0, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    outs: dict[str, Any] = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(reps[name]):
                t0 = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, outs


def _llmds_build(texts, tokenizer_kwargs, repeats):
    from llmds.retrieval.inverted_index import InvertedIndex
    from llmds.retrieval.tokenizer import Tokenizer

    def build():
        idx = InvertedIndex(Tokenizer(**tokenizer_kwargs), k1=K1, b=B)
        idx.add_documents(enumerate(texts))
        idx.search("warm")  # the flat arrays are built lazily on the first search
        return idx

    return _median_seconds(build, repeats)


def _llmds_fns(idx, queries: list[str], k: int) -> dict[str, Callable[[], Any]]:
    def ranked(res):
        return [[d for d, _ in r] for r in res]

    return {
        "single": lambda: ranked([idx.search(q, k) for q in queries]),
        "batch": lambda: ranked(idx.search_many(queries, k)),
    }


def _bm25s_build(tokens, repeats):
    import bm25s

    def build():
        r = bm25s.BM25(method="lucene", k1=K1, b=B, backend="numba")
        r.index(tokens, show_progress=False)
        return r

    return _median_seconds(build, repeats)


def _bm25s_fns(retriever, qtokens, k, backend: str) -> dict[str, Callable[[], Any]]:
    r = copy.copy(retriever)  # same index, other retrieval backend
    r.backend = backend
    kw = {"k": k, "show_progress": False, "backend_selection": backend, "n_threads": 0}

    def ranked(docs, scores):  # bm25s pads with zero-score documents when fewer than k match
        return [[int(d) for d, s in zip(row, srow) if s > 0] for row, srow in zip(docs, scores)]

    def single():
        out = []
        for q in qtokens:
            d, s = r.retrieve([q], **kw)
            out += ranked(d, s)
        return out

    return {"single": single, "batch": lambda: ranked(*r.retrieve(qtokens, **kw))}


def _tantivy_build(texts, tokenizer_name, repeats):
    import tantivy

    def build():
        sb = tantivy.SchemaBuilder()
        sb.add_text_field("body", stored=False, tokenizer_name=tokenizer_name, index_option="freq")
        sb.add_unsigned_field("id", stored=True)
        schema = sb.build()
        index = tantivy.Index(schema)  # no path: in RAM
        writer = index.writer(heap_size=512_000_000, num_threads=1)
        for i, t in enumerate(texts):
            writer.add_document(tantivy.Document(id=i, body=t))
        writer.commit()
        writer.wait_merging_threads()
        index.reload()
        return schema, index

    return _median_seconds(build, repeats)


def _tantivy_fns(schema, index, qtokens, k) -> dict[str, Callable[[], Any]]:
    import tantivy

    searcher = index.searcher()

    def make(tokens):
        return tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(schema, "body", t)) for t in tokens]
        )

    # timed: search only, hits are (score, DocAddress); ids are fetched outside the timing
    return {"single": lambda: [searcher.search(make(q), k, count=False).hits for q in qtokens]}


def _tantivy_ids(index, hits) -> list[list[int]]:
    searcher = index.searcher()
    return [[searcher.doc(a)["id"][0] for _, a in h] for h in hits]


def _rank_bm25(tokens, qtokens, k, repeats) -> tuple[float, dict[str, Any]]:
    from rank_bm25 import BM25Okapi

    build_s, bm = _median_seconds(lambda: BM25Okapi(tokens, k1=K1, b=B), repeats)

    def run():
        out = []
        for q in qtokens:
            s = bm.get_scores(q)
            top = np.argpartition(-s, k - 1)[:k]
            top = top[np.lexsort((top, -s[top]))]
            out.append([int(d) for d in top if s[d] > 0])
        return out

    single_s, ranked = _median_seconds(run, repeats)
    return build_s, {"single_qps": len(qtokens) / single_s, "batch_qps": None, "ranked": ranked}


# ---------------------------------------------------------------- workloads
def _msmarco(repeats: int) -> dict[str, Any]:
    from benchmarks.retrieval.ir_data import evaluate, load_msmarco
    from llmds.retrieval.tokenizer import Tokenizer

    doc_ids, texts, qids, qtexts, qrels = load_msmarco()
    tok_kwargs = {"stopwords": "english", "stemmer": "english"}
    tok = Tokenizer(**tok_kwargs)
    ctoks = [tok.encode(t) for t in texts]
    qtoks = [tok.encode(q) for q in qtexts]
    k = 100  # for Recall@100; nDCG uses the first 10
    n_docs, nq = len(texts), len(qtexts)

    builds = {}
    builds["llmds"], idx = _llmds_build(texts, tok_kwargs, repeats)
    builds["bm25s"], ret = _bm25s_build(ctoks, repeats)
    builds["tantivy"], (schema, index) = _tantivy_build(texts, "en_stem", repeats)
    fns: dict[str, Callable[[], Any]] = {}
    for sys_name, f in (
        ("llmds", _llmds_fns(idx, qtexts, k)),
        ("bm25s-numba", _bm25s_fns(ret, qtoks, k, "numba")),
        ("bm25s-numpy", _bm25s_fns(ret, qtoks, k, "numpy")),
        ("tantivy", _tantivy_fns(schema, index, qtoks, k)),
    ):
        for mode, fn in f.items():
            fns[f"{sys_name}/{mode}"] = fn
    med, outs = _interleaved(fns, repeats)
    outs["tantivy/single"] = _tantivy_ids(index, outs["tantivy/single"])
    rb_build, rb = _rank_bm25(ctoks, qtoks, k, 1)

    rows: dict[str, dict[str, Any]] = {}
    ref = outs["bm25s-numba/single"]
    for sys_name, build_key in (
        ("llmds", "llmds"),
        ("bm25s-numba", "bm25s"),
        ("bm25s-numpy", "bm25s"),
        ("tantivy", "tantivy"),
        ("rank_bm25", None),
    ):
        if sys_name == "rank_bm25":
            row = {"build_s": rb_build, "single_qps": rb["single_qps"], "batch_qps": None}
            ranked = rb["ranked"]
        else:
            row = {
                "build_s": builds[build_key],
                "single_qps": nq / med[f"{sys_name}/single"],
                "batch_qps": nq / med[f"{sys_name}/batch"] if f"{sys_name}/batch" in med else None,
            }
            ranked = outs[f"{sys_name}/single"]
        row["build_docs_per_s"] = n_docs / row["build_s"]
        row.update(evaluate({q: [doc_ids[i] for i in r] for q, r in zip(qids, ranked)}, qrels))
        row["top10_overlap_bm25s"] = _overlap(ranked, ref)
        rows[sys_name] = row
    assert outs["llmds/single"] == outs["llmds/batch"]
    return {"num_docs": n_docs, "num_queries": nq, "tokenizer": tok_kwargs, "systems": rows}


def _synthetic(n_docs: int, n_queries: int, repeats: int, numpy_queries: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = make_zipf_corpus(n_docs, n_queries=n_queries)
    gen_s = time.perf_counter() - t0
    texts, tokens = data["texts"], data["tokens"]
    k = 10
    out: dict[str, Any] = {
        "num_docs": n_docs,
        "num_queries": n_queries,
        "generate_s": gen_s,
        "systems": {},
    }
    rows = out["systems"]

    b, idx = _llmds_build(texts, {}, 1)
    st = idx.stats()
    rows["llmds"] = {
        "build_s": b,
        "index_bytes": st["index_bytes"],
        "memory_bytes": st["memory_bytes"],
    }
    # Cost of one change on the big index (a new segment; benchmarks.retrieval.updates has more).
    probe = " ".join(data["queries"]["rare"][0])
    extra = iter(range(n_docs, n_docs + 100))

    def add_then_search():
        idx.add_document(next(extra), texts[0])
        return idx.search(probe)

    rows["llmds"]["add1_then_search_s"] = _median_seconds(add_then_search, 3)[0]
    victims = iter(range(n_docs))

    def remove_then_search():
        idx.remove_document(next(victims))
        return idx.search(probe)

    rows["llmds"]["remove1_then_search_s"] = _median_seconds(remove_then_search, 3)[0]
    b, ret = _bm25s_build(tokens, 1)
    rows["bm25s-numba"] = {"build_s": b}
    rows["bm25s-numpy"] = {"build_s": b, "queries_timed": numpy_queries}
    b, (schema, index) = _tantivy_build(texts, "default", 1)
    rows["tantivy"] = {"build_s": b}
    for r in rows.values():
        r["build_docs_per_s"] = n_docs / r["build_s"]
    for name, qs in data["queries"].items():
        fns: dict[str, Callable[[], Any]] = {}
        sizes = {}
        for sys_name, f, n in (
            ("llmds", _llmds_fns(idx, [" ".join(q) for q in qs], k), len(qs)),
            ("bm25s-numba", _bm25s_fns(ret, qs, k, "numba"), len(qs)),
            ("bm25s-numpy", _bm25s_fns(ret, qs[:numpy_queries], k, "numpy"), numpy_queries),
            ("tantivy", _tantivy_fns(schema, index, qs, k), len(qs)),
        ):
            sizes[sys_name] = n
            for mode, fn in f.items():
                fns[f"{sys_name}/{mode}"] = fn
        med, outs = _interleaved(fns, repeats)
        for sys_name, n in sizes.items():
            rows[sys_name][name] = {
                "single_qps": n / med[f"{sys_name}/single"],
                "batch_qps": n / med[f"{sys_name}/batch"] if f"{sys_name}/batch" in med else None,
            }
        rows["llmds"][name]["top10_overlap_bm25s"] = _overlap(
            outs["llmds/single"], outs["bm25s-numba/single"]
        )
        assert outs["llmds/single"] == outs["llmds/batch"]
    return out


def run_lexical(quick: bool = False) -> dict[str, Any]:
    """Run both workloads and return the results (nothing is printed or written).

    Parameters
    ----------
    quick : bool
        Smoke run: 20,000 synthetic documents, 200 queries per set.
    """
    repeats = 3
    n_docs, n_queries, numpy_q = (20_000, 200, 50) if quick else (200_000, 1000, 100)
    return {
        "benchmark": "retrieval_lexical",
        "quick": quick,
        "params": {"k1": K1, "b": B, "repeats": repeats},
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        "reference_from_issue": REFERENCE,
        "msmarco": skip_without_data(_msmarco, repeats),
        "synthetic": _synthetic(n_docs, n_queries, repeats, numpy_q),
    }


# ---------------------------------------------------------------- report
def _fmt(x: Any, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(res: dict[str, Any]) -> str:
    """The printed report: one table per workload, then the llmds ratios."""
    ms, sy = res["msmarco"], res["synthetic"]
    if "skipped" in ms:
        out = [f"MS MARCO subset: skipped ({ms['skipped']})"]
    else:
        out = [f"MS MARCO subset: {ms['num_docs']} docs, {ms['num_queries']} queries, {ms['tokenizer']}"]
        head = ("system", "build docs/s", "1-query QPS", "batch QPS", "nDCG@10", "R@100", "ovl@10")
        out.append("{:<13}{:>13}{:>13}{:>11}{:>9}{:>8}{:>8}".format(*head))
    for name, r in ms.get("systems", {}).items():
        out.append(
            f"{name:<13}{_fmt(r['build_docs_per_s']):>13}{_fmt(r['single_qps']):>13}"
            f"{_fmt(r['batch_qps']):>11}{r['ndcg@10']:>9.4f}{r['recall@100']:>8.4f}"
            f"{r['top10_overlap_bm25s']:>8.3f}"
        )
    n_docs, n_q = sy["num_docs"], sy["num_queries"]
    out += ["", f"Synthetic Zipf(1.1): {n_docs:,} docs, vocab 100,000, {n_q} queries per set"]
    head = ("system", "build s", "docs/s", "set", "1-query QPS", "batch QPS", "ovl@10")
    out.append("{:<13}{:>9}{:>10}{:>6}{:>13}{:>11}{:>8}".format(*head))
    for name, r in sy["systems"].items():
        for qs in ("zipf", "rare"):
            q, first = r[qs], qs == "zipf"
            out.append(
                f"{name if first else '':<13}"
                f"{_fmt(r['build_s'], '.2f') if first else '':>9}"
                f"{_fmt(r['build_docs_per_s']) if first else '':>10}{qs:>6}"
                f"{_fmt(q['single_qps']):>13}{_fmt(q['batch_qps']):>11}"
                f"{_fmt(q.get('top10_overlap_bm25s'), '.3f'):>8}"
            )
    s, m = sy["systems"], ms.get("systems")
    out.append("")
    if m is not None:
        ll, bn = m["llmds"], m["bm25s-numba"]
        out.append(
            f"MS MARCO: llmds/bm25s-numba single {ll['single_qps'] / bn['single_qps']:.2f}x, "
            f"batch {ll['batch_qps'] / bn['batch_qps']:.2f}x, nDCG@10 diff "
            f"{ll['ndcg@10'] - bn['ndcg@10']:+.4f}; llmds/tantivy single "
            f"{ll['single_qps'] / m['tantivy']['single_qps']:.2f}x"
        )
    for qs in ("zipf", "rare"):
        ll, bn, tv = s["llmds"][qs], s["bm25s-numba"][qs], s["tantivy"][qs]
        out.append(
            f"synthetic {qs}: llmds/bm25s-numba single {ll['single_qps'] / bn['single_qps']:.2f}x, "
            f"batch {ll['batch_qps'] / bn['batch_qps']:.2f}x; "
            f"llmds/tantivy single {ll['single_qps'] / tv['single_qps']:.2f}x"
        )
    ll = s["llmds"]
    out += [
        (
            f"build time: llmds/tantivy {ll['build_s'] / s['tantivy']['build_s']:.2f}x, "
            f"llmds/bm25s {ll['build_s'] / s['bm25s-numba']['build_s']:.2f}x"
        ),
        (
            f"llmds change on the built index (a new small segment): add 1 doc + search "
            f"{ll['add1_then_search_s'] * 1e3:.0f} ms, remove 1 doc + search "
            f"{ll['remove1_then_search_s'] * 1e3:.0f} ms"
        ),
        (
            f"llmds postings: {ll['index_bytes'] / 2**20:.1f} MiB delta+varint (saved), "
            f"{ll['memory_bytes'] / 2**20:.1f} MiB flat search arrays"
        ),
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    return part_main(
        __doc__, run_lexical, format_table, RESULTS_PATH,
        "small synthetic corpus (20,000 docs, 200 queries)", argv,
    )


if __name__ == "__main__":
    main()
