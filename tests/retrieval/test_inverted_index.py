"""Tests of llmds.retrieval.inverted_index.InvertedIndex against a pure-Python BM25 reference."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llmds.retrieval import _postings as K
from llmds.retrieval._binfmt import read_checked, write_atomic
from llmds.errors import CorruptFileError, NotFoundError, ValidationError
from llmds.retrieval.inverted_index import InvertedIndex
from llmds.retrieval.tokenizer import Tokenizer

REL = 1e-5  # float32 weights and accumulators
PHYSICAL = ("memory_bytes", "num_segments", "deleted_documents")  # layout, not content


def logical_stats(idx: InvertedIndex) -> dict:
    """stats() without the physical-layout keys: what a rebuilt index must match."""
    return {k: v for k, v in idx.stats().items() if k not in PHYSICAL}


# ---------------------------------------------------------------- reference
def ref_scores(
    docs: dict[int, list[str]], query: list[str], k1: float = 1.5, b: float = 0.75
) -> dict[int, float]:
    """Lucene BM25 of every document with a positive score, computed naively in float64."""
    n = len(docs)
    if n == 0:
        return {}
    avgdl = sum(len(t) for t in docs.values()) / n
    df = Counter(term for toks in docs.values() for term in set(toks))
    out = {}
    for d, toks in docs.items():
        tf = Counter(toks)
        s = 0.0
        for q in query:  # a repeated query term counts again
            if tf[q]:
                idf = math.log(1 + (n - df[q] + 0.5) / (df[q] + 0.5))
                norm = k1 * (1 - b + b * len(toks) / avgdl) if avgdl > 0 else k1 * (1 - b)
                s += idf * tf[q] / (tf[q] + norm)
        if s > 0:
            out[d] = s
    return out


def check_results(results: list[tuple[int, float]], ref: dict[int, float], k: int) -> None:
    """``results`` must be a correct top-k of ``ref`` (up to float32 rounding at ties)."""
    assert len(results) == min(k, len(ref))
    ids = [d for d, _ in results]
    assert len(set(ids)) == len(ids)
    for d, s in results:
        assert type(d) is int and type(s) is float
        assert s == pytest.approx(ref[d], rel=REL, abs=1e-7)
    for (d1, s1), (d2, s2) in itertools.pairwise(results):
        assert s1 > s2 or (s1 == s2 and d1 < d2), "not sorted best first / ties by doc id"
    if results:
        kth = results[-1][1]
        for d, s in ref.items():
            if d not in ids:
                assert s <= kth * (1 + REL) + 1e-7, f"doc {d} ({s}) should have been returned"


# ---------------------------------------------------------------- exact examples
def test_hand_computed_example():
    idx = InvertedIndex()
    idx.add_documents([(1, "a b"), (2, "A c, c!"), (3, "d")])
    # N = 3, avgdl = (2 + 3 + 1) / 3 = 2
    # idf(a) = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln(1.6);  idf(c) = ln(1 + 2.5 / 1.5) = ln(8 / 3)
    # doc 1: dl = 2, norm = 1.5 * (0.25 + 0.75 * 1) = 1.5;  a: tf 1 -> 1 / 2.5
    # doc 2: dl = 3, norm = 1.5 * (0.25 + 0.75 * 1.5) = 2.0625;  a: 1 / 3.0625, c: 2 / 4.0625
    s1 = math.log(1.6) / 2.5
    s2 = math.log(1.6) / 3.0625 + math.log(8 / 3) * 2 / 4.0625
    got = idx.search("a c")
    assert [d for d, _ in got] == [2, 1]
    assert got[0][1] == pytest.approx(s2, rel=REL) and got[1][1] == pytest.approx(s1, rel=REL)
    assert got[0][1] == pytest.approx(0.636340, rel=1e-5) and got[1][1] == pytest.approx(
        0.188001, rel=1e-5
    )
    # a repeated query term counts again
    assert idx.search("c c")[0][1] == pytest.approx(2 * idx.search("c")[0][1], rel=REL)
    assert idx.get_term_frequency("c", 2) == 2
    assert idx.get_term_frequency("C", 1) == 0
    assert idx.get_document_frequency("a") == 2
    assert idx.get_document_frequency("zzz") == 0
    st_ = idx.stats()
    assert st_["total_documents"] == 3 and st_["total_terms"] == 4
    assert st_["total_postings"] == 5 and st_["avg_doc_length"] == 2.0


def test_ties_broken_by_doc_id_and_zero_scores_dropped():
    idx = InvertedIndex()
    idx.add_documents([(9, "x y"), (4, "x y"), (7, "x y"), (1, "z")])
    assert [d for d, _ in idx.search("x", top_k=10)] == [4, 7, 9]
    assert [d for d, _ in idx.search("x", top_k=2)] == [4, 7]
    assert [d for d, _ in idx.search("x", top_k=10**12)] == [4, 7, 9]  # no huge buffers
    assert idx.search("nothing here") == []
    assert idx.search("") == []
    assert InvertedIndex().search("x") == []


def test_idf_never_negative_when_every_doc_has_the_term():
    idx = InvertedIndex()
    idx.add_documents((i, "common word") for i in range(5))
    res = idx.search("common")
    assert len(res) == 5 and all(s > 0 for _, s in res)


def test_replace_empty_and_unicode_documents():
    idx = InvertedIndex()
    idx.add_document(1, "old text")
    idx.add_document(1, "new words")
    idx.add_document(2, "")
    idx.add_document(3, "   \n\t ")
    idx.add_document(4, "Ünïcode ΣΑΣ 日本語")
    assert len(idx) == 4 and 2 in idx and 5 not in idx and "1" not in idx and True not in idx
    assert idx.search("old") == []
    assert [d for d, _ in idx.search("NEW")] == [1]
    assert [d for d, _ in idx.search("ünïcode 日本語")] == [4]
    assert idx.get_term_frequency("σας", 4) == 1
    docs = {1: ["new", "words"], 2: [], 3: [], 4: ["ünïcode", "σας", "日本語"]}
    check_results(idx.search("words σας"), ref_scores(docs, ["words", "σας"]), 10)
    assert idx.stats()["avg_doc_length"] == pytest.approx(5 / 4)


def test_duplicate_ids_within_one_batch_keep_the_last():
    idx = InvertedIndex()
    idx.add_documents([(1, "first"), (2, "two"), (1, "second")])
    assert len(idx) == 2
    assert idx.search("first") == [] and [d for d, _ in idx.search("second")] == [1]


def test_stopwords_and_stemming_are_shared_by_queries():
    idx = InvertedIndex(Tokenizer(stopwords="english", stemmer="english"))
    idx.add_documents([(1, "The cats are running"), (2, "a cat runs"), (3, "the the the")])
    assert [d for d, _ in idx.search("running cat")] in ([1, 2], [2, 1])
    assert idx.search("the") == []
    assert idx.get_term_frequency("Cats", 1) == 1 and idx.get_document_frequency("run") == 2
    assert idx.stats()["avg_doc_length"] == pytest.approx((2 + 2 + 0) / 3)
    docs = {1: ["cat", "run"], 2: ["cat", "run"], 3: []}
    check_results(idx.search("cats"), ref_scores(docs, ["cat"]), 10)


# ---------------------------------------------------------------- random corpora
WORDS = ["a"] * 8 + ["b"] * 5 + ["c"] * 3 + ["d", "e", "f", "g", "h", "rare", "zz", "Qq"]
doc_texts = st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join)
query_texts = st.lists(st.sampled_from(WORDS + ["unknown"]), max_size=5).map(" ".join)


def _tokens(text: str) -> list[str]:
    return Tokenizer().encode(text)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(doc_texts, min_size=1, max_size=30),
    st.lists(query_texts, min_size=1, max_size=5),
    st.integers(1, 6),
    st.sampled_from([(1.5, 0.75), (0.0, 0.5), (1.2, 0.0), (2.0, 1.0)]),
)
def test_matches_reference_on_random_corpora(texts, queries, k, params):
    k1, b = params
    idx = InvertedIndex(k1=k1, b=b)
    idx.prune_min_postings = 0  # try MaxScore pruning even on tiny corpora
    idx.add_documents(enumerate(texts))
    docs = {i: _tokens(t) for i, t in enumerate(texts)}
    for q in queries:
        check_results(idx.search(q, top_k=k), ref_scores(docs, _tokens(q), k1, b), k)
    assert idx.search_many(queries, top_k=k) == [idx.search(q, top_k=k) for q in queries]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_pruned_path_matches_reference(seed, k):
    """Corpora where a rare high-idf term lets the later common terms be pruned."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(60, 200))
    texts = []
    for i in range(n):
        words = list(rng.choice(["a", "b", "c", "d"], size=int(rng.integers(1, 15))))
        if rng.random() < 0.08:
            words += ["rare"] * int(rng.integers(1, 4))
        if rng.random() < 0.3:
            words += ["mid"]
        texts.append(" ".join(words))
    pruned, exhaustive = InvertedIndex(), InvertedIndex()
    pruned.prune_min_postings = 0
    exhaustive.prune_min_postings = 1 << 62
    for idx in (pruned, exhaustive):
        idx.add_documents(enumerate(texts))
    docs = {i: _tokens(t) for i, t in enumerate(texts)}
    queries = ["rare a b c", "rare mid a", "mid a b c d", "rare rare a", "a b"]
    for q in queries:
        check_results(pruned.search(q, top_k=k), ref_scores(docs, _tokens(q)), k)
    # identical floats and order: both paths sum every score in the same term order
    assert pruned.search_many(queries, k) == exhaustive.search_many(queries, k)


