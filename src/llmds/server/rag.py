"""Everything the server and CLI use of retrieval, in one place: chunks, the hybrid index, RAG prompts.

``RagIndex`` holds the chunks of a document folder in a :class:`~llmds.RetrievalPipeline`
(BM25 + HNSW over all-MiniLM-L6-v2 embeddings, fused), keyed by chunk id.

RAG prompts put the retrieved chunks **first** (a system message), sorted by chunk id rather
than by score: any two requests that retrieve the same chunks start with the same tokens, so
the engine's prefix cache serves the chunks' KV blocks to the second one (``cached_tokens`` in
its usage, ``llmds:prefix_cache_hits`` in ``/metrics``).  The client's own system prompt, if
any, follows the chunks.

Chunking and the saved-index format here are an interim of this module; the retrieval work of
issue 11 (``llmds.chunking``, ``RetrievalPipeline.save/load``) replaces them in this file only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from llmds.errors import CorruptFileError, ValidationError

__all__ = ["Chunk", "RagIndex", "chunk_text", "collect_chunks", "default_docs", "rag_messages", "DOC_SUFFIXES"]

log = logging.getLogger(__name__)

DOC_SUFFIXES = (".md", ".txt", ".rst")
_FORMAT = "llmds-rag-index/1"
RAG_HEADER = ("Answer using the following documents when they are relevant. "
              "Each document starts with its source in brackets.\n\n")


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of one source document: ``text == source_text[start:end]``."""

    id: int
    source: str
    start: int
    end: int
    text: str


def chunk_text(text: str, max_words: int = 160, overlap_words: int = 32) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of about ``max_words`` words, preferring paragraph breaks.

    Paragraphs (blank-line separated) are packed whole while they fit; a longer paragraph is cut
    into windows of ``max_words`` words overlapping by ``overlap_words``.
    """
    spans: list[tuple[int, int]] = []
    cur: tuple[int, int] | None = None
    cur_words = 0
    for m in re.finditer(r"\S(?:.*?\S)??(?=\n\s*\n|\s*\Z)", text, flags=re.S):
        words = [w.span() for w in re.finditer(r"\S+", m.group())]
        n = len(words)
        if cur is not None and cur_words + n > max_words:
            spans.append(cur)
            cur, cur_words = None, 0
        if n > max_words:
            step = max(1, max_words - overlap_words)
            for i in range(0, n - overlap_words if n > max_words else 1, step):
                w = words[i:i + max_words]
                spans.append((m.start() + w[0][0], m.start() + w[-1][1]))
            continue
        cur = (m.start(), m.end()) if cur is None else (cur[0], m.end())
        cur_words += n
    if cur is not None:
        spans.append(cur)
    return spans


def default_docs() -> list[Path]:
    """The project's README and ``docs/`` when running from a source checkout; else nothing."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file():
        return []
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    if (root / "docs").is_dir():
        found += _doc_files(root / "docs")
    return found


def _doc_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES)


class RagIndex:
    """Chunks of documents in a hybrid retrieval pipeline (thread-safe searches)."""

    def __init__(self, chunks: list[Chunk], embedder: Any, embeddings: Any = None,
                 progress: Callable[[int, int], None] | None = None) -> None:
        import numpy as np

        from llmds.retrieval_pipeline import RetrievalPipeline

        self.chunks = {c.id: c for c in chunks}
        self.embedder = embedder
        if embeddings is None:
            texts = [c.text for c in chunks]
            parts = []
            for i in range(0, len(texts), 64):
                parts.append(embedder.embed_batch(texts[i:i + 64]))
                if progress is not None:
                    progress(min(i + 64, len(texts)), len(texts))
            embeddings = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.pipeline = RetrievalPipeline(embedding_dim=embedder.dim, embedder=embedder, seed=0)
        self.pipeline.add_documents([(c.id, c.text) for c in chunks], self.embeddings)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike], embedder: Any, max_words: int = 160,
                   progress: Callable[[int, int], None] | None = None) -> RagIndex:
        """Chunk every document file under ``paths`` (files or folders; .md/.txt/.rst) and index them."""
        return cls(collect_chunks(paths, max_words), embedder, progress=progress)

    # ------------------------------------------------------------- save / load
    def save(self, path: str | os.PathLike) -> None:
        """One ``.npz`` file: chunks as JSON and their embeddings (written atomically)."""
        import numpy as np

        path = Path(path)
        meta = json.dumps({"format": _FORMAT, "embedder": type(self.embedder).__name__,
                           "chunks": [asdict(c) for c in self.chunks.values()]})
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(meta.encode(), np.uint8), embeddings=self.embeddings)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, embedder: Any) -> RagIndex:
        import numpy as np

        try:
            with np.load(path) as z:
                meta = json.loads(z["meta"].tobytes().decode())
                emb = z["embeddings"]
            if meta.get("format") != _FORMAT:
                raise CorruptFileError(f"{path}: not an llmds RAG index ({meta.get('format')!r})")
            chunks = [Chunk(**c) for c in meta["chunks"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise ValidationError(f"no such index file: {path}") from None
            raise CorruptFileError(f"{path}: cannot read the RAG index ({exc})") from None
        if emb.shape != (len(chunks), embedder.dim):
            raise CorruptFileError(f"{path}: {emb.shape} embeddings for {len(chunks)} chunks")
        return cls(chunks, embedder, emb)

    # ------------------------------------------------------------------ search
    def search(self, query: str, top_k: int = 4) -> tuple[list[tuple[Chunk, float]], float]:
        """The ``top_k`` best chunks with their fused scores, best first, and the seconds it took."""
        t0 = time.perf_counter()
        hits = self.pipeline.search(query, top_k=top_k)
        return [(self.chunks[i], s) for i, s in hits], time.perf_counter() - t0

    def hot_chunks(self, threshold: int) -> list[int]:
        return self.pipeline.hot_documents(threshold)

    def __len__(self) -> int:
        return len(self.chunks)


def collect_chunks(paths: Iterable[str | os.PathLike], max_words: int = 160) -> list[Chunk]:
    """The chunks of every document file under ``paths`` (files or folders), ids in path order."""
    paths = list(paths)
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += _doc_files(p)
        elif p.is_file():
            files.append(p)
        else:
            raise ValidationError(f"no such document file or folder: {p}")
    chunks: list[Chunk] = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        for start, end in chunk_text(text, max_words):
            chunks.append(Chunk(len(chunks), f.name, start, end, text[start:end]))
    if not chunks:
        raise ValidationError(f"no text found in {[str(p) for p in paths]} (looked for {DOC_SUFFIXES})")
    return chunks


def rag_messages(messages: list[dict[str, str]], chunks: list[Chunk]) -> list[dict[str, str]]:
    """``messages`` with the chunks first, in chunk-id order (see the module docstring)."""
    docs = "\n\n".join(f"[{c.source}]\n{c.text}" for c in sorted(chunks, key=lambda c: c.id))
    system = [m["content"] for m in messages if m["role"] == "system"]
    content = RAG_HEADER + docs + ("\n\n" + "\n\n".join(system) if system else "")
    return [{"role": "system", "content": content}] + [m for m in messages if m["role"] != "system"]


def last_user_text(messages: list[dict[str, str]]) -> str | None:
    for m in reversed(messages):
        if m["role"] == "user" and m["content"].strip():
            return m["content"]
    return None
