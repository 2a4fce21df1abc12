"""RetrievalPipeline: fusion math, result contract, cache, hit counting, bad inputs.

Reference model: a fresh ``InvertedIndex`` over the live documents (BM25 is
tested against rank_bm25/bm25s in its own suite), exact cosine by numpy, and
the fusion formulas written out again in plain Python.
"""

from __future__ import annotations

import math
import statistics
import threading

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llmds.errors import NotFoundError, ValidationError
from llmds.retrieval.inverted_index import InvertedIndex
from llmds.retrieval.pipeline import RetrievalPipeline, rrf_fusion, weighted_fusion

DIM = 4
E = np.eye(DIM, dtype=np.float32)


def _arr(x, dtype=np.int64):
    return np.array(x, dtype=dtype)


def _ranked(ids, scores, top_k=None):
    order = np.lexsort((ids, -scores))[:top_k]
    return list(zip(ids[order].tolist(), scores[order].tolist()))


# ------------------------------------------------------------ fusion math by hand
def test_weighted_fusion_hand_computed():
    # dense sims 0.9, 0.5, 0.1 -> 1, 0.5, 0; lexical 4, 2 -> 1, 0
    ids, sc = weighted_fusion(
        _arr([3, 1, 2]),
        _arr([0.9, 0.5, 0.1], np.float64),
        _arr([2, 4]),
        _arr([4.0, 2.0], np.float64),
        0.7,
    )
    got = dict(zip(ids.tolist(), sc.tolist()))
    assert got == pytest.approx({3: 0.7, 1: 0.35, 2: 0.3, 4: 0.0})
    assert [d for d, _ in _ranked(ids, sc)] == [3, 1, 2, 4]


def test_rrf_fusion_hand_computed():
    ids, sc = rrf_fusion(_arr([3, 1, 2]), _arr([2, 4]), 0.5, 60)
    got = dict(zip(ids.tolist(), sc.tolist()))
    assert got == pytest.approx({3: 1 / 61, 1: 1 / 62, 2: 1 / 63 + 1 / 61, 4: 1 / 62})
    assert [d for d, _ in _ranked(ids, sc)] == [2, 3, 1, 4]  # 1 and 4 tie: by id
    ids, sc = rrf_fusion(_arr([3, 1, 2]), _arr([2, 4]), 0.8, 10)  # weighted RRF
    got = dict(zip(ids.tolist(), sc.tolist()))
    assert got == pytest.approx({3: 1.6 / 11, 1: 1.6 / 12, 2: 1.6 / 13 + 0.4 / 11, 4: 0.4 / 12})


def test_one_sided_fusion_gives_the_side_full_weight():
    ids, sc = weighted_fusion(
        _arr([]), _arr([], np.float64), _arr([5, 6]), _arr([3.0, 1.0], np.float64), 0.7
    )
    assert dict(zip(ids.tolist(), sc.tolist())) == pytest.approx({5: 1.0, 6: 0.0})
    ids, sc = rrf_fusion(_arr([7]), _arr([]), 0.0, 60)
    assert sc.tolist() == pytest.approx([1 / 61])
    ids, sc = weighted_fusion(
        _arr([8]), _arr([0.2], np.float64), _arr([]), _arr([], np.float64), 0.3
    )
    assert sc.tolist() == [1.0]  # a single candidate is its side's best


# ------------------------------------------------------------ end to end by hand
def _hand_pipeline(**kw):
    p = RetrievalPipeline(embedding_dim=DIM, seed=0, **kw)
    p.add_document(1, "apple apple", E[0])
    p.add_document(2, "cherry", np.array([0.6, 0.8, 0, 0], np.float32))
    p.add_document(3, "zebra", E[1])
    p.add_document(4, "apple kiwi kiwi kiwi")  # lexical only
    return p


