"""RetrievalPipeline for a RAG server: stored texts and metadata, chunks, any int64 id,
one saved file (bit-exact search results after load, version and embedder checks)
and concurrent searches with adds from several threads."""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest

from llmds.retrieval._binfmt import read_checked, write_atomic
from llmds.retrieval.chunking import chunk_text
from llmds.errors import CorruptFileError, NotFoundError, ValidationError
from llmds.retrieval.pipeline import Hit, RetrievalPipeline

DIM = 8
WORDS = ["paged", "attention", "kv", "cache", "prefix", "block", "token", "batch", "rag", "graph"]


def corpus(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))) for _ in range(n)]
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    return texts, vecs


class Emb:
    name = "test-embedder-v1"

    def embed_batch(self, texts):
        out = np.full((len(texts), DIM), 0.01, np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, zlib.crc32(w.encode()) % DIM] += 1.0  # stable across processes
        return out


QUERIES = ["paged attention", "kv cache prefix", "graph rag token", "nothing matches"]


def results(p: RetrievalPipeline, qv: np.ndarray) -> list:
    out = []
    for fusion in ("adaptive", "tmm", "weighted", "rrf"):
        out.append(p.search_many(QUERIES, qv, top_k=7, fusion=fusion))
        out.append(p.search_many(QUERIES, None, top_k=5, fusion=fusion))
    out.append(p.fusion_weights(QUERIES, qv))  # the adaptive shares, float for float
    return out


def test_texts_metadata_and_retrieve():
    p = RetrievalPipeline(DIM, seed=0)
    p.add_document(-7, "paged attention for serving", np.ones(DIM), {"source": "a.md", "start": 0})
    p.add_document(2**63 - 1, "prefix cache blocks", np.arange(1, DIM + 1))
    hits = p.retrieve("paged attention", np.ones(DIM), top_k=2)
    assert hits[0] == Hit(-7, hits[0].score, "paged attention for serving", {"source": "a.md", "start": 0})
    assert hits[1].doc_id == 2**63 - 1 and hits[1].metadata is None
    assert [(h.doc_id, h.score) for h in hits] == p.search("paged attention", np.ones(DIM), top_k=2)
    assert p.get_text(2**63 - 1) == "prefix cache blocks" and p.get_metadata(-7)["source"] == "a.md"
    p.remove_document(-7)
    with pytest.raises(NotFoundError):
        p.get_text(-7)
    with pytest.raises(ValidationError):
        p.add_document(1, "x", metadata={"bad": float("nan")})
    with pytest.raises(ValidationError):
        p.add_document(1, "x", metadata=["not", "a", "dict"])
    with pytest.raises(ValidationError):
        p.add_document(2**63, "x")
    assert 1 not in p and len(p) == 1
    q = RetrievalPipeline(DIM, store_texts=False)
    q.add_document(1, "kept out of memory", np.ones(DIM))
    assert q.retrieve("memory", top_k=1)[0].text is None


def test_add_chunks_assigns_ids_and_keeps_offsets():
    text = "Paged attention stores KV in blocks. " * 6 + "\n\nPrefix caching shares blocks."
    chunks = chunk_text(text, "doc.md", max_tokens=12, overlap=3)
    p = RetrievalPipeline(DIM, embedder=Emb())
    p.add_document(41, "an existing document")
    ids = p.add_chunks(chunks)
    assert ids == list(range(42, 42 + len(chunks)))
    hit = p.retrieve("prefix caching", top_k=1)[0]
    meta = hit.metadata
    assert meta["source"] == "doc.md" and text[meta["start"]:meta["end"]] == hit.text
    with pytest.raises(ValidationError):
        p.add_chunks(["plain strings are not chunks"])


