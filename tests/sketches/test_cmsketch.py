"""CountMinSketch: never under-counts, exact when wide, stable hashes, conservative update."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from llmds.sketches.cmsketch import CountMinSketch, _keys
from llmds.errors import ValidationError

# small universe so items repeat; "a" and b"a" are deliberately the same item
items_st = st.one_of(
    st.sampled_from(["a", "b", "doc-1", "", "é", "x\x00y", "hot"]),
    st.sampled_from([b"a", b"zz", b"\x00"]),
    st.integers(-3, 40),
)


def canon(item):
    return item.encode() if isinstance(item, str) else item


class CMSMachine(RuleBasedStateMachine):
    """Four sketches fed the same stream: narrow/wide x plain/conservative."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow = CountMinSketch(width=8, depth=3, seed=1)
        self.narrow_cu = CountMinSketch(width=8, depth=3, seed=1, conservative=True)
        self.wide = CountMinSketch(width=1 << 16, depth=4, seed=2)
        self.wide_cu = CountMinSketch(width=1 << 16, depth=4, seed=2, conservative=True)
        self.sketches = [self.narrow, self.narrow_cu, self.wide, self.wide_cu]
        self.truth: Counter = Counter()

    @rule(item=items_st, count=st.integers(0, 5))
    def add(self, item, count):
        for s in self.sketches:
            s.add(item, count)
        self.truth[canon(item)] += count

    @rule(
        batch=st.lists(st.tuples(items_st, st.integers(0, 4)), max_size=12),
        use_counts=st.booleans(),
    )
    def add_many(self, batch, use_counts):
        items = [i for i, _ in batch]
        counts = [c for _, c in batch] if use_counts else None
        for s in self.sketches:
            s.add_many(items, counts)
        for i, c in batch:
            self.truth[canon(i)] += c if use_counts else 1

    @rule(batch=st.lists(st.integers(-5, 40), max_size=12))
    def add_many_array(self, batch):
        arr = np.asarray(batch, dtype=np.int32)
        for s in self.sketches:
            s.add_many(arr)
        self.truth.update(batch)

    @invariant()
    def never_under_counts(self):
        probe = list(self.truth) + ["never-added", 999]
        true = np.array([self.truth[canon(i)] for i in probe], dtype=np.int64)
        for s in self.sketches:
            est = s.estimate_many(probe)
            assert est.dtype == np.int64
            assert (est >= true).all()
            assert s.get_total_count() == sum(self.truth.values())
        # wide sketches are exact; conservative never exceeds plain
        assert (self.wide.estimate_many(probe) == true).all()
        assert (self.wide_cu.estimate_many(probe) == true).all()
        assert (self.narrow_cu.estimate_many(probe) <= self.narrow.estimate_many(probe)).all()
        for i in probe[:3]:
            assert self.narrow.estimate(i) == self.narrow.estimate_many([i])[0]


TestCMS = CMSMachine.TestCase
TestCMS.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def test_add_many_equals_sequential_add_with_duplicates_conservative():
    rng = np.random.default_rng(3)
    items = rng.integers(0, 50, 2000)
    counts = rng.integers(0, 5, 2000)
    a = CountMinSketch(width=16, depth=3, conservative=True)
    b = CountMinSketch(width=16, depth=3, conservative=True)
    a.add_many(items, counts)
    for i, c in zip(items.tolist(), counts.tolist(), strict=True):
        b.add(i, c)
    assert np.array_equal(a.table, b.table)
    true = np.bincount(items, weights=counts, minlength=50).astype(np.int64)
    assert (a.estimate_many(np.arange(50)) >= true).all()


def test_input_forms_give_the_same_keys():
    ints = [0, 1, -1, 2**63 - 1, -(2**63), 2**40]
    ref = _keys(ints)
    assert np.array_equal(ref, _keys(np.array(ints, dtype=np.int64)))
    assert np.array_equal(ref, _keys([np.int64(i) for i in ints]))
    assert np.array_equal(_keys([2**64 - 1]), _keys([-1]))  # same 64-bit pattern
    assert np.array_equal(_keys(np.array([5, 6], dtype=np.uint8)), _keys([5, 6]))
    assert np.array_equal(_keys([True, False]), _keys([1, 0]))
    strs = ["a", "é", "", "x\x00y", "long" * 50]
    ref = _keys(strs)
    assert np.array_equal(ref, _keys([s.encode() for s in strs]))  # str == its UTF-8 bytes
    assert np.array_equal(ref, _keys(np.array(strs, dtype=object)))
    assert np.array_equal(ref, np.concatenate([_keys([s]) for s in strs]))
    mixed = ["a", 7, b"q", "x\x00y"]
    assert np.array_equal(_keys(mixed), np.concatenate([_keys([m]) for m in mixed]))
    assert len(set(_keys(["", "\x00", "\x00\x00", "a", "a\x00"]).tolist())) == 5


@pytest.mark.parametrize("conservative", [False, True])
def test_mixed_batches_key_each_item_by_its_own_type(conservative):
    """The documented rule: a mixed batch counts like ``add`` on each item; 1 and "1" differ."""
    batch = [1, "a", "1", b"1", np.int64(1), True, "a", 2**64 - 1, -1, bytearray(b"a")]
    one_by_one = CountMinSketch(width=1 << 16, depth=4, conservative=conservative)
    for item in batch:
        one_by_one.add(item)
    for form in (batch, tuple(batch), np.array(batch, dtype=object), iter(batch)):
        c = CountMinSketch(width=1 << 16, depth=4, conservative=conservative)
        c.add_many(form)
        assert np.array_equal(c.table, one_by_one.table)
        assert c.estimate_many([1, "1", "a", -1, 2]).tolist() == [3, 2, 3, 2, 0]
    first_str = CountMinSketch(width=1 << 16, depth=4, conservative=conservative)
    first_str.add_many(["1", 1])  # the same rule whichever type comes first
    assert first_str.estimate_many([1, "1"]).tolist() == [1, 1]
    # numpy decides the dtype of an array: [1, "a"] becomes a string array
    arr = CountMinSketch(width=1 << 16, depth=4)
    arr.add_many(np.array([1, "a"]))
    assert arr.estimate_many(["1", 1]).tolist() == [1, 0]


