"""Retrieval: BM25, HNSW, their fusion and the pipeline that serves RAG prompts.

Public modules (the seed paths ``llmds.tokenizer``, ``llmds.inverted_index``,
``llmds.hnsw``, ``llmds.retrieval_pipeline``, ``llmds.fusion``, ``llmds.chunking``
and ``llmds.embeddings`` re-export them)::

    tokenizer        Tokenizer: lowercase words, optional stop words and stemming
    inverted_index   InvertedIndex: BM25 over log-structured segments
    hnsw             HNSW: approximate nearest neighbours
    fusion           tmm / weighted / rrf fusion of a dense and a lexical list
    hybrid           HybridIndex: both indexes over the same documents, fused search
    pipeline         RetrievalPipeline: HybridIndex + embedder, lock, result cache, hit counts
    pipeline_config  PipelineConfig, Hit and the pipeline's input checks
    chunking         documents into retrieval-sized chunks with offsets
    embeddings       the offline MiniLM embedder and the embedder adapter

Machinery (private)::

    _wordtable       bulk word -> id tokenizing (numba)
    _index_store     the BM25 index's arrays: slots, df, forward index, segments
    _segments        log-structured posting segments and their merge policy
    _postings        posting kernels: varint codec, segment build and merge (numba)
    _bm25_kernels    BM25 search with MaxScore pruning (numba)
    _topk_kernels    top-k heaps of the BM25 kernels (numba)
    _index_io        the BM25 index's saved form
    _hnsw_graph      the HNSW graph's arrays, growth and saved form
    _hnsw_kernels    HNSW insert, repair and search (numba)
    _result_cache    the pipeline's result cache
    _pipeline_io     the pipeline's saved file
    _binfmt          versioned, checksummed, atomic array files (no pickle)
    _docs            doc id and (doc_id, text) checks

Importing this package imports nothing; names below load their module on first use.
"""

from __future__ import annotations

from llmds._lazy import lazy_exports

_EXPORTS = {
    "Tokenizer": "llmds.retrieval.tokenizer",
    "InvertedIndex": "llmds.retrieval.inverted_index",
    "HNSW": "llmds.retrieval.hnsw",
    "HybridIndex": "llmds.retrieval.hybrid",
    "RetrievalPipeline": "llmds.retrieval.pipeline",
    "PipelineConfig": "llmds.retrieval.pipeline_config",
    "Hit": "llmds.retrieval.pipeline_config",
    "Chunk": "llmds.retrieval.chunking",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("llmds.retrieval", _EXPORTS, globals())
