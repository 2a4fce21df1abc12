"""HNSW: recall and distances against brute force, exact graphs under a seed,
save/load, deletions, growth, input validation and a stateful reference model."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llmds.retrieval import _hnsw_kernels as K
from llmds.retrieval._binfmt import read_checked, write_atomic
from llmds.errors import CorruptFileError, NotFoundError, ValidationError
from llmds.retrieval.hnsw import HNSW


# ------------------------------------------------------------------ helpers
def brute(X: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Exact distances (float64) of q to every row of X, as the index defines them."""
    X = X.astype(np.float64)
    q = q.astype(np.float64)
    if metric == "l2":
        return np.sqrt(((X - q) ** 2).sum(1))
    if metric == "ip":
        return 1.0 - X @ q
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    return 1.0 - Xn @ (q / np.linalg.norm(q))


def graphs_equal(a: HNSW, b: HNSW) -> bool:
    ga, gb = a.graph_arrays(), b.graph_arrays()
    return ga.keys() == gb.keys() and all(np.array_equal(ga[k], gb[k]) for k in ga) and \
        a.stats()["entry_point"] == b.stats()["entry_point"]


def check_invariants(h: HNSW) -> None:
    """Structural invariants of the graph every operation must keep."""
    g = h.graph_arrays()
    n, M = len(g["levels"]), h.config.M
    c0 = g["links0"][:, 0]
    assert ((c0 >= 0) & (c0 <= 2 * M)).all()
    assert int(g["levels"].sum()) == len(g["upper"])
    for i in range(n):
        row = g["links0"][i, 1:1 + c0[i]]
        assert len(set(row.tolist())) == len(row) and i not in row and ((row >= 0) & (row < n)).all()
        for lv in range(1, g["levels"][i] + 1):
            r = g["upper"][g["upper_off"][i] + lv - 1]
            nb = r[1:1 + r[0]]
            assert 0 <= r[0] <= M and i not in nb
            assert (g["levels"][nb] >= lv).all()  # links stay on their layer


@pytest.fixture(scope="module")
def data5k():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((5000, 64)).astype(np.float32)
    Q = rng.standard_normal((100, 64)).astype(np.float32)
    h = HNSW(64, M=16, ef_construction=200, seed=3)
    h.add_items(X)
    return X, Q, h


# ------------------------------------------------------------ quality
def test_recall_at_10_against_brute_force(data5k):
    X, Q, h = data5k
    d2 = (Q**2).sum(1)[:, None] - 2 * Q @ X.T + (X**2).sum(1)[None, :]
    truth = np.argsort(d2, axis=1)[:, :10]
    hits = 0
    for q, t in zip(Q, truth):
        res = h.search(q, 10, ef=100)
        assert [d for _, d in res] == sorted(d for _, d in res)
        hits += len({i for i, _ in res} & set(t.tolist()))
    assert hits / truth.size >= 0.95
    check_invariants(h)


