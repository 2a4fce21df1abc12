"""llmds.retrieval.chunking: offsets, token bounds, coverage, preferred boundaries, folders."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.retrieval.chunking import chunk_folder, chunk_text, chunk_texts
from llmds.errors import ValidationError
from llmds.retrieval.tokenizer import Tokenizer

WORD = re.compile(r"\w+")


def words(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in WORD.finditer(text)]


pieces = st.sampled_from(["alpha", "beta", "Ünï", "日本", "x1", "the", "end.", "stop!", "why?",
                          "\n", "\n\n", " ", ", ", "(note)", "“quote.”"])
texts = st.lists(pieces, max_size=300).map(" ".join)


@settings(max_examples=120, deadline=None)
@given(texts, st.integers(1, 40), st.data())
def test_chunks_are_exact_slices_within_budget_and_cover_every_word(text, max_tokens, data):
    overlap = data.draw(st.integers(0, max_tokens - 1))
    chunks = chunk_text(text, "src", max_tokens=max_tokens, overlap=overlap)
    spans = words(text)
    if not spans:
        assert chunks == []
        return
    covered = set()
    prev_last = chunks_first = -1
    for i, c in enumerate(chunks):
        assert c.text == text[c.start:c.end] and c.source == "src" and c.index == i
        inside = [k for k, (a, b) in enumerate(spans) if a >= c.start and b <= c.end]
        assert len(inside) == c.tokens == len(Tokenizer().words(c.text)) <= max_tokens
        if i:  # consecutive chunks overlap by at most `overlap` words and always advance
            assert inside[0] > chunks_first and inside[0] >= prev_last + 1 - overlap
        chunks_first = inside[0]
        prev_last = inside[-1]
        covered.update(inside)
    assert covered == set(range(len(spans)))


def test_prefers_paragraph_then_sentence_boundaries():
    para = " ".join(["word"] * 49) + " last."
    text = "\n\n".join([para] * 4)  # paragraphs of 50 words
    chunks = chunk_text(text, max_tokens=120, overlap=0)
    assert [c.tokens for c in chunks] == [100, 100]  # ends at the second paragraph break
    assert all(c.text.endswith("last.") for c in chunks)
    sent = " ".join(["Short sentence here."] * 20)  # 3-word sentences, no paragraphs
    chunks = chunk_text(sent, max_tokens=10, overlap=4)
    assert all(c.text.endswith(".") for c in chunks)
    assert all(c.text.startswith("Short") for c in chunks)  # overlaps start on a sentence
    flat = " ".join(["w"] * 25)  # no boundary at all: cut at exactly max_tokens
    assert [c.tokens for c in chunk_text(flat, max_tokens=10, overlap=2)] == [10, 10, 9]


def test_short_and_empty_texts():
    assert chunk_text("") == [] and chunk_text("  \n ,;") == []
    (c,) = chunk_text("  One short text.  \n", "a.txt")
    assert (c.text, c.start, c.end, c.tokens) == ("One short text.", 2, 17, 3)
    assert c.metadata() == {"source": "a.txt", "start": 2, "end": 17, "chunk": 0}


def test_chunk_folder_reads_sorted_relative_paths_and_skips_binary(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text("Second file. " * 3, encoding="utf-8")
    (tmp_path / "one.txt").write_text("First file.", encoding="utf-8")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "skip.py").write_text("print()", encoding="utf-8")
    chunks = chunk_folder(tmp_path, max_tokens=4, overlap=1)
    assert [c.source for c in chunks] == ["b/two.md", "b/two.md", "one.txt"]
    src = (tmp_path / "b" / "two.md").read_text(encoding="utf-8")
    assert all(src[c.start:c.end] == c.text for c in chunks if c.source == "b/two.md")
    assert chunk_texts([("x", "a b c"), ("y", "d")], max_tokens=2, overlap=0)[-1].source == "y"
    with pytest.raises(ValidationError):
        chunk_folder(tmp_path / "one.txt")


@pytest.mark.parametrize("kw", [{"max_tokens": 0}, {"overlap": -1}, {"max_tokens": 5, "overlap": 5},
                                {"max_tokens": 2.5}, {"source": 3}])
def test_bad_arguments(kw):
    with pytest.raises(ValidationError):
        chunk_text("some text", **kw)
    with pytest.raises(ValidationError):
        chunk_text(b"bytes")