def test_pipeline_tmm_hand_computed():
    """TMM: cosine scaled from -1 to its best, BM25 / its best, scores filled in."""
    p = _hand_pipeline(fusion="tmm")
    assert p.config.weight("tmm") == 0.9
    ref = InvertedIndex()
    ref.add_documents([(1, "apple apple"), (2, "cherry"), (3, "zebra"), (4, "apple kiwi kiwi kiwi")])
    bm = dict(ref.search("apple"))
    # dense cos 1, 0.6, 0, none -> (c + 1) / 2 = 1, 0.8, 0.5, 0; lexical apple: 1, 0, 0, s4 / s1
    res = p.search("apple", E[0], top_k=10, fusion_weight=0.8)
    expect = {1: 1.0, 2: 0.8 * 0.8, 3: 0.8 * 0.5, 4: 0.2 * bm[4] / bm[1]}
    assert [d for d, _ in res] == [1, 2, 3, 4]
    assert dict(res) == pytest.approx(expect, abs=1e-6)
    # doc 4 is found lexically only, doc 3 densely only: each gets its exact other score
    assert p.search("zebra apple", E[0], top_k=10, fusion_weight=0.5)[0][0] == 1
    # top_k does not change the fused scores (no dependence on candidate depth)
    assert p.search("apple", E[0], top_k=2, fusion_weight=0.8) == res[:2]


def test_pipeline_weighted_hand_computed():
    p = _hand_pipeline(fusion="weighted")
    # dense cos 1, 0.6, 0 -> 1, 0.6, 0; lexical "apple": doc 1 > doc 4 -> 1, 0
    res = p.search("apple", E[0], top_k=10, fusion_weight=0.8)
    assert [d for d, _ in res] == [1, 2, 3, 4]
    assert [s for _, s in res] == pytest.approx([1.0, 0.48, 0.0, 0.0], abs=1e-6)
    res = p.search("apple", E[0], top_k=10, fusion_weight=0.5)
    assert dict(res) == pytest.approx({1: 1.0, 2: 0.3, 3: 0.0, 4: 0.0}, abs=1e-6)
    res = p.search("apple", E[0], top_k=2, fusion_weight=0.5)
    assert [d for d, _ in res] == [1, 2]


def test_pipeline_rrf_hand_computed():
    p = _hand_pipeline(fusion="rrf")
    res = p.search("apple", E[0], top_k=10, fusion_weight=0.5)
    assert [d for d, _ in res] == [1, 2, 4, 3]  # 2 and 4 tie at 1/62: by id
    assert [s for _, s in res] == pytest.approx([2 / 61, 1 / 62, 1 / 62, 1 / 63])


def test_result_types_and_order():
    p = _hand_pipeline()
    p.add_document(np.int64(9), "apple pie", E[2])
    for fusion in ("weighted", "rrf"):
        res = p.search("apple kiwi", E[0] + E[2], top_k=10, fusion=fusion)
        assert res and all(type(d) is int and type(s) is float for d, s in res)
        keys = [(-s, d) for d, s in res]
        assert keys == sorted(keys)
        assert {d for d, _ in res} == {1, 2, 3, 4, 9}  # one-side-only docs appear


def test_lexical_only_without_embeddings_keeps_hnsw_empty():
    p = RetrievalPipeline(embedding_dim=DIM)
    p.add_documents([(1, "red fish"), (2, "blue fish"), (3, "red red car")])
    st_ = p.stats()
    assert st_["hnsw"]["num_vectors"] == 0 and st_["num_dense"] == 0
    assert st_["num_lexical_only"] == 3
    ref = InvertedIndex()
    ref.add_documents([(1, "red fish"), (2, "blue fish"), (3, "red red car")])
    expect = ref.search("red", 10)
    res = p.search("red", top_k=10)
    assert [d for d, _ in res] == [d for d, _ in expect] == [3, 1]
    # a query vector on an empty dense side: lexical alone, same answer
    assert p.search("red", E[0], top_k=10) == res