M64 = (1 << 64) - 1


def ref_splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def ref_key(item):
    """Pure-Python statement of the documented key: the hash is part of the format."""
    if isinstance(item, int):
        return ref_splitmix64(item & M64)
    data = item.encode() if isinstance(item, str) else item
    h = 0xCBF29CE484222325  # FNV-1a 64
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & M64
    return ref_splitmix64(h ^ ((len(data) << 33) & M64))


def test_keys_match_reference_definition():
    items = ["hello", "", "é", "x\x00y", b"\xff\x00", 0, -1, 2**63, 12345678901234]
    assert _keys(items).tolist() == [ref_key(i) for i in items]
    assert ref_key(0) == 0xE220A8397B1DCDAF  # published first splitmix64 output for state 0


def test_hashes_stable_across_processes():
    code = (
        "from llmds.sketches.cmsketch import CountMinSketch as C; c = C(width=64, depth=3, seed=9); "
        "c.add_many(['a', 'bb', 'a', 7, b'z']); print(c.table.tolist())"
    )
    env = dict(
        os.environ,
        PYTHONHASHSEED="12345",
        PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"),
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    c = CountMinSketch(width=64, depth=3, seed=9)
    c.add_many(["a", "bb", "a", 7, b"z"])
    assert out.strip() == str(c.table.tolist())


def test_error_bound_holds_for_most_items():
    rng = np.random.default_rng(0)
    stream = rng.zipf(1.3, 50_000) % 5000
    c = CountMinSketch(width=272, depth=5, seed=4)  # e/272 ~ 1% of the total
    c.add_many(stream)
    assert c.get_error_bound() == pytest.approx(math.e / 272 * 50_000)
    uniq, true = np.unique(stream, return_counts=True)
    over = c.estimate_many(uniq) - true
    assert (over >= 0).all()
    assert (over <= c.get_error_bound()).mean() >= 1 - math.exp(-5) - 0.01


def test_merge_equals_one_stream_and_checks_params():
    a, b, both = (CountMinSketch(width=32, depth=3, seed=5) for _ in range(3))
    a.add_many(["x", "y", "x"])
    b.add_many([1, 2, "x"], [3, 4, 5])
    both.add_many(["x", "y", "x", 1, 2, "x"], [1, 1, 1, 3, 4, 5])
    a.merge(b)
    assert np.array_equal(a.table, both.table) and a.get_total_count() == 15
    for other in (
        CountMinSketch(width=16, depth=3, seed=5),
        CountMinSketch(width=32, depth=2, seed=5),
        CountMinSketch(width=32, depth=3, seed=6),
    ):
        with pytest.raises(ValidationError):
            a.merge(other)
    with pytest.raises(ValidationError):
        a.merge("sketch")
    assert a.get_total_count() == 15


def test_is_hot_reset_and_types():
    c = CountMinSketch()
    c.add("doc", 10)
    hot = c.is_hot("doc", 10)
    assert hot is True and c.is_hot("doc", 11) is False and c.is_hot("other", 1) is False
    assert type(c.estimate("doc")) is int
    c.reset()
    assert c.estimate("doc") == 0 and c.get_total_count() == 0 and c.get_error_bound() == 0.0
    with pytest.raises(ValidationError):
        c.is_hot("doc", math.nan)
    with pytest.raises(ValueError):
        c.table[0, 0] = 1  # read-only view


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 0},
        {"width": -5},
        {"width": True},
        {"width": 2.0},
        {"width": 2**32},
        {"depth": 0},
        {"depth": True},
        {"depth": "4"},
        {"seed": 1.5},
        {"seed": True},
        {"conservative": 1},
    ],
)
def test_bad_constructor_args(kwargs):
    with pytest.raises(ValidationError):
        CountMinSketch(**kwargs)


def test_bad_input_changes_nothing():
    c = CountMinSketch(width=64, depth=2)
    c.add("a", 2)
    before = c.table.copy()
    for bad_count in (-1, True, 1.5, "2", None):
        with pytest.raises(ValidationError):
            c.add("a", bad_count)
    for bad_item in (1.5, None, ["a"], 2**64, -(2**63) - 1):
        with pytest.raises(ValidationError):
            c.add(bad_item)
    bad_batches = [
        (["a", "b"], [1]),  # wrong length
        (["a", "b"], [1, -1]),  # negative
        (["a", "b"], [1.0, 2.0]),  # float counts
        (["a", 1.5], None),  # bad item anywhere in the batch
        (np.zeros((2, 2), dtype=np.int64), None),  # not 1-D
        (np.array([1.0, 2.0]), None),  # float array
        ("ab", None),  # a string is not a batch
        (5, None),
    ]
    for items, counts in bad_batches:
        with pytest.raises(ValidationError):
            c.add_many(items, counts)
    assert np.array_equal(c.table, before) and c.get_total_count() == 2


def test_empty_batches_and_zero_counts():
    c = CountMinSketch()
    c.add_many([])
    c.add_many(np.array([], dtype=np.int64))
    c.add("a", 0)
    assert c.get_total_count() == 0 and c.estimate("a") == 0
    assert c.estimate_many([]).shape == (0,)
