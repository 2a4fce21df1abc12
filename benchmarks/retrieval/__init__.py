"""Retrieval benchmarks, run together by ``python -m benchmarks.bench_retrieval``.

lexical (BM25 against bm25s, rank_bm25, tantivy), dense (HNSW against hnswlib and
faiss), hybrid (the pipeline on MS MARCO), fusion (which fusion to ship, every
collection), updates (single adds between searches, the pipeline lock); ab (the
search hot paths against another checkout); ir_data (the shared IR collections).
"""
