"""Everything the server and CLI use of retrieval, in one place: the document index and RAG prompts.

``RagIndex`` holds the chunks of documents (:mod:`llmds.retrieval.chunking`: about 180 retrieval tokens,
cut at paragraph and sentence boundaries, with their source and character offsets) in one
:class:`~llmds.RetrievalPipeline` (BM25 + HNSW over all-MiniLM-L6-v2 embeddings, fused), chunk
id = document id.  ``save`` / ``load`` are the pipeline's own (one atomic, checksummed file; a
file of another format version or embedder fails with a clear error).  Searches are thread-safe
(the pipeline's lock), so the server calls them from its worker threads.

RAG prompts put the retrieved chunks **first** (a system message), sorted by chunk id rather
than by score: any two requests that retrieve the same chunks start with the same tokens, so
the engine's prefix cache serves the chunks' KV blocks to the second one (``cached_tokens`` in
its usage, ``llmds:prefix_cache_hits`` in ``/metrics``).  The client's own system prompt, if
any, follows the chunks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from llmds.errors import ValidationError

__all__ = ["RagIndex", "collect_chunks", "default_docs", "hit_json", "last_user_text", "rag_messages", "DOC_PATTERNS",
           "EMBED_MODEL", "EMBED_NAMES"]

DOC_PATTERNS = ("*.md", "*.txt", "*.rst")
EMBED_MODEL = "all-MiniLM-L6-v2"  # the embedding model's id in /v1/models
EMBED_NAMES = (EMBED_MODEL, "sentence-transformers/all-MiniLM-L6-v2")
RAG_HEADER = ("Answer using the following documents when they are relevant. "
              "Each document starts with its source in brackets.\n\n")


def default_docs() -> list[Path]:
    """The project's README and ``docs/`` when running from a source checkout; else nothing."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file():
        return []
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    if (root / "docs").is_dir():
        found.append(root / "docs")
    return found


def collect_chunks(paths: Iterable[str | os.PathLike], max_tokens: int = 180, overlap: int = 30) -> list:
    """The :class:`~llmds.retrieval.chunking.Chunk` s of every document under ``paths`` (files, or folders
    searched for .md/.txt/.rst), in path order; sources are file names (folder-relative paths)."""
    from llmds.retrieval.chunking import chunk_text, chunk_texts, read_folder

    chunks: list = []
    paths = list(paths)
    for p in map(Path, paths):
        if p.is_dir():
            chunks += chunk_texts(read_folder(p, DOC_PATTERNS), max_tokens=max_tokens, overlap=overlap)
        elif p.is_file():
            text = p.read_text(encoding="utf-8", errors="replace")
            chunks += chunk_text(text, p.name, max_tokens=max_tokens, overlap=overlap)
        else:
            raise ValidationError(f"no such document file or folder: {p}")
    if not chunks:
        raise ValidationError(f"no text found in {[str(p) for p in paths]} (looked for {DOC_PATTERNS})")
    return chunks


class RagIndex:
    """Document chunks in a hybrid retrieval pipeline (thread-safe searches)."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    @classmethod
    def build(cls, chunks: list, embedder: Any, progress: Callable[[int, int], None] | None = None) -> RagIndex:
        """Embed ``chunks`` (batches of 64, ``progress(done, total)`` after each) and index them."""
        import numpy as np

        from llmds.retrieval.pipeline import RetrievalPipeline

        texts = [c.text for c in chunks]
        parts = []
        for i in range(0, len(texts), 64):
            parts.append(embedder.embed_batch(texts[i:i + 64]))
            if progress is not None:
                progress(min(i + 64, len(texts)), len(texts))
        vecs = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
        pipeline = RetrievalPipeline(embedding_dim=embedder.dim, embedder=embedder, seed=0)
        pipeline.add_chunks(chunks, vecs)
        return cls(pipeline)

    @classmethod
    def empty(cls, embedder: Any) -> RagIndex:
        from llmds.retrieval.pipeline import RetrievalPipeline

        return cls(RetrievalPipeline(embedding_dim=embedder.dim, embedder=embedder, seed=0))

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike], embedder: Any,
                   progress: Callable[[int, int], None] | None = None) -> RagIndex:
        """Chunk every document under ``paths`` (see :func:`collect_chunks`) and index them."""
        return cls.build(collect_chunks(paths), embedder, progress)

    def add_text(self, text: str, source: str, embedder: Any) -> list:
        """Chunk, embed and index one more document (searches see it once this returns);
        its chunks."""
        from llmds.retrieval.chunking import chunk_text

        chunks = chunk_text(text, source)
        if not chunks:
            raise ValidationError("the document has no words to index")
        ids = self.pipeline.add_chunks(chunks, embedder.embed_batch([c.text for c in chunks]))
        return list(zip(ids, chunks))

    def save(self, path: str | os.PathLike) -> None:
        self.pipeline.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, embedder: Any) -> RagIndex:
        """Read an index written by :meth:`save` (``ValidationError`` for a missing file,
        ``CorruptFileError`` for a damaged or foreign one)."""
        from llmds.retrieval.pipeline import RetrievalPipeline

        if not os.path.isfile(path):
            raise ValidationError(f"no such index file: {path}")
        return cls(RetrievalPipeline.load(path, embedder=embedder))

    def search(self, query: str, top_k: int = 4) -> tuple[list, float]:
        """The ``top_k`` best chunks as :class:`~llmds.retrieval.pipeline.Hit` s (``doc_id``,
        fused ``score``, ``text``, ``metadata`` with source/start/end), best first, and the seconds
        it took."""
        t0 = time.perf_counter()
        hits = self.pipeline.retrieve(query, top_k=top_k)
        return hits, time.perf_counter() - t0

    def hot_chunks(self, threshold: int) -> list[int]:
        return self.pipeline.hot_documents(threshold)

    def __len__(self) -> int:
        return len(self.pipeline)


def hit_json(hit: Any) -> dict[str, Any]:
    """A hit as the server returns it: id, score, text, and the chunk's source and offsets."""
    meta = hit.metadata or {}
    return {"id": hit.doc_id, "score": hit.score, "text": hit.text, "source": meta.get("source"),
            "start": meta.get("start"), "end": meta.get("end")}


def rag_messages(messages: list[dict[str, str]], hits: list) -> list[dict[str, str]]:
    """``messages`` with the hits' texts first, in chunk-id order (see the module docstring)."""
    docs = "\n\n".join(f"[{(h.metadata or {}).get('source')}]\n{h.text}"
                       for h in sorted(hits, key=lambda h: h.doc_id))
    system = [m["content"] for m in messages if m["role"] == "system"]
    content = RAG_HEADER + docs + ("\n\n" + "\n\n".join(system) if system else "")
    return [{"role": "system", "content": content}] + [m for m in messages if m["role"] != "system"]


def last_user_text(messages: list[dict[str, str]]) -> str | None:
    for m in reversed(messages):
        if m["role"] == "user" and m["content"].strip():
            return m["content"]
    return None