def test_level_distribution_follows_ml(data5k):
    _, _, h = data5k
    lv = h.graph_arrays()["levels"]
    # P(level >= 1) = exp(-1/ml) = 1/M; binomial sd ~ 17 for 5000 nodes.
    assert abs((lv >= 1).sum() - 5000 / 16) < 5 * math.sqrt(5000 / 16 * (15 / 16))
    s = h.stats()
    assert s["num_layers"] == lv.max() + 1 and s["entry_point"] in h
    assert s["num_vectors"] == 5000 and 1 <= s["avg_degree"] <= 32


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_distances_equal_brute_force(metric):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 24)).astype(np.float32)
    h = HNSW(24, M=8, ef_construction=100, seed=0, metric=metric)
    h.add_items(X, ids=np.arange(1000, 1400))
    for q in rng.standard_normal((20, 24)).astype(np.float32):
        res = h.search(q, 10, ef=400)
        truth = brute(X, q, metric)
        ids = [i for i, _ in res]
        assert all(type(i) is int and type(d) is float for i, d in res)
        np.testing.assert_allclose([d for _, d in res], truth[np.array(ids) - 1000], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose([d for _, d in res], np.sort(truth)[:10], rtol=1e-4, atol=1e-4)


def test_select_heuristic_matches_reference():
    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((60, 8)).astype(np.float32)
    base = vecs[0]
    cand = np.arange(1, 60, dtype=np.int32)
    d = ((vecs[cand] - base) ** 2).sum(1).astype(np.float32)
    order = np.argsort(d, kind="stable")
    cd, ci = d[order], cand[order]
    out = np.empty(8, np.int32)
    k = K._select_heuristic(cd, ci, len(ci), 6, K.METRIC_L2, vecs, 8, out)
    ref: list[int] = []  # Algorithm 4: keep e iff dist(e, base) < dist(e, r) for every kept r
    for e, de in zip(ci.tolist(), cd.tolist()):
        if len(ref) == 6:
            break
        if all(de < ((vecs[e] - vecs[r]) ** 2).sum() for r in ref):
            ref.append(e)
    assert out[:k].tolist() == ref


# -------------------------------------------------------- determinism
def test_seeded_builds_are_identical_and_single_add_equals_add_items():
    X = np.random.default_rng(2).standard_normal((600, 16)).astype(np.float32)
    a = HNSW(16, M=6, ef_construction=40, seed=11)
    a.add_items(X)
    b = HNSW(16, M=6, ef_construction=40, seed=11)
    b.add_items(X[:250])
    b.add_items(X[250:])
    c = HNSW(16, M=6, ef_construction=40, seed=11, max_elements=4)  # grows 4 -> 1024
    for i, v in enumerate(X):
        c.add(v, i)
    assert graphs_equal(a, b) and graphs_equal(a, c)
    assert c.stats()["capacity"] >= 600
    d = HNSW(16, M=6, ef_construction=40, seed=12)
    d.add_items(X)
    assert not np.array_equal(a.graph_arrays()["levels"], d.graph_arrays()["levels"])
    check_invariants(c)


def test_growth_beyond_max_elements_keeps_results():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    h = HNSW(8, M=8, seed=1, max_elements=2)
    for start in range(0, 300, 7):
        h.add_items(X[start:start + 7])
    assert len(h) == 300 and h.stats()["capacity"] >= 300
    big = HNSW(8, M=8, seed=1, max_elements=1000)
    big.add_items(X)
    assert graphs_equal(h, big)
    q = rng.standard_normal(8).astype(np.float32)
    np.testing.assert_allclose([d for _, d in h.search(q, 5, ef=300)],
                               np.sort(brute(X, q, "l2"))[:5], rtol=1e-5)


# ---------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((500, 12)).astype(np.float32)
    h = HNSW(12, M=5, ef_construction=50, ef_search=30, seed=9, metric="cosine")
    h.add_items(X, ids=np.arange(500) * 3)
    h.mark_deleted(3)
    p = tmp_path / "idx.hnsw"
    h.save(p)
    g = HNSW.load(p)
    assert graphs_equal(h, g) and len(g) == 499 and 3 not in g and 6 in g
    assert {k: v for k, v in g.stats().items() if k != "capacity"} == \
        {k: v for k, v in h.stats().items() if k != "capacity"}
    Q = rng.standard_normal((20, 12)).astype(np.float32)
    for q in Q:
        assert h.search(q, 7) == g.search(q, 7)
    # The level RNG is saved too: growing both keeps them identical.
    Y = rng.standard_normal((50, 12)).astype(np.float32)
    h.add_items(Y)
    g.add_items(Y)
    assert graphs_equal(h, g)
    assert not any(f.name.endswith(".tmp") for f in tmp_path.iterdir())


def test_empty_index_round_trip(tmp_path):
    h = HNSW(3)
    h.save(tmp_path / "e")
    g = HNSW.load(tmp_path / "e")
    assert len(g) == 0 and g.search([1, 2, 3], 4) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "empty"])