# ------------------------------------------------------------ embedder hook
class CountingEmbedder:
    """Deterministic bag-of-letters embedder with call counters."""

    def __init__(self):
        self.single = 0
        self.batches = 0

    @staticmethod
    def vec(text):
        v = np.full(DIM, 0.01, np.float32)
        for ch in text:
            v[ord(ch) % DIM] += 1.0
        return v

    def __call__(self, text):
        self.single += 1
        return self.vec(text)


class BatchEmbedder(CountingEmbedder):
    def embed_batch(self, texts):
        self.batches += 1
        return np.stack([self.vec(t) for t in texts])


def test_embedder_batch_used_for_bulk_add_and_queries():
    emb = BatchEmbedder()
    p = RetrievalPipeline(embedding_dim=DIM, embedder=emb, seed=1)
    p.add_documents([(i, t) for i, t in enumerate(["abc", "bcd", "xyz", "aaaa"])])
    assert emb.batches == 1 and emb.single == 0
    assert p.stats()["num_dense"] == 4
    res = p.search("aab", top_k=4)
    assert emb.batches == 2
    # same as giving the embedder's vector explicitly
    assert res == p.search("aab", CountingEmbedder.vec("aab"), top_k=4)
    p.search("aab", top_k=4)  # warm: served from cache, embedder not called
    assert emb.batches == 2
    with pytest.raises(ValidationError):
        p.add_document(0, "duplicate")  # rejected before any embedding work
    assert emb.batches == 2