def test_top10_matches_bm25s():
    bm25s = pytest.importorskip("bm25s")
    rng = np.random.default_rng(7)
    vocab = [f"w{i}" for i in range(80)]
    p = 1.0 / np.arange(1, 81) ** 1.1
    p /= p.sum()
    corpus = [list(rng.choice(vocab, size=int(rng.integers(5, 40)), p=p)) for _ in range(300)]
    idx = InvertedIndex(k1=1.5, b=0.75)
    idx.add_documents((i, " ".join(toks)) for i, toks in enumerate(corpus))
    retriever = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    retriever.index(corpus, show_progress=False)
    present = sorted({w for toks in corpus for w in toks})
    for _ in range(25):
        q = list(rng.choice(present, size=int(rng.integers(1, 5)), replace=False))
        ours = idx.search(" ".join(q), top_k=10)
        theirs = retriever.get_scores(q)
        top = np.argsort(-theirs, kind="stable")[:10]
        # same scores for the same documents, same top-10 away from ties at the cut
        for d, s in ours:
            assert s == pytest.approx(float(theirs[d]), rel=1e-4)
        np.testing.assert_allclose([s for _, s in ours], theirs[top][: len(ours)], rtol=1e-4)
        cut = theirs[top[-1]]
        assert {d for d, s in ours if s > cut * (1 + 1e-4)} == {
            int(d) for d in top if theirs[d] > cut * (1 + 1e-4)
        }