def test_corrupt_files_are_rejected(tmp_path, damage):
    h = HNSW(4, seed=0)
    h.add_items(np.random.default_rng(0).standard_normal((50, 4)))
    p = tmp_path / "idx"
    h.save(p)
    raw = bytearray(p.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0x40
    elif damage == "magic":
        raw[0] ^= 0xFF
    else:
        raw = bytearray()
    p.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError):
        HNSW.load(p)


def test_checksum_valid_but_inconsistent_graph_is_rejected(tmp_path):
    h = HNSW(4, M=4, seed=0)
    h.add_items(np.random.default_rng(0).standard_normal((30, 4)))
    p = tmp_path / "idx"
    h.save(p)
    version, arrays, meta = read_checked(p, b"LLMDSHNSW", (1,))
    bad = {k: v.copy() for k, v in arrays.items()}
    bad["links0"][5, 1] = 999  # a link to a node that does not exist
    write_atomic(p, b"LLMDSHNSW", version, bad, meta)
    with pytest.raises(CorruptFileError):
        HNSW.load(p)
    bad = {k: v.copy() for k, v in arrays.items()}
    row = int(np.flatnonzero(bad["upper"][:, 0] > 0)[0])
    bad["upper"][row, 1] = int(np.flatnonzero(bad["levels"] == 0)[0])  # node without layer 1
    write_atomic(p, b"LLMDSHNSW", version, bad, meta)
    with pytest.raises(CorruptFileError):
        HNSW.load(p)
    write_atomic(p, b"LLMDSHNSW", version, arrays, {**meta, "M": "x"})
    with pytest.raises(CorruptFileError):
        HNSW.load(p)
    write_atomic(p, b"LLMDSHNSW", version, arrays, {k: v for k, v in meta.items() if k != "rng"})
    with pytest.raises(CorruptFileError):
        HNSW.load(p)


# ------------------------------------------------------------ deletion
def test_mark_deleted_ids_are_never_returned():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    h = HNSW(8, M=8, seed=2)
    h.add_items(X)
    gone = set(range(0, 300, 2))
    for i in gone:
        h.mark_deleted(i)
    assert len(h) == 150 and 0 not in h and 1 in h and h.stats()["num_deleted"] == 150
    live = np.array(sorted(set(range(300)) - gone))
    for q in rng.standard_normal((20, 8)).astype(np.float32):
        res = h.search(q, 10, ef=300)
        assert not gone & {i for i, _ in res}
        np.testing.assert_allclose([d for _, d in res], np.sort(brute(X[live], q, "l2"))[:10], rtol=1e-5)
        ids, _ = h.search_batch(q[None], 10, ef=300)
        assert not gone & set(ids[0].tolist())
    with pytest.raises(NotFoundError):
        h.mark_deleted(0)  # already deleted
    with pytest.raises(NotFoundError):
        h.mark_deleted(12345)
    with pytest.raises(ValidationError):
        h.mark_deleted(1.0)
    h.add(X[0] + 1, 0)  # a deleted id may be added again, as a new node
    assert 0 in h and h.search(X[0] + 1, 1)[0][0] == 0
    for i in list(range(1, 300, 2)) + [0]:
        h.mark_deleted(i)
    assert len(h) == 0 and h.search(X[0], 3) == []
    ids, dist = h.search_batch(X[:2], 3)
    assert (ids == -1).all() and np.isinf(dist).all()