def test_save_load_is_bit_exact_and_keeps_working(tmp_path):
    texts, vecs = corpus(300)
    p = RetrievalPipeline(DIM, seed=4, embedder_name="rand-8d", ef_search=20)
    ids = list(range(-150, 150))
    p.add_documents(zip(ids, texts), vecs, [{"i": i} for i in ids])
    for d in range(-150, 150, 7):
        p.remove_document(d)
    p.add_documents([(1000, "late paged doc"), (1001, "late kv doc")], vecs[:2])
    p.add_document(1002, "lexical only rag")
    qv = np.random.default_rng(1).standard_normal((len(QUERIES), DIM)).astype(np.float32)
    before = results(p, qv)
    path = tmp_path / "pipe.llmds"
    p.save(path)
    again = RetrievalPipeline.load(path)
    assert results(again, qv) == before  # ids and float scores identical
    assert again.embedder_name == "rand-8d" and again.config == p.config
    assert again.retrieve("late", top_k=3) == p.retrieve("late", top_k=3)
    assert again.get_metadata(-149) == {"i": -149} and -150 not in again
    # both keep evolving identically (same slots, same HNSW RNG state, same free slots)
    for pipe in (p, again):
        pipe.remove_document(1000)
        pipe.add_documents([(5000, "new paged attention block")], vecs[5:6])
    assert results(again, qv) == results(p, qv)


def test_load_checks_version_embedder_and_consistency(tmp_path):
    p = RetrievalPipeline(DIM, embedder=Emb())
    p.add_documents([(1, "paged attention"), (2, "kv cache")])
    path = tmp_path / "p.llmds"
    p.save(path)
    assert RetrievalPipeline.load(path, embedder=Emb()).search("kv") == p.search("kv")

    class Other(Emb):
        name = "another-model"

    with pytest.raises(ValidationError, match="another-model"):
        RetrievalPipeline.load(path, embedder=Other())
    version, arrays, meta = read_checked(path, b"LLMDSRAG", (1,))
    write_atomic(path, b"LLMDSRAG", 2, arrays, meta)  # a future format
    with pytest.raises(CorruptFileError, match="version 2"):
        RetrievalPipeline.load(path)
    bad = dict(arrays)
    bad["doc_ids"] = np.array([1, 1], np.int64)
    write_atomic(path, b"LLMDSRAG", 1, bad, meta)
    with pytest.raises(CorruptFileError):
        RetrievalPipeline.load(path)
    p._docs.lexical.save(tmp_path / "lex")  # another structure's file
    with pytest.raises(CorruptFileError):
        RetrievalPipeline.load(tmp_path / "lex")


def test_concurrent_searches_and_adds_from_threads():
    """Readers see consistent hits (text belongs to the id) while writers add and remove;
    afterwards the pipeline answers exactly like one built sequentially."""
    texts, vecs = corpus(240, seed=3)
    kw = dict(seed=0, ef_search=400, ef_construction=400)  # exact HNSW at this size
    p = RetrievalPipeline(DIM, **kw)
    p.add_documents(zip(range(80), texts[:80]), vecs[:80])
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(lo: int, hi: int) -> None:
        try:
            for i in range(lo, hi):
                p.add_document(i, texts[i], vecs[i], {"i": i})
                if i % 5 == 0:
                    p.remove_document(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                q = QUERIES[int(rng.integers(len(QUERIES)))]
                hits = p.retrieve(q, vecs[int(rng.integers(240))], top_k=10)
                keys = [(-h.score, h.doc_id) for h in hits]
                assert keys == sorted(keys)
                for h in hits:
                    assert h.text == texts[h.doc_id]
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    writers = [threading.Thread(target=writer, args=(80, 160)),
               threading.Thread(target=writer, args=(160, 240))]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors
    live = [i for i in range(240) if i < 80 or i % 5]
    ref = RetrievalPipeline(DIM, **kw)
    ref.add_documents([(i, texts[i]) for i in live], vecs[live])
    assert len(p) == len(live)
    for q in QUERIES:
        for v in vecs[:5]:
            assert p.search(q, v, top_k=10) == ref.search(q, v, top_k=10)


def test_readme_retrieval_examples_run(tmp_path, monkeypatch):
    """docs/retrieval.md's HNSW and RetrievalPipeline examples run as written (in a scratch folder)."""
    from llmds import embeddings
    from tests.test_seed_docs import doc_python_blocks, run_doc_example

    monkeypatch.chdir(tmp_path)
    (hnsw_block,) = doc_python_blocks("`HNSW`")
    run_doc_example(hnsw_block)
    pipeline_block, server_block = doc_python_blocks("`RetrievalPipeline`")
    run_doc_example(pipeline_block)
    if not embeddings.is_available():
        pytest.skip("the embed extra is not installed")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "cache.md").write_text(
        "Configure the cache with page_size and max_pages.\n\nPrefix sharing is on by default.")
    run_doc_example(server_block)