# ---------------------------------------------------------------- stateful
class IndexMachine(RuleBasedStateMachine):
    """The index against a dict of document texts and the reference scorer."""

    def __init__(self) -> None:
        super().__init__()
        self.idx = InvertedIndex()
        self.idx.prune_min_postings = 0
        self.docs: dict[int, list[str]] = {}

    @rule(doc_id=st.integers(0, 12), text=doc_texts)
    def add(self, doc_id, text):
        self.idx.add_document(doc_id, text)
        self.docs[doc_id] = _tokens(text)

    @rule(batch=st.lists(st.tuples(st.integers(0, 40), doc_texts), max_size=8))
    def add_many(self, batch):
        self.idx.add_documents(batch)
        for d, t in batch:
            self.docs[d] = _tokens(t)

    @precondition(lambda self: self.docs)
    @rule(data=st.data())
    def remove(self, data):
        doc_id = data.draw(st.sampled_from(sorted(self.docs)))
        self.idx.remove_document(doc_id)
        del self.docs[doc_id]

    @rule(doc_id=st.integers(0, 40))
    def remove_unknown(self, doc_id):
        if doc_id in self.docs:
            return
        with pytest.raises(NotFoundError):
            self.idx.remove_document(doc_id)

    @rule(query=query_texts, k=st.integers(1, 4))
    def search(self, query, k):
        check_results(self.idx.search(query, top_k=k), ref_scores(self.docs, _tokens(query)), k)

    @rule(queries=st.lists(query_texts, max_size=4), k=st.integers(1, 4))
    def search_many(self, queries, k):
        got = self.idx.search_many(queries, top_k=k)
        assert len(got) == len(queries)
        for q, res in zip(queries, got):
            check_results(res, ref_scores(self.docs, _tokens(q)), k)

    @rule(term=st.sampled_from(WORDS), data=st.data())
    def lookups(self, term, data):
        t = term.lower()
        assert self.idx.get_document_frequency(term) == sum(
            t in toks for toks in self.docs.values()
        )
        if self.docs:
            d = data.draw(st.sampled_from(sorted(self.docs)))
            assert self.idx.get_term_frequency(term, d) == self.docs[d].count(t)

    @rule()
    def check_stats(self):
        s = self.idx.stats()
        n = len(self.docs)
        assert s["total_documents"] == n
        assert s["total_postings"] == sum(len(set(t)) for t in self.docs.values())
        assert s["total_terms"] == len({w for t in self.docs.values() for w in t})
        avg = sum(len(t) for t in self.docs.values()) / n if n else 0.0
        assert s["avg_doc_length"] == pytest.approx(avg)

    @invariant()
    def membership(self):
        assert len(self.idx) == len(self.docs)
        for d in range(0, 41, 5):
            assert (d in self.idx) == (d in self.docs)


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