def test_concurrent_adds_and_searches_stay_consistent():
    p = RetrievalPipeline(embedding_dim=DIM, embedder=BatchEmbedder(), seed=2)
    errors = []

    def writer():
        try:
            for i in range(60):
                p.add_document(i, f"doc{i} common")
                if i % 3 == 0:
                    p.remove_document(i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader():
        try:
            for _ in range(60):
                res = p.search("common", top_k=5)
                assert all(type(d) is int for d, _ in res)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    live = [i for i in range(60) if i % 3]
    assert len(p) == len(live) and p.stats()["num_dense"] == len(live)
    assert sorted(d for d, _ in p.search("common", top_k=100)) == live


def test_plain_callable_and_encode_embedders():
    emb = CountingEmbedder()
    p = RetrievalPipeline(embedding_dim=DIM, embedder=emb)
    p.add_document(1, "abc")
    p.add_document(2, "ddd")
    assert emb.single == 2 and p.stats()["num_dense"] == 2

    class Encoder:  # sentence-transformers style: encode(list) -> matrix; __call__ is forward
        def encode(self, texts):
            return np.stack([CountingEmbedder.vec(t) for t in texts])

        def __call__(self, *a):
            raise AssertionError("the model object must not be called directly")

    p2 = RetrievalPipeline(embedding_dim=DIM, embedder=Encoder())
    p2.add_documents([(1, "abc"), (2, "ddd")])
    assert p2.search("abc", top_k=1)[0][0] == 1


def test_bad_embedder_output_rejected_and_nothing_indexed():
    p = RetrievalPipeline(embedding_dim=DIM, embedder=lambda t: np.ones(DIM + 1))
    with pytest.raises(ValidationError):
        p.add_document(1, "abc")
    assert len(p) == 0 and p.stats()["inverted_index"]["total_documents"] == 0
    with pytest.raises(ValidationError):
        RetrievalPipeline(embedding_dim=DIM, embedder=42)


# ------------------------------------------------------------ cache
def test_cache_hit_then_invalidated_by_add_and_remove():
    p = _hand_pipeline()
    first = p.search("kiwi", E[3], top_k=5)
    assert p.search("kiwi", E[3], top_k=5) == first
    assert p.stats()["cache"]["hits"] == 1
    gen = p.generation
    p.add_document(5, "kiwi kiwi", E[3])
    assert p.generation == gen + 1
    after_add = p.search("kiwi", E[3], top_k=5)
    assert after_add[0][0] == 5 and after_add != first
    p.remove_document(5)
    assert p.search("kiwi", E[3], top_k=5) == first
    assert 5 not in {d for d, _ in p.search("kiwi", E[3], top_k=5)}
    assert p.stats()["cache"]["hits"] == 2


def test_cache_key_sensitivity():
    p = _hand_pipeline()
    base = p.search("apple", E[0], top_k=3, fusion_weight=0.5)
    variants = [
        dict(query_embedding=E[0], top_k=2, fusion_weight=0.5),
        dict(query_embedding=E[0], top_k=3, fusion_weight=0.9),
        dict(query_embedding=E[0], top_k=3, fusion_weight=0.5, fusion="rrf"),
        dict(query_embedding=E[1], top_k=3, fusion_weight=0.5),
        dict(query_embedding=None, top_k=3, fusion_weight=0.5),
    ]
    for kw in variants:
        misses = p.stats()["cache"]["misses"]
        res = p.search("apple", **kw)
        assert p.stats()["cache"]["misses"] == misses + 1, kw
        assert res != base, kw
    assert p.search("apple", E[0], top_k=3, fusion_weight=0.5) == base
    assert p.stats()["cache"]["hits"] == 1


def test_cache_can_be_disabled():
    p = _hand_pipeline(cache_token_budget=0)
    a = p.search("apple", E[0])
    assert p.search("apple", E[0]) == a
    assert p.stats()["cache"] == {
        "enabled": False,
        "entries": 0,
        "tokens": 0,
        "token_budget": 0,
        "hits": 0,
        "misses": 2,
    }


# ------------------------------------------------------------ hit counting
def test_hot_documents():
    p = _hand_pipeline()
    for _ in range(3):
        p.search("apple", top_k=1)  # doc 1 x3 (lexical only query)
    p.search("cherry", top_k=1)  # doc 2 x1
    p.search("zebra", top_k=1)  # doc 3 x1
    assert p.document_hits(1) == 3 and p.document_hits(2) == 1
    assert p.query_hits("apple") == 3
    assert p.hot_documents(3) == [1]
    assert p.hot_documents(1) == [1, 2, 3]
    assert p.hot_documents(4) == []
    p.remove_document(1)
    assert p.hot_documents(1) == [2, 3]
    p.search("cherry", top_k=1)  # buffered hit of doc 2 ...
    p.remove_document(2)  # ... must not bring it back after removal
    assert p.hot_documents(1) == [3]


def test_hot_capacity_keeps_the_hottest():
    p = RetrievalPipeline(embedding_dim=DIM, hot_capacity=2)
    p.add_documents([(i, f"w{i}") for i in range(5)])
    for i, reps in enumerate([5, 1, 4, 2, 3]):
        for _ in range(reps):
            p.search(f"w{i}", top_k=1)
    assert p.hot_documents(1) == [0, 2]


# ------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    "bad",
    [np.ones(DIM + 1), np.ones((1, DIM)), [np.nan] * DIM, [np.inf, 0, 0, 0], np.zeros(DIM), "abcd"],
)
def test_bad_embeddings_rejected_state_unchanged(bad):
    p = _hand_pipeline()
    gen, n = p.generation, len(p)
    with pytest.raises(ValidationError):
        p.add_document(10, "new", bad)
    with pytest.raises(ValidationError):
        p.search("apple", bad)
    assert (p.generation, len(p), 10 in p) == (gen, n, False)
    assert p.stats()["inverted_index"]["total_documents"] == n


@pytest.mark.parametrize("w", [-0.1, 1.1, math.nan, True, "0.5"])
def test_bad_fusion_weight(w):
    p = _hand_pipeline()
    with pytest.raises(ValidationError):
        p.search("apple", E[0], fusion_weight=w)
    with pytest.raises(ValidationError):
        RetrievalPipeline(embedding_dim=DIM, fusion_weight=w)


