"""The server's RAG prompt layout and document collection (``llmds.server.rag``): no model needed."""

from __future__ import annotations

import pytest

from llmds.retrieval.pipeline_config import Hit
from llmds.errors import ValidationError
from llmds.server.rag import collect_chunks, rag_messages


def _hit(doc_id, source, text, score):
    return Hit(doc_id, score, text, {"source": source, "start": 0, "end": len(text), "chunk": 0})


def test_rag_prompt_puts_chunks_first_in_id_order_then_the_users_system_prompt():
    a, b = _hit(7, "b.md", "bbb", 0.9), _hit(2, "a.md", "aaa", 0.1)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q?"}]
    out1, out2 = rag_messages(msgs, [a, b]), rag_messages(msgs, [b, a])
    assert out1 == out2  # score order does not matter: the same chunks give the same prefix
    assert [m["role"] for m in out1] == ["system", "user"]
    sys_text = out1[0]["content"]
    assert sys_text.index("[a.md]\naaa") < sys_text.index("[b.md]\nbbb") < sys_text.index("Be brief.")


def test_collect_chunks_reads_files_and_folders_in_order_with_offsets(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("Second file. " * 5)
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\x00\x01")
    one = tmp_path / "a.txt"
    one.write_text("First paragraph here.\n\nSecond paragraph there.")
    chunks = collect_chunks([one, tmp_path / "docs"], max_tokens=4, overlap=1)
    assert [c.source for c in chunks][0] == "a.txt" and chunks[-1].source == "b.md"
    texts = {"a.txt": one.read_text(), "b.md": (tmp_path / "docs" / "b.md").read_text()}
    for c in chunks:
        assert texts[c.source][c.start:c.end] == c.text and c.tokens <= 4


def test_collect_chunks_rejects_missing_paths_and_empty_input(tmp_path):
    with pytest.raises(ValidationError, match="no such document"):
        collect_chunks([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError, match="no text found"):
        collect_chunks([tmp_path / "empty"])
