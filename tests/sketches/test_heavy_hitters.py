"""HeavyHitters: exact counts on small key sets, hot-set capacity, discard, buffering."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.errors import ValidationError
from llmds.sketches.heavy_hitters import HeavyHitters


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=300), st.integers(1, 64))
def test_counts_never_under_and_hot_set_is_the_top(keys, flush_every):
    hh = HeavyHitters(capacity=5, width=1 << 14, depth=4, flush_every=flush_every)
    for i in range(0, len(keys), 7):
        hh.record(keys[i : i + 7])
    true = Counter(keys)
    for k, c in true.items():
        assert hh.estimate(k) >= c
    assert hh.total() == len(keys)
    hot = hh.hot(1)
    assert len(hot) == min(5, len(true))
    est = [hh.estimate(k) for k in hot]
    assert est == sorted(est, reverse=True)
    # nothing outside the hot set beats its coldest member by more than the sketch's slack
    if hot and len(true) > 5:
        assert max(c for k, c in true.items() if k not in hot) <= hh.estimate(hot[-1])


def test_string_keys_threshold_and_discard():
    hh = HeavyHitters(capacity=3)
    hh.record(["a", "b", "a", "c", "a", "b"])
    assert hh.hot(2) == ["a", "b"]
    assert hh.hot(1) == ["a", "b", "c"]
    hh.record(["c"])
    hh.discard("a")  # the pending "c" is applied first
    assert hh.hot(1) == ["b", "c"]
    assert hh.estimate("a") == 3  # the sketch keeps its counts
    assert len(hh) == 2


def test_capacity_eviction_order():
    hh = HeavyHitters(capacity=2, flush_every=1)
    hh.record([1] * 5 + [2] * 1 + [3] * 4)
    assert hh.hot(1) == [1, 3]


def test_bad_arguments():
    for kw in ({"capacity": 0}, {"flush_every": 0}, {"capacity": True}):
        with pytest.raises(ValidationError):
            HeavyHitters(**kw)
    with pytest.raises(ValidationError):
        HeavyHitters().hot(math.nan)