def test_delete_repairs_neighbours_and_reuses_slots_with_recall_kept():
    """Replace 40% of 3,000 vectors: the graph does not grow, deleted ids never come
    back, and recall@10 over the live set stays at the level of a fresh build."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((3000, 32)).astype(np.float32)
    h = HNSW(32, M=12, ef_construction=100, seed=5)
    h.add_items(X)
    links_before = {}
    victims = rng.choice(3000, 1200, replace=False)
    for v in victims.tolist():
        node = h._ids[v]
        out = h._g.links0[node, 1:1 + h._g.links0[node, 0]].copy()
        h.mark_deleted(v)
        links_before[v] = (node, out)
    v, (node, out) = next(iter(links_before.items()))
    for nb in out.tolist():  # live out-neighbours no longer link back to a deleted node
        if not h._g.nodes[nb, 2]:
            assert node not in h._g.links0[nb, 1:1 + h._g.links0[nb, 0]].tolist()
    assert h.stats()["num_deleted"] == 1200
    Y = rng.standard_normal((1200, 32)).astype(np.float32)
    new_ids = np.arange(-1200, 0)  # negative ids are ids like any other
    h.add_items(Y, new_ids)
    assert h._g.count <= 3001 and h.stats()["num_deleted"] <= 1  # slots reused (not the entry's)
    check_invariants(h)
    live_ids = np.concatenate([np.setdiff1d(np.arange(3000), victims), new_ids])
    vecs = {i: X[i] for i in range(3000)} | {int(i): Y[j] for j, i in enumerate(new_ids)}
    L = np.stack([vecs[int(i)] for i in live_ids])
    Q = rng.standard_normal((100, 32)).astype(np.float32)
    hits = 0
    for q in Q:
        truth = set(live_ids[np.argsort(((L - q) ** 2).sum(1))[:10]].tolist())
        got = {i for i, _ in h.search(q, 10, ef=80)}
        assert not got & set(victims.tolist()) - set(live_ids.tolist())
        hits += len(got & truth)
    assert hits / 1000 >= 0.9


def test_any_int64_id_round_trips(tmp_path):
    ids = [-(2**63), -5, 0, 2**63 - 1]
    h = HNSW(4, seed=0)
    h.add_items(np.eye(4, dtype=np.float32), ids)
    assert [i for i, _ in h.search(np.eye(4)[1], 1)] == [-5]
    h.mark_deleted(-(2**63))
    with pytest.raises(ValidationError):
        h.add_items(np.ones((1, 4)))  # default ids would pass 2**63 - 1
    h.save(tmp_path / "h")
    g = HNSW.load(tmp_path / "h")
    assert sorted(g._ids) == [-5, 0, 2**63 - 1]
    assert g.search(np.eye(4)[3], 4) == h.search(np.eye(4)[3], 4)
    for bad in (2**63, -(2**63) - 1):
        with pytest.raises(ValidationError):
            g.add(np.ones(4), bad)
    with pytest.raises(ValidationError):
        g.mark_deleted(2**63)


# ------------------------------------------------------------- batch
def test_search_batch_equals_search_and_pads():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((200, 10)).astype(np.float32)
    h = HNSW(10, M=6, seed=4, metric="ip")
    h.add_items(X, ids=np.arange(200) + 50)
    Q = rng.standard_normal((30, 10))  # float64 input is converted
    ids, dist = h.search_batch(Q, 8, ef=20)
    assert ids.shape == (30, 8) and ids.dtype == np.int64 and dist.dtype == np.float32
    for q, row_i, row_d in zip(Q, ids, dist):
        res = h.search(q, 8, ef=20)
        assert [i for i, _ in res] == row_i.tolist()
        assert [d for _, d in res] == row_d.tolist()
    small = HNSW(10, seed=0)
    small.add_items(X[:3])
    ids, dist = small.search_batch(Q[:2], 5)
    assert (ids[:, 3:] == -1).all() and np.isinf(dist[:, 3:]).all() and (ids[:, :3] >= 0).all()
    assert len(small.search(Q[0], 5)) == 3


def test_query_forms_give_identical_results():
    # Exercises the compiled fast path with float64, strided, read-only and
    # (1, dim) queries: each is converted to the one C-contiguous float32 form.
    rng = np.random.default_rng(12)
    X = rng.standard_normal((150, 16)).astype(np.float32)
    h = HNSW(16, M=8, seed=5)
    h.add_items(X)
    q = rng.standard_normal(16).astype(np.float32)
    ref = h.search(q, 6)
    ro = q.copy()
    ro.flags.writeable = False
    strided = np.repeat(q, 2)[::2]
    for form in (q.astype(np.float64), strided, ro, q[None, :], q.tolist()):
        assert h.search(form, 6) == ref
    assert h.search(q, 2) == ref[:2] and h.search(q, 6) == ref  # buffers re-sized both ways
    h.ef_search = 150
    assert h.ef_search == 150 and h.search(q, 6) == h.search(q, 6, ef=150)
    assert h.search(q, 6, ef=2**70) == h.search(q, 6, ef=150)  # huge ef is clamped
    one = HNSW(16, max_elements=1)  # its links view is a single (contiguous) row
    one.add(q, 7)
    assert one.search(q, 3) == [(7, 0.0)] and h.search(q, 6) == ref


def test_result_count_follows_growth():
    h = HNSW(4, seed=0)
    X = np.random.default_rng(13).standard_normal((20, 4)).astype(np.float32)
    h.add_items(X[:3])
    assert len(h.search(X[0], 5)) == 3
    h.add_items(X[3:])
    assert len(h.search(X[0], 5)) == 5


def test_visited_epoch_wraparound():
    X = np.random.default_rng(9).standard_normal((100, 4)).astype(np.float32)
    h = HNSW(4, M=4, seed=0)
    h.add_items(X)
    before = [h.search(q, 5, ef=100) for q in X[:5]]
    h._g.state[K.S_EPOCH] = 2**32 - 2  # two searches from the wrap
    after = [h.search(q, 5, ef=100) for q in X[:5]]
    assert before == after and h._g.state[K.S_EPOCH] < 10


# -------------------------------------------------------- validation
def test_constructor_validation():
    for kwargs in ({"dim": 0}, {"dim": 4, "M": 1}, {"dim": 4, "ef_construction": 0},
                   {"dim": 4, "ef_search": 0}, {"dim": 4, "metric": "hamming"},
                   {"dim": 4, "ml": -1.0}, {"dim": 4, "ml": float("nan")},
                   {"dim": 4, "max_elements": 0}, {"dim": 4, "seed": -1}, {"dim": 2.5},
                   {"dim": True}):
        with pytest.raises(ValidationError):
            HNSW(**kwargs)
    assert HNSW(4, ml=0.0).stats()["ml"] == 0.0


def test_bad_inputs_raise_and_change_nothing():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((40, 6)).astype(np.float32)
    h = HNSW(6, M=4, seed=0)
    h.add_items(X)
    snap, state = h.graph_arrays(), h._rng.bit_generator.state
    nan, inf = X[0].copy(), X[0].copy()
    nan[2], inf[3] = np.nan, np.inf
    bad_calls = [
        lambda: h.add(X[0][:5], 100), lambda: h.add(nan, 100), lambda: h.add(inf, 100),
        lambda: h.add(X[0], 3), lambda: h.add(X[0], 2**63), lambda: h.add(X[0], 1.5),
        lambda: h.add(X[0], "a"), lambda: h.add(X[:2], 100),
        lambda: h.add_items(X[:2], [100, 100]), lambda: h.add_items(X[:2], [100]),
        lambda: h.add_items(np.vstack([X[:1], nan[None]]), [100, 101]),
        lambda: h.add_items(X[:2, :5]), lambda: h.add_items([["a"] * 6]),
        lambda: h.search(X[0], 0), lambda: h.search(X[0], -3), lambda: h.search(X[0], 2.0),
        lambda: h.search(X[0], 3, ef=0), lambda: h.search(X[0][:5], 3), lambda: h.search(nan, 3),
        lambda: h.search(inf, 3), lambda: h.search(X[:2], 3), lambda: h.search("abc", 3),
        lambda: h.search_batch(X[:, :5], 3), lambda: h.search_batch(np.vstack([X[:2], nan]), 3),
        lambda: h.search_batch(X[:2], 0),
    ]
    for call in bad_calls:
        with pytest.raises(ValidationError):
            call()
    assert len(h) == 40
    after = h.graph_arrays()
    assert all(np.array_equal(snap[k], after[k]) for k in snap)
    assert h._rng.bit_generator.state == state
    c = HNSW(3, metric="cosine")
    with pytest.raises(ValidationError):
        c.add(np.zeros(3), 0)
    c.add(np.ones(3), 0)
    with pytest.raises(ValidationError):
        c.search(np.zeros(3), 1)
    with pytest.raises(ValidationError):
        h.ef_search = 0


def test_default_ids_continue_after_largest():
    h = HNSW(2, seed=0)
    h.add_items(np.eye(2), ids=[5, 9])
    h.add_items(np.ones((2, 2)))
    assert sorted(h._ids) == [5, 9, 10, 11]
    assert HNSW(2).search(np.ones(2), 3) == []


# ------------------------------------------------------ property tests
@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 33), st.integers(1, 6), st.sampled_from(["l2", "ip", "cosine"]),
    st.integers(0, 2**31 - 1), st.integers(1, 12),
)
def test_small_sets_with_ef_ge_n_are_exact(n, dim, metric, seed, k):
    # With n <= 2M + 1 no layer-0 list ever overflows, so no link is pruned and
    # every node stays reachable; ef >= n then explores the whole graph.
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, dim)).astype(np.float32)
    X[np.linalg.norm(X, axis=1) < 1e-3] = 0.5
    h = HNSW(dim, M=16, ef_construction=8, seed=seed, metric=metric)
    h.add_items(X)
    q = rng.uniform(-1, 1, dim).astype(np.float32) + 0.01
    res = h.search(q, k, ef=n)
    truth = brute(X, q, metric)
    assert len(res) == min(k, n)
    np.testing.assert_allclose([d for _, d in res], np.sort(truth)[: min(k, n)], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([d for _, d in res], truth[[i for i, _ in res]], rtol=1e-4, atol=1e-5)


class HNSWMachine(RuleBasedStateMachine):
    """Adds, deletes and re-adds against a dict model; searches with ef >= n must
    be exact over the live set (<= 33 nodes so no pruning can disconnect).
    Deleted slots are reused: the graph never holds more than the peak number of
    live vectors plus one (the entry point's slot is never reused)."""

    def __init__(self):
        super().__init__()
        self.h = HNSW(3, M=16, ef_construction=10, seed=0, max_elements=2)
        self.model: dict[int, np.ndarray] = {}
        self.nodes = 0  # graph nodes (live + deleted awaiting reuse)
        self.peak = 0

    @precondition(lambda self: self.nodes < 33)
    @rule(vid=st.integers(0, 15), v=st.lists(st.floats(-4, 4, width=32), min_size=3, max_size=3))
    def add(self, vid, v):
        v = np.array(v, np.float32)
        if vid in self.model:
            with pytest.raises(ValidationError):
                self.h.add(v, vid)
        else:
            self.h.add(v, vid)
            self.model[vid] = v
            self.nodes = self.h._g.count
            self.peak = max(self.peak, len(self.model))

    @rule(vid=st.integers(0, 15))
    def delete(self, vid):
        if vid in self.model:
            self.h.mark_deleted(vid)
            del self.model[vid]
        else:
            with pytest.raises(NotFoundError):
                self.h.mark_deleted(vid)

    @rule(q=st.lists(st.floats(-4, 4, width=32), min_size=3, max_size=3), k=st.integers(1, 20))
    def search(self, q, k):
        q = np.array(q, np.float32)
        res = self.h.search(q, k, ef=max(self.nodes, 1))
        ids = sorted(self.model)
        assert len(res) == min(k, len(ids))
        if ids:
            truth = np.sort(brute(np.stack([self.model[i] for i in ids]), q, "l2"))[:k]
            np.testing.assert_allclose([d for _, d in res], truth, rtol=1e-4, atol=1e-4)
            assert {i for i, _ in res} <= set(ids)

    @invariant()
    def counts(self):
        assert len(self.h) == len(self.model)
        assert self.h.stats()["num_deleted"] == self.h._g.count - len(self.model)
        assert self.h._g.count <= self.peak + 1
        assert all(i in self.h for i in self.model)


TestHNSWMachine = HNSWMachine.TestCase
TestHNSWMachine.settings = settings(max_examples=25, stateful_step_count=40, deadline=None)

