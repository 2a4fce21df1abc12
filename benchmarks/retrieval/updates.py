"""Live updates: single-document adds interleaved with searches, and what the lock costs.

Three parts, each measured side by side in one run:

1. **Lexical, 200,000 Zipf documents** (``benchmarks.retrieval.lexical.make_zipf_corpus``;
   ``--quick``: 20,000).  ``pairs`` times: add one document, then run one query
   (``rare`` probe queries, as the earlier ``add1_then_search`` figure, and
   ``zipf`` queries with head terms); mean and median milliseconds per
   add+search pair for
   * llmds segments (the shipped policy),
   * llmds with the previous policy, *rebuild on change*, emulated in the same
     code by merging every segment into one at each flush (``merge_ratio =
     inf``: the O(postings) merge and tf-part pass the old flat arrays paid;
     ``rebuild_pairs`` pairs, it is slow),
   * tantivy (the peer): ``add_document`` + ``commit`` + ``reload`` + search per pair.
   Then search QPS on the index as the adds left it (several segments) and after
   merging it into one segment, against the fresh index: merging restores the
   original speed.
2. **Pipeline, MS MARCO** (5,000 passages with their MiniLM vectors, HNSW M=16,
   ef_construction=200): 4,000 documents indexed, then the other 1,000 added one
   at a time (text + vector) between searches, and 500 replacements (remove +
   add again: HNSW repairs and reuses slots).  Per-pair milliseconds, segments
   vs rebuild-on-change.
3. **Lock**: ``RetrievalPipeline`` serialises index access with one RLock
   (the numba kernels hold the GIL, so readers could not overlap anyway).  Its
   cost: uncontended acquire+release time x acquisitions per search against the
   search latency, and total search throughput of 1, 2 and 4 reader threads,
   alone and with a writer adding documents.

The "before" of the issue (the previous code's rebuild) is also measured by
running part 1 against a checkout of the previous version (see docs/benchmarks.md).

Run ``python -m benchmarks.retrieval.updates [--quick]``; prints tables and
writes ``benchmarks/results/retrieval_updates.json``.  Importing has no side effects.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path


from benchmarks._common import part_main, ratio_rule, require_bench_extra

RESULTS = Path(__file__).resolve().parents[1] / "results" / "retrieval_updates.json"


def _ms(ts: list[float]) -> dict:
    return {"mean_ms": 1e3 * statistics.fmean(ts), "median_ms": 1e3 * statistics.median(ts),
            "pairs": len(ts)}


def _pairs(idx, texts, queries, first_id: int, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        idx.add_document(first_id + i, texts[i % len(texts)])
        idx.search(queries[i % len(queries)], 10)
        out.append(time.perf_counter() - t)
    return out


def _qps(idx, queries, rounds: int = 5) -> float:
    best = []
    for _ in range(rounds):
        t = time.perf_counter()
        for q in queries:
            idx.search(q, 10)
        best.append(time.perf_counter() - t)
    return len(queries) / statistics.median(best)


def _tantivy(texts, queries, n: int, first_id: int) -> dict:
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("body", stored=False, tokenizer_name="default", index_option="freq")
    sb.add_unsigned_field("id", stored=True)
    schema = sb.build()
    index = tantivy.Index(schema)
    writer = index.writer(heap_size=512_000_000, num_threads=1)
    for i, t in enumerate(texts):
        writer.add_document(tantivy.Document(id=i, body=t))
    writer.commit()  # (no wait_merging_threads: it consumes the writer)
    index.reload()
    qs = [tantivy.Query.boolean_query([(tantivy.Occur.Should, tantivy.Query.term_query(
        schema, "body", w)) for w in q.split()]) for q in queries]
    out = []
    for i in range(n):
        t = time.perf_counter()
        writer.add_document(tantivy.Document(id=first_id + i, body=texts[i % len(texts)]))
        writer.commit()
        index.reload()
        index.searcher().search(qs[i % len(qs)], 10, count=False)
        out.append(time.perf_counter() - t)
    return _ms(out)


def _lexical(quick: bool, pairs: int, rebuild_pairs: int, log) -> dict:
    from benchmarks.retrieval.lexical import make_zipf_corpus
    from llmds.retrieval.inverted_index import InvertedIndex

    n_docs = 20_000 if quick else 200_000
    data = make_zipf_corpus(n_docs, n_queries=1000)
    texts = data["texts"]
    qsets = {name: [" ".join(q) for q in qs] for name, qs in data["queries"].items()}
    out: dict = {"documents": n_docs, "pairs": pairs, "query_sets": {}}
    for qname in ("rare", "zipf"):
        qs = qsets[qname]
        row: dict = {}
        idx = InvertedIndex()
        t = time.perf_counter()
        idx.add_documents(enumerate(texts))
        idx.search("warm up")
        row["build_s"] = time.perf_counter() - t
        row["fresh_qps"] = _qps(idx, qs)
        row["llmds_segments"] = _ms(_pairs(idx, texts, qs, n_docs, pairs))
        row["segments_after"] = idx.stats().get("num_segments")
        row["after_adds_qps"] = _qps(idx, qs)
        if hasattr(idx, "_compact"):
            idx._flush()
            idx._compact()  # merge everything into one segment
            row["merged_qps"] = _qps(idx, qs)
            idx._seg.merge_ratio = float("inf")  # the previous policy: rebuild at each change
            row["llmds_rebuild_on_change"] = _ms(_pairs(idx, texts, qs, 10 * n_docs, rebuild_pairs))
        row["tantivy"] = _tantivy(texts, qs, min(pairs, 200), n_docs)
        seg = row["llmds_segments"]["mean_ms"]
        row["ratio_vs_rebuild"] = (row.get("llmds_rebuild_on_change", {}).get("mean_ms", seg) / seg)
        row["ratio_vs_tantivy"] = row["tantivy"]["mean_ms"] / seg
        out["query_sets"][qname] = row
        log(f"  lexical {qname}: {seg:.3f} ms/pair (segments), "
            f"{row.get('llmds_rebuild_on_change', {}).get('mean_ms', float('nan')):.1f} (rebuild), "
            f"tantivy {row['tantivy']['mean_ms']:.2f}")
    return out


def _pipeline_part(quick: bool, log) -> dict:
    from benchmarks.retrieval import ir_data
    from llmds.retrieval.pipeline import RetrievalPipeline

    _, texts, _, qtexts, _ = ir_data.load_collection("msmarco")
    X, Q = ir_data.load_embeddings("msmarco")
    base, extra = (1000, 200) if quick else (4000, 1000)
    out = {"documents": base, "adds": extra}
    for policy in ("segments", "rebuild_on_change"):
        p = RetrievalPipeline(X.shape[1], M=16, ef_construction=200, ef_search=50, seed=0,
                              cache_token_budget=0)
        p.add_documents(list(enumerate(texts[:base])), X[:base])
        p.search("warm up", Q[0])
        if policy == "rebuild_on_change":
            p._index._seg.merge_ratio = float("inf")
        adds, repl = [], []
        for j in range(extra):
            i = base + j
            t = time.perf_counter()
            p.add_document(i, texts[i], X[i])
            p.search(qtexts[j % len(qtexts)], Q[j % len(Q)], top_k=10)
            adds.append(time.perf_counter() - t)
        for j in range(extra // 2):  # replacement: remove, add the same id with a new text
            t = time.perf_counter()
            p.remove_document(j)
            p.add_document(j, texts[j] + " revised", X[j])
            p.search(qtexts[j % len(qtexts)], Q[j % len(Q)], top_k=10)
            repl.append(time.perf_counter() - t)
        out[policy] = {"add_search": _ms(adds), "replace_search": _ms(repl),
                       "hnsw_nodes": int(p._hnsw._count), "hnsw_live": len(p._hnsw)}
        log(f"  pipeline {policy}: add+search {out[policy]['add_search']['mean_ms']:.2f} ms, "
            f"replace+search {out[policy]['replace_search']['mean_ms']:.2f} ms")
    out["ratio_vs_rebuild"] = (out["rebuild_on_change"]["add_search"]["mean_ms"]
                               / out["segments"]["add_search"]["mean_ms"])
    return out


def _lock_part(quick: bool, log) -> dict:
    from benchmarks.retrieval import ir_data
    from llmds.retrieval.pipeline import RetrievalPipeline

    _, texts, _, qtexts, _ = ir_data.load_collection("msmarco")
    X, Q = ir_data.load_embeddings("msmarco")
    p = RetrievalPipeline(X.shape[1], M=16, ef_construction=200, seed=0, cache_token_budget=0)
    n = 2000 if quick else 4500
    p.add_documents(list(enumerate(texts[:n])), X[:n])
    p.search("warm up", Q[0])
    lat = []
    for _ in range(3):
        for i, q in enumerate(qtexts):
            t = time.perf_counter()
            p.search(q, Q[i], top_k=10)
            lat.append(time.perf_counter() - t)
    lock = threading.RLock()
    reps = 200_000
    t = time.perf_counter()
    for _ in range(reps):
        with lock:
            pass
    per_lock = (time.perf_counter() - t) / reps
    acquisitions = 3  # cache lookup, search, hit counting
    out = {"search_ms": 1e3 * statistics.median(lat), "lock_us": 1e6 * per_lock,
           "acquisitions_per_search": acquisitions}
    out["lock_share_of_search"] = acquisitions * per_lock / statistics.median(lat)
    duration = 1.0 if quick else 3.0
    for writer in (False, True):
        for k in (1, 2, 4):
            counts = [0] * k
            stop = threading.Event()

            def reader(r: int) -> None:
                i = r
                while not stop.is_set():
                    p.search(qtexts[i % 50], Q[i % 50], top_k=10)
                    counts[r] += 1
                    i += k

            def write() -> None:
                i = n
                while not stop.is_set() and i < len(texts):
                    p.add_document(i, texts[i], X[i])
                    i += 1
                    time.sleep(0.002)  # a steady trickle of documents (~500/s at most)

            threads = [threading.Thread(target=reader, args=(r,)) for r in range(k)]
            if writer:
                threads.append(threading.Thread(target=write))
            for th in threads:
                th.start()
            time.sleep(duration)
            stop.set()
            for th in threads:
                th.join()
            out[f"qps_{k}_readers{'_with_writer' if writer else ''}"] = sum(counts) / duration
            if writer:
                for i in range(n, len(texts)):
                    if i in p:
                        p.remove_document(i)
    log(f"  lock {out['lock_us']:.3f} us x {acquisitions} per {out['search_ms']:.3f} ms search")
    return out


def run_updates(quick: bool = False, verbose: bool = False, pairs: int | None = None,
                rebuild_pairs: int | None = None) -> dict:
    """All three parts; returns a JSON-serialisable dict."""
    require_bench_extra("tantivy")
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    pairs = pairs or (200 if quick else 1000)
    rebuild_pairs = rebuild_pairs or (10 if quick else 30)
    return {
        "benchmark": "retrieval_updates", "quick": quick,
        "lexical": _lexical(quick, pairs, rebuild_pairs, log),
        "pipeline": _pipeline_part(quick, log),
        "lock": _lock_part(quick, log),
    }


def format_table(res: dict) -> str:
    lx = res["lexical"]
    lines = [f"\n== single-document add + search, InvertedIndex with {lx['documents']:,} Zipf "
             f"documents ({lx['pairs']} pairs; "
             + ratio_rule("other's ms per pair / llmds segments' ms per pair") + ")",
             f"{'queries':<6} {'segments ms':>12} {'median':>8} {'rebuild ms':>11} "
             f"{'tantivy ms':>11} {'ratio rebuild':>14} {'ratio tantivy':>14} "
             f"{'qps fresh':>10} {'after adds':>10} {'merged':>9}"]
    for q, r in lx["query_sets"].items():
        rb = r.get("llmds_rebuild_on_change", {}).get("mean_ms", float("nan"))
        lines.append(f"{q:<6} {r['llmds_segments']['mean_ms']:>12.3f} "
                     f"{r['llmds_segments']['median_ms']:>8.3f} {rb:>11.1f} "
                     f"{r['tantivy']['mean_ms']:>11.2f} {r['ratio_vs_rebuild']:>14.0f} "
                     f"{r['ratio_vs_tantivy']:>14.1f} {r['fresh_qps']:>10,.0f} "
                     f"{r['after_adds_qps']:>10,.0f} {r.get('merged_qps', float('nan')):>9,.0f}")
    pp = res["pipeline"]
    lines.append(f"\n== RetrievalPipeline, MS MARCO: {pp['documents']} docs + {pp['adds']} single "
                 "adds (text + 384-d vector) between searches, then replacements ("
                 + ratio_rule("rebuild ms / segments ms") + ")")
    for pol in ("segments", "rebuild_on_change"):
        r = pp[pol]
        lines.append(f"{pol:<18} add+search {r['add_search']['mean_ms']:.2f} ms "
                     f"(median {r['add_search']['median_ms']:.2f}), replace+search "
                     f"{r['replace_search']['mean_ms']:.2f} ms; HNSW nodes {r['hnsw_nodes']} "
                     f"for {r['hnsw_live']} live")
    lines.append(f"ratio {pp['ratio_vs_rebuild']:.1f}")
    lk = res["lock"]
    lines.append(f"\n== pipeline lock: {lk['lock_us']:.3f} us per acquire+release x "
                 f"{lk['acquisitions_per_search']} per search of {lk['search_ms']:.3f} ms "
                 f"({100 * lk['lock_share_of_search']:.2f}% of a search)")
    lines.append("search throughput (q/s): " + ", ".join(
        f"{k.removeprefix('qps_').replace('_', ' ')} {v:,.0f}"
        for k, v in lk.items() if k.startswith("qps_")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return part_main(__doc__, run_updates, format_table, RESULTS,
                     "20k documents, 200 pairs, shorter lock runs", argv, verbose=True)


if __name__ == "__main__":
    main()
