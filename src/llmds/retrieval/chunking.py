"""Split texts into overlapping chunks of about N tokens for retrieval (RAG ingestion).

A token is a word of the retrieval tokenizer (:meth:`llmds.retrieval.tokenizer.Tokenizer.words`:
a run of Unicode word characters), so ``max_tokens`` is what BM25 indexes of
each chunk.  A chunk never has more than ``max_tokens`` tokens; where it ends is
chosen, in this order of preference, at the last paragraph break (a blank line),
else the last sentence end (``. ! ?`` and CJK full stops, followed by space),
else the last line break, found after at least half of ``max_tokens``; failing
all three it ends after exactly ``max_tokens`` tokens.  The next chunk starts
``overlap`` tokens before that end, moved forward to the first sentence start in
that window when there is one, so overlaps begin on a sentence where possible.

Each :class:`Chunk` keeps its ``source`` and the character offsets ``start:end``
of its text in the source text (``source_text[start:end] == chunk.text``), so a
RAG answer can cite where it came from.

The default 180 tokens fits all-MiniLM-L6-v2's 256 word-piece window (English
averages ~1.3 word pieces a word), so the embedding sees the whole chunk.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmds._checks import check_int
from llmds.errors import ValidationError

__all__ = ["Chunk", "chunk_folder", "chunk_text", "chunk_texts", "read_folder"]

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+", re.UNICODE)
_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE = re.compile(r"[.!?。！？][\"'”’)\]]*(?=\s|$)")
_LINE = re.compile(r"\n")
DEFAULT_PATTERNS = ("*.txt", "*.md", "*.rst")


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a source text: ``text == source_text[start:end]``; ``index`` counts the
    chunks of one source from 0; ``tokens`` is its number of tokenizer words."""

    text: str
    source: str | None
    start: int
    end: int
    index: int
    tokens: int

    def metadata(self) -> dict[str, Any]:
        """What ``RetrievalPipeline.add_chunks`` stores with the chunk."""
        return {"source": self.source, "start": self.start, "end": self.end, "chunk": self.index}


def _boundaries(text: str, starts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per word j: strength of the boundary after it (3 paragraph, 2 sentence, 1 line,
    0 none) and the character where a chunk ending there stops."""
    strength = np.zeros(n, np.int8)
    stop = np.zeros(n, np.int64)
    for level, pattern in ((1, _LINE), (2, _SENTENCE), (3, _PARAGRAPH)):
        for m in pattern.finditer(text):
            j = int(np.searchsorted(starts, m.start(), side="right")) - 1
            if 0 <= j < n and strength[j] < level:
                strength[j] = level
                if level == 2:
                    stop[j] = m.end()
    return strength, stop


def chunk_text(text: str, source: str | None = None, *, max_tokens: int = 180,
               overlap: int = 30) -> list[Chunk]:
    """Chunks of ``text`` (see the module docstring); ``[]`` if it has no word.

    Raises
    ------
    ValidationError
        ``text`` not a str, ``max_tokens < 1`` or ``overlap`` not in ``[0, max_tokens)``.
    """
    if not isinstance(text, str):
        raise ValidationError(f"text must be str, got {type(text).__name__}")
    if source is not None and not isinstance(source, str):
        raise ValidationError(f"source must be a str or None, got {source!r}")
    max_tokens = check_int("max_tokens", max_tokens, 1)
    overlap = check_int("overlap", overlap, 0, max_tokens - 1)
    spans = [m.span() for m in _WORD.finditer(text)]
    n = len(spans)
    if not n:
        return []
    starts = np.fromiter((a for a, _ in spans), np.int64, n)
    ends = np.fromiter((b for _, b in spans), np.int64, n)
    strength, stop = _boundaries(text, starts, n)
    stop = np.where(stop > 0, stop, ends)
    out: list[Chunk] = []
    i = 0
    while True:
        if n - i <= max_tokens:  # the rest fits: one last chunk
            a, b = int(starts[i]), len(text.rstrip())
            out.append(Chunk(text[a:b], source, a, b, len(out), n - i))
            return out
        lo, hi = i + max(1, max_tokens // 2) - 1, i + max_tokens - 1  # last word of the chunk
        window = strength[lo:hi + 1]
        best = int(window.max())
        j = hi if best == 0 else lo + int(np.flatnonzero(window == best)[-1])
        a, b = int(starts[i]), int(stop[j])
        out.append(Chunk(text[a:b], source, a, b, len(out), j - i + 1))
        nxt = max(i + 1, j + 1 - overlap)
        if nxt <= j:  # start the overlap on a sentence if one starts inside it
            sent = np.flatnonzero(strength[nxt - 1:j] >= 2)
            if sent.size:
                nxt = nxt + int(sent[0])
        i = nxt


def chunk_texts(items: Iterable[tuple[str, str]], *, max_tokens: int = 180,
                overlap: int = 30) -> list[Chunk]:
    """Chunks of many ``(source, text)`` pairs, in order."""
    out: list[Chunk] = []
    for source, text in items:
        out.extend(chunk_text(text, source, max_tokens=max_tokens, overlap=overlap))
    return out


def read_folder(path: str | os.PathLike, patterns: Iterable[str] = DEFAULT_PATTERNS,
                encoding: str = "utf-8") -> Iterator[tuple[str, str]]:
    """``(relative posix path, text)`` of every file under ``path`` matching ``patterns``,
    sorted by path; a file that does not decode is skipped with a warning.

    Raises
    ------
    ValidationError
        ``path`` is not a directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValidationError(f"{os.fspath(path)!r} is not a directory")
    files = sorted({f for pat in patterns for f in root.rglob(pat) if f.is_file()})
    for f in files:
        try:
            text = f.read_text(encoding=encoding)
        except UnicodeDecodeError as exc:
            log.warning("skipping %s: not %s text (%s)", f, encoding, exc)
            continue
        yield f.relative_to(root).as_posix(), text


def chunk_folder(path: str | os.PathLike, patterns: Iterable[str] = DEFAULT_PATTERNS, *,
                 max_tokens: int = 180, overlap: int = 30, encoding: str = "utf-8") -> list[Chunk]:
    """Chunks of every text file under ``path`` (``read_folder``), sources relative to it."""
    return chunk_texts(read_folder(path, patterns, encoding), max_tokens=max_tokens,
                       overlap=overlap)