# ---------------------------------------------------------------- persistence
def _populated(tokenizer: Tokenizer | None = None) -> InvertedIndex:
    idx = InvertedIndex(tokenizer, k1=1.2, b=0.6)
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "running", "the"]
    idx.add_documents(
        (i * 3, " ".join(rng.choice(words, size=int(rng.integers(0, 12))))) for i in range(120)
    )
    for d in range(0, 120, 7):
        idx.remove_document(d * 3)
    idx.add_document(10**12, "alpha alpha zeta")
    return idx


QUERIES = ["alpha", "beta gamma", "épsilon zeta zeta", "runs the", "nothing"]


@pytest.mark.parametrize("tokenizer", [None, Tokenizer(stopwords="english", stemmer="english")])
def test_save_load_round_trip(tmp_path, tokenizer):
    idx = _populated(tokenizer)
    path = tmp_path / "index.llmds"
    idx.save(path)
    again = InvertedIndex.load(path)
    assert again.tokenizer == idx.tokenizer and (again.k1, again.b) == (idx.k1, idx.b)
    assert logical_stats(again) == logical_stats(idx)
    assert len(again) == len(idx) and 10**12 in again
    for q in QUERIES:
        assert again.search(q, top_k=20) == idx.search(q, top_k=20)
    assert again.search_many(QUERIES, 5) == idx.search_many(QUERIES, 5)
    # the loaded index keeps working
    again.add_document(5, "omega alpha")
    idx.add_document(5, "omega alpha")
    again.remove_document(10**12)
    idx.remove_document(10**12)
    assert again.search("alpha omega", 50) == idx.search("alpha omega", 50)


def test_index_bytes_is_the_varint_size_of_the_saved_postings(tmp_path):
    idx = _populated()
    stats = idx.stats()  # computed over the live postings of every segment
    path = tmp_path / "x.idx"
    idx.save(path)
    _, arrays, _ = read_checked(path, b"LLMDSINV", (1,))
    assert arrays["postings"].size == stats["index_bytes"]
    ptr = arrays["ptr"]
    expected = 0
    for t in range(ptr.size - 1):  # decode and re-encode by hand: gaps from -1, then tf
        slots, tfs, ok = K.decode_postings(arrays["postings"], ptr, arrays["slot_doc"].size)
        assert ok
        prev = -1
        for p in range(ptr[t], ptr[t + 1]):
            expected += len(K.varint_encode(np.array([slots[p] - prev, tfs[p]], np.int64))[0])
            prev = slots[p]
    assert expected == stats["index_bytes"]


