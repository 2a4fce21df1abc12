"""The adaptive fusion default: the estimator's bounds and determinism, and the pipeline on
drawn collections where one side is noise (it must rank like the other side) or both inform
(it must do at least as well as the better side)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.retrieval import heldout, ir_data
from llmds.retrieval.fusion import QPP_DEPTH, adaptive_weight, collection_prior
from llmds.retrieval.pipeline import RetrievalPipeline

DIM = 8


def _desc(xs):
    return np.sort(np.asarray(xs, np.float64))[::-1]


@settings(max_examples=300, deadline=None)
@given(
    dense=st.lists(st.floats(-1, 1), min_size=0, max_size=80),
    lex=st.lists(st.floats(1e-6, 50), min_size=0, max_size=80),
    prior=st.floats(0, 0.9),
    floor=st.one_of(st.none(), st.floats(-1, 1)),
    unit=st.floats(0.05, 20),
)
def test_estimator_is_bounded_and_deterministic(dense, lex, prior, floor, unit):
    d, lx = _desc(dense), _desc(lex)
    d0, l0 = d.copy(), lx.copy()
    w = adaptive_weight(d, lx, prior, floor, unit)
    assert 0.0 <= w <= 1.0 and np.isfinite(w)
    assert adaptive_weight(d, lx, prior, floor, unit) == w  # same inputs, same float
    assert np.array_equal(d, d0) and np.array_equal(lx, l0)  # inputs untouched
    # only the top QPP_DEPTH candidates are read: a deeper list gives the same share
    deeper = np.concatenate([d, np.full(10, d[-1] if d.size else 0.0)]) if d.size >= QPP_DEPTH else d
    assert adaptive_weight(deeper, lx, prior, floor, unit) == w


def test_estimator_reads_each_side():
    lex = _desc([9.0, 6.0, 4.0, 3.0, 1.0])
    peaked = _desc([0.8, 0.5, 0.4, 0.35, 0.3])
    flat = _desc([0.5] * 5)
    assert adaptive_weight(flat, lex, 0.9, 0.0, 8.0) == 0.0  # a flat dense list singles out nothing
    assert adaptive_weight(peaked, _desc([2.0] * 5), 0.9, 0.0, 8.0) == 1.0  # a flat BM25 list
    assert adaptive_weight(peaked[:1], lex, 0.9, 0.0, 8.0) == 0.9  # one candidate: the prior
    assert adaptive_weight(peaked, lex, 0.0, 0.0, 8.0) == 0.0  # a collapsed collection
    both = adaptive_weight(peaked, lex, 0.9, 0.0, 8.0)
    assert 0.0 < both < 1.0
    # a weaker BM25 match, or a flatter BM25 list, moves the share to the dense side
    assert adaptive_weight(peaked, lex / 4, 0.9, 0.0, 8.0) > both
    assert adaptive_weight(peaked, _desc([9.0, 8.5, 8.0, 7.5, 7.0]), 0.9, 0.0, 8.0) > both
    assert adaptive_weight(peaked, lex, 0.5, 0.0, 8.0) < both  # a lower prior, less dense
    assert collection_prior(np.zeros(DIM)) == pytest.approx(0.9)
    assert collection_prior(np.eye(DIM)[0]) == 0.0


def test_mean_direction_is_exact_whatever_the_history(tmp_path):
    """Adds and removes in any order, and a reload, give the same shares to the last bit."""
    rng = np.random.default_rng(0)
    words = ["kv", "cache", "block", "prefix", "token", "batch"]
    texts = [" ".join(rng.choice(words, 4)) for _ in range(60)]
    vecs = rng.standard_normal((60, DIM)).astype(np.float32)
    queries = ["kv cache", "prefix token", "batch block kv"]
    qv = rng.standard_normal((3, DIM)).astype(np.float32)
    a = RetrievalPipeline(DIM, seed=1)
    a.add_documents(list(enumerate(texts)), vecs)
    for d in range(0, 60, 3):
        a.remove_document(d)
    keep = [d for d in range(60) if d % 3]
    b = RetrievalPipeline(DIM, seed=1)
    b.add_documents([(d, texts[d]) for d in reversed(keep)], vecs[keep[::-1]])
    assert a.fusion_weights(queries, qv) == b.fusion_weights(queries, qv)
    a.save(tmp_path / "a.llmds")
    assert RetrievalPipeline.load(tmp_path / "a.llmds").fusion_weights(queries, qv) == \
        a.fusion_weights(queries, qv)


def test_fusion_weights_report_what_search_applies():
    p = RetrievalPipeline(DIM, seed=0)
    rng = np.random.default_rng(2)
    p.add_documents([(i, t) for i, t in enumerate(["kv cache", "paged kv", "prefix", "cache"])],
                    rng.standard_normal((4, DIM)))
    q = rng.standard_normal((2, DIM))
    assert p.fusion_weights(["kv", "cache"], q, fusion="rrf") == [0.5, 0.5]
    assert p.fusion_weights(["kv", "cache"], q, 0.3) == [0.3, 0.3]  # a given weight is fixed
    assert p.fusion_weights(["kv", "zebra"], None) == [0.0, 0.0]  # lexical only
    assert p.fusion_weights(["zebra"], q[:1]) == [1.0]  # no known term: dense only
    w = p.fusion_weights(["kv cache"], q[:1])[0]
    assert 0.0 <= w <= 1.0
    # the adaptive default equals TMM at the share it reports
    assert p.search("kv cache", q[0], top_k=4) == p.search("kv cache", q[0], top_k=4,
                                                           fusion="tmm", fusion_weight=w)


# ------------------------------------------------------------ drawn collections
def _ndcg(pipe, c, **kw) -> float:
    res = pipe.search_many(c.queries, c.Q, top_k=10, **kw)
    return float(np.mean([
        ir_data.ndcg_at_k([str(d) for d, _ in r], {str(k): g for k, g in c.qrels[i].items()})
        for i, r in enumerate(res)]))


@pytest.fixture(scope="module")
def drawn():
    out = {}
    for kind in ("both", "dense-blind", "lexical-noise"):
        c = heldout.topical(kind, n_docs=800, n_queries=60, dim=32, n_topics=20, seed=5)
        p = RetrievalPipeline(32, seed=0, cache_token_budget=0, hot_capacity=0)
        p.add_documents(list(enumerate(c.texts)), c.X)
        out[kind] = (p, c, {
            "bm25": _ndcg(p, c, fusion="tmm", fusion_weight=0.0),
            "dense": _ndcg(p, c, fusion="tmm", fusion_weight=1.0),
            "default": _ndcg(p, c),
            "old": _ndcg(p, c, fusion="tmm", fusion_weight=0.9),
        })
    return out


def test_dense_noise_ranks_like_bm25(drawn):
    """An embedder that cannot read the texts (all vectors near one direction)."""
    p, c, m = drawn["dense-blind"]
    assert m["dense"] < 0.1 < m["bm25"]
    assert m["default"] >= m["bm25"] - 0.005
    assert np.mean(p.fusion_weights(c.queries, c.Q)) < 0.05
    lex = p.search_many(c.queries, None, top_k=10)
    fused = p.search_many(c.queries, c.Q, top_k=10)
    shared = [len({d for d, _ in a} & {d for d, _ in b}) / 10 for a, b in zip(lex, fused)]
    assert np.mean(shared) >= 0.95  # BM25's top 10 (the dense side breaks some of its ties)


def test_lexical_noise_ranks_like_dense(drawn):
    """Queries of background words only: BM25 has nothing to single out."""
    p, c, m = drawn["lexical-noise"]
    assert m["bm25"] < 0.1 < m["dense"]
    assert m["default"] >= m["dense"] - 0.005
    assert m["default"] > m["old"]
    assert np.mean(p.fusion_weights(c.queries, c.Q)) > 0.95


def test_both_informative_at_least_the_better_side(drawn):
    _, _, m = drawn["both"]
    assert min(m["bm25"], m["dense"]) > 0.3
    assert m["default"] >= max(m["bm25"], m["dense"])


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_degenerate_collections_give_a_share_in_bounds(metric):
    """Identical documents (mean direction of norm 1, the query on it) and, where the metric
    allows one, a zero vector: the share stays a finite number in [0, 1]."""
    v = np.eye(DIM)[0]
    p = RetrievalPipeline(DIM, seed=0, metric=metric)
    vecs = np.stack([v, v, v] + ([np.zeros(DIM)] if metric != "cosine" else []))
    p.add_documents([(i, "kv cache block") for i in range(len(vecs))], vecs)
    for w in p.fusion_weights(["kv cache", "block"], np.stack([v, v + 0.1])):
        assert 0.0 <= w <= 1.0 and np.isfinite(w)
    assert p.search("kv cache", v, top_k=2)