def test_bad_arguments():
    with pytest.raises(ValidationError):
        RetrievalPipeline(embedding_dim=DIM, fusion="max")
    with pytest.raises(ValidationError):
        RetrievalPipeline(embedding_dim=DIM, no_such_option=1)
    with pytest.raises(ValidationError):
        RetrievalPipeline(embedding_dim=0)
    p = _hand_pipeline()
    with pytest.raises(ValidationError):
        p.search("apple", fusion="max")
    for top_k in (0, -1, 2.5, True):
        with pytest.raises(ValidationError):
            p.search("apple", top_k=top_k)
    with pytest.raises(ValidationError):
        p.search(b"apple")
    with pytest.raises(ValidationError):
        p.add_document(1, "duplicate id")
    with pytest.raises(ValidationError):
        p.add_documents([(7, "a"), (7, "b")])
    with pytest.raises(ValidationError):
        p.add_document("7", "string id")
    with pytest.raises(ValidationError):
        p.add_document(7, None)
    with pytest.raises(ValidationError):
        p.add_documents([(7, "a"), (8, "b")], np.ones((3, DIM)))
    with pytest.raises(NotFoundError):
        p.remove_document(99)
    assert sorted(d for d in (1, 2, 3, 4, 7, 8) if d in p) == [1, 2, 3, 4]
    with pytest.raises(ValidationError):
        p.hot_documents(math.nan)


def test_removed_id_can_be_added_again():
    p = _hand_pipeline()
    p.remove_document(1)
    p.add_document(1, "zebra zebra", E[1])
    assert p.search("zebra", E[1], top_k=1)[0][0] == 1
    assert p.stats()["hnsw"]["num_deleted"] == 1


# ------------------------------------------------------------ stateful check against a reference
WORDS = ["ant", "bee", "cat", "dog", "eel", "fox"]


def _adaptive_reference(docs, qvec, dense, lex):
    """The adaptive dense share (llmds.retrieval.fusion docstring), in plain Python."""
    units = [v / np.linalg.norm(v) for _, v in docs.values() if v is not None]
    m = [math.fsum(float(u[j]) for u in units) / len(units) for j in range(DIM)] if units else [0.0] * DIM
    prior = 0.9 * min(1.0, max(0.0, 1.0 - math.fsum(x * x for x in m)))
    if len(dense) < 2 or len(lex) < 2:
        return prior
    d = [c for _, c in dense[:50]]
    lx = [b for _, b in lex[:50]]
    q = qvec / np.linalg.norm(qvec)
    floor = math.fsum(float(q[j]) * m[j] for j in range(DIM))
    span = d[0] - floor
    if span <= 0:
        return 0.0
    rd = prior * statistics.pstdev(d) / span * min(1.0, span / (1.0 - floor))
    unit = math.log(1 + (len(docs) - 0.5) / 1.5)
    rl = (1 - prior) * statistics.pstdev(lx) / lx[0] * min(1.0, lx[0] / unit)
    return rd / (rd + rl) if rd + rl > 0 else prior