def test_corrupt_truncated_and_wrong_version_files(tmp_path):
    path = tmp_path / "index.llmds"
    _populated().save(path)
    good = path.read_bytes()
    for pos in np.linspace(0, len(good) - 1, 25).astype(int):
        bad = bytearray(good)
        bad[pos] ^= 0x40
        path.write_bytes(bytes(bad))
        with pytest.raises(CorruptFileError):
            InvertedIndex.load(path)
    for n in (0, 5, len(good) // 2, len(good) - 1):
        path.write_bytes(good[:n])
        with pytest.raises(CorruptFileError):
            InvertedIndex.load(path)
    path.write_bytes(good)
    _, arrays, meta = read_checked(path, b"LLMDSINV", (1,))
    write_atomic(path, b"LLMDSINV", 99, arrays, meta)
    with pytest.raises(CorruptFileError, match="version 99"):
        InvertedIndex.load(path)
    with pytest.raises(FileNotFoundError):
        InvertedIndex.load(tmp_path / "missing")


def test_consistent_checksum_but_inconsistent_contents(tmp_path):
    path = tmp_path / "index.llmds"
    _populated().save(path)
    _, arrays, meta = read_checked(path, b"LLMDSINV", (1,))

    def forged(**changes):
        a = {k: v.copy() for k, v in arrays.items()}
        m = dict(meta)
        for k, v in changes.items():
            (m if k in m else a)[k] = v
        write_atomic(path, b"LLMDSINV", 1, a, m)
        with pytest.raises(CorruptFileError):
            InvertedIndex.load(path)

    lens = arrays["slot_len"].copy()
    lens[0] += 1
    forged(slot_len=lens)
    post = arrays["postings"].copy()
    post[-1] = 0x80  # a varint that never ends
    forged(postings=post)
    forged(postings=arrays["postings"][:-1].copy())
    forged(ptr=arrays["ptr"][:-1].copy())
    forged(slot_doc=np.zeros_like(arrays["slot_doc"]))  # duplicate ids
    forged(tokenizer={"stopwords": "klingon"})
    forged(k1=-1.0)


# ---------------------------------------------------------------- codec
@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**63 - 1), max_size=50))
def test_varint_round_trip(values):
    arr = np.array(values, dtype=np.int64)
    enc, ok = K.varint_encode(arr)
    assert ok
    assert enc.size == sum(max(1, (v.bit_length() + 6) // 7) for v in values)
    dec, ok = K.varint_decode(enc, len(values))
    assert ok and dec.tolist() == values
    if values:
        _, ok = K.varint_decode(enc[:-1], len(values))
        assert not ok
        _, ok = K.varint_decode(np.concatenate([enc, enc[:1]]), len(values))
        assert not ok  # trailing bytes


def test_varint_rejects_negative():
    _, ok = K.varint_encode(np.array([1, -1], np.int64))
    assert not ok


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 300), st.integers(1, 10**6)), max_size=20), max_size=10
    )
)
def test_postings_codec_round_trip(columns):
    cols = [sorted(dict(c).items()) for c in columns]  # unique ascending slots per term
    ptr = np.zeros(len(cols) + 1, np.int64)
    ptr[1:] = np.cumsum([len(c) for c in cols])
    slots = np.array([s for c in cols for s, _ in c], np.int32)
    tfs = np.array([t for c in cols for _, t in c], np.int32)
    enc = K.encode_postings(ptr, slots, tfs)
    s2, t2, ok = K.decode_postings(enc, ptr, 301)
    assert ok and s2.tolist() == slots.tolist() and t2.tolist() == tfs.tolist()
    if slots.size:
        assert not K.decode_postings(enc, ptr, int(slots.max()))[2]  # slot out of range


# ---------------------------------------------------------------- bad input
def test_bad_constructor_arguments():
    for kwargs in (
        {"k1": -0.1},
        {"k1": float("nan")},
        {"k1": float("inf")},
        {"k1": "1.5"},
        {"b": 1.5},
        {"b": -0.1},
        {"b": True},
        {"tokenizer": "english"},
    ):
        with pytest.raises(ValidationError):
            InvertedIndex(**kwargs)
    InvertedIndex(k1=0, b=0)
    InvertedIndex(k1=3.0, b=1)


def test_bad_inputs_change_nothing():
    idx = InvertedIndex()
    idx.add_document(1, "hello world")
    before = (idx.search("hello"), idx.stats())
    for doc_id in (True, 1.5, "3", None, 2**63, -(2**63) - 1, np.float64(2)):
        with pytest.raises(ValidationError):
            idx.add_document(doc_id, "x")
    for text in (None, b"bytes", 3):
        with pytest.raises(ValidationError):
            idx.add_document(2, text)
    with pytest.raises(ValidationError):
        idx.add_documents([(2, "fine"), (3, None)])  # validated before any change
    with pytest.raises(ValidationError):
        idx.add_documents([(2, "fine"), (4,)])
    with pytest.raises(ValidationError):
        idx.add_documents(5)
    for k in (0, -1, True, 2.5, None):
        with pytest.raises(ValidationError):
            idx.search("hello", top_k=k)
    with pytest.raises(ValidationError):
        idx.search(None)
    with pytest.raises(ValidationError):
        idx.search_many("hello")
    with pytest.raises(ValidationError):
        idx.search_many(["ok", 3])
    with pytest.raises(NotFoundError):
        idx.remove_document(99)
    with pytest.raises(KeyError):  # NotFoundError is a KeyError
        idx.remove_document(99)
    with pytest.raises(ValidationError):
        idx.remove_document("5")
    with pytest.raises(NotFoundError):
        idx.get_term_frequency("hello", 99)
    with pytest.raises(ValidationError):
        idx.get_term_frequency("two words", 1)
    with pytest.raises(ValidationError):
        idx.get_document_frequency(None)
    assert (idx.search("hello"), idx.stats()) == before
    assert len(idx) == 1 and 2 not in idx
    assert idx.search_many([], 3) == []
