"""The server's interim chunker and RAG prompt layout (``llmds.server.rag``): pure functions."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from llmds.server.rag import Chunk, chunk_text, rag_messages

words = st.text(alphabet="abc é", min_size=1, max_size=8).map(str.strip).filter(bool)
paragraph = st.lists(words, min_size=1, max_size=40).map(" ".join)
document = st.lists(paragraph, min_size=1, max_size=8).map("\n\n".join)


@given(document, st.integers(2, 30), st.integers(0, 10))
def test_chunks_cover_every_word_in_order_within_the_size(text, max_words, overlap):
    overlap = min(overlap, max_words - 1)
    spans = chunk_text(text, max_words, overlap)
    for start, end in spans:
        assert 0 <= start < end <= len(text)
        assert len(text[start:end].split()) <= max_words
        assert text[start] != " " and text[end - 1] != " "
    assert [s for s, _ in spans] == sorted(s for s, _ in spans)
    covered = set()
    for start, end in spans:
        covered |= {m.start() + start for m in re.finditer(r"\S+", text[start:end])}
    assert covered >= {m.start() for m in re.finditer(r"\S+", text)}


def test_paragraphs_are_packed_whole():
    text = "one two three\n\nfour five\n\nsix seven eight nine"
    assert [text[s:e] for s, e in chunk_text(text, max_words=5)] == [
        "one two three\n\nfour five", "six seven eight nine"]


def test_rag_prompt_puts_chunks_first_in_id_order_then_the_users_system_prompt():
    a, b = Chunk(7, "b.md", 0, 3, "bbb"), Chunk(2, "a.md", 0, 3, "aaa")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q?"}]
    out1, out2 = rag_messages(msgs, [a, b]), rag_messages(msgs, [b, a])
    assert out1 == out2  # score order does not matter: the same chunks give the same prefix
    assert [m["role"] for m in out1] == ["system", "user"]
    sys_text = out1[0]["content"]
    assert sys_text.index("[a.md]\naaa") < sys_text.index("[b.md]\nbbb") < sys_text.index("Be brief.")