def _reference(docs, query, qvec, top_k, w, fusion, rrf_k=60):
    """Plain-Python hybrid search over ``docs`` {id: (text, vec | None)}."""
    idx = InvertedIndex()
    idx.add_documents([(d, t) for d, (t, _) in docs.items()])
    lex = idx.search(query, max(len(docs), 1)) if docs else []
    dense = []
    if qvec is not None:
        q = qvec / np.linalg.norm(qvec)
        for d, (_, v) in docs.items():
            if v is not None:
                dense.append((d, float(q @ (v / np.linalg.norm(v)))))
        dense.sort(key=lambda t: (-t[1], t[0]))
    if fusion == "adaptive":
        w = _adaptive_reference(docs, qvec, dense, lex) if dense and lex else 0.5
    both = bool(dense) and bool(lex)
    wd, wl = (w, 1 - w) if both else ((1.0, 0.0) if dense else (0.0, 1.0))
    score: dict[int, float] = {}
    if fusion in ("tmm", "adaptive"):  # every candidate scored on both sides; lists complete here
        if dense:
            top = dense[0][1]
            for d, c in dense:
                score[d] = wd * ((c + 1) / (top + 1) if top > -1 else 1.0)
        if lex:
            top = lex[0][1]
            for d, b in lex:
                score[d] = score.get(d, 0.0) + wl * b / top
        return score
    for side, ws in ((dense, wd), (lex, wl)):
        if not side:
            continue
        if fusion == "weighted":
            vals = [s for _, s in side]
            lo, hi = min(vals), max(vals)
            for d, s in side:
                score[d] = score.get(d, 0.0) + ws * ((s - lo) / (hi - lo) if hi > lo else 1.0)
        else:
            for r, (d, _) in enumerate(side, 1):
                score[d] = score.get(d, 0.0) + (2 if both else 1) * ws / (rrf_k + r)
    return score


class PipelineMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.p = RetrievalPipeline(embedding_dim=DIM, seed=3, cache_token_budget=40)
        self.docs: dict[int, tuple[str, np.ndarray | None]] = {}
        self.history: list[tuple] = []

    @rule(
        doc_id=st.integers(0, 12),
        words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=5),
        vec=st.one_of(st.none(), st.lists(st.integers(-3, 3), min_size=DIM, max_size=DIM)),
    )
    def add(self, doc_id, words, vec):
        v = None if vec is None or not any(vec) else np.array(vec, np.float32)
        if doc_id in self.docs:
            with pytest.raises(ValidationError):
                self.p.add_document(doc_id, " ".join(words), v)
        else:
            self.p.add_document(doc_id, " ".join(words), v)
            self.docs[doc_id] = (" ".join(words), v)

    @precondition(lambda self: self.docs)
    @rule(data=st.data())
    def remove(self, data):
        d = data.draw(st.sampled_from(sorted(self.docs)))
        self.p.remove_document(d)
        del self.docs[d]

    @rule(
        words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
        qv=st.one_of(st.none(), st.sampled_from([0, 1, 2, 3])),
        top_k=st.integers(1, 15),
        w=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
        fusion=st.sampled_from(["adaptive", "tmm", "weighted", "rrf"]),
    )
    def search(self, words, qv, top_k, w, fusion):
        self._check_search(" ".join(words), qv, top_k, None if fusion == "adaptive" else w, fusion)

    @precondition(lambda self: self.history)
    @rule(data=st.data())
    def repeat_search(self, data):
        """Re-run an earlier search: after adds/removes a cached answer would be stale."""
        self._check_search(*data.draw(st.sampled_from(self.history)))

    def _check_search(self, query, qv, top_k, w, fusion):
        self.history.append((query, qv, top_k, w, fusion))
        qvec = None if qv is None else E[qv] + 0.25 * E[(qv + 1) % DIM]
        res = self.p.search(query, qvec, top_k=top_k, fusion_weight=w, fusion=fusion)
        ref = _reference(self.docs, query, qvec, top_k, w, fusion)
        assert len(res) == min(top_k, len(ref))
        got = dict(res)
        for d, s in res:
            assert s == pytest.approx(ref[d], abs=1e-5)
        # everything left out scores no better than the last returned result
        if res:
            assert all(ref[d] <= res[-1][1] + 1e-5 for d in ref if d not in got)
        keys = [(-s, d) for d, s in res]
        assert keys == sorted(keys)

    @invariant()
    def counts_match(self):
        st_ = self.p.stats()
        assert st_["num_documents"] == len(self.docs)
        assert st_["num_dense"] == sum(v is not None for _, v in self.docs.values())
        assert st_["cache"]["tokens"] <= 40


PipelineMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
TestPipelineStateful = PipelineMachine.TestCase
