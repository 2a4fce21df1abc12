"""IndexedHeap: exact pop order (FIFO ties) against a sorted-list model, plus bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llmds.errors import NotFoundError, StateError, ValidationError
from llmds.scheduling.indexed_heap import _MIN_COMPACT, EmptyHeapError, IndexedHeap

scores = st.one_of(st.integers(-3, 3), st.floats(-3, 3, allow_nan=False), st.just(math.inf))
# mixed int/str ids: any comparison that reaches two different ids would raise TypeError
ALL_KEYS = list(range(15)) + [f"k{i}" for i in range(15)]
keys = st.sampled_from(ALL_KEYS)


class HeapMachine(RuleBasedStateMachine):
    """Model: {key: (score, first_push_seq)}; the top is min (or max) score, then min seq."""

    max_heap = False

    def __init__(self) -> None:
        super().__init__()
        self.heap = IndexedHeap(max_heap=self.max_heap)
        self.model: dict[object, tuple[float, int]] = {}
        self.seq = 0

    def expected_order(self) -> list[tuple[float, int]]:
        sign = -1 if self.max_heap else 1
        ranked = sorted(self.model.items(), key=lambda kv: (sign * kv[1][0], kv[1][1]))
        return [(s, k) for k, (s, _) in ranked]

    @rule(key=keys, score=scores)
    def push(self, key, score):
        if key in self.model:
            with pytest.raises(ValidationError):
                self.heap.push(key, score)
        else:
            self.heap.push(key, score)
            self.model[key] = (score, self.seq)
            self.seq += 1

    @rule()
    def pop(self):
        if not self.model:
            with pytest.raises(EmptyHeapError):
                self.heap.pop()
            return
        expected = self.expected_order()[0]
        assert self.heap.pop() == expected
        del self.model[expected[1]]

    @rule(key=keys, score=scores)
    def decrease_key(self, key, score):
        if key not in self.model:
            with pytest.raises(NotFoundError):
                self.heap.decrease_key(key, score)
        elif score > self.model[key][0]:
            with pytest.raises(ValidationError):
                self.heap.decrease_key(key, score)
        else:
            self.heap.decrease_key(key, score)
            self.model[key] = (score, self.model[key][1])

    @rule(key=keys, score=scores)
    def increase_key(self, key, score):
        if key not in self.model:
            with pytest.raises(NotFoundError):
                self.heap.increase_key(key, score)
        elif score < self.model[key][0]:
            with pytest.raises(ValidationError):
                self.heap.increase_key(key, score)
        else:
            self.heap.increase_key(key, score)
            self.model[key] = (score, self.model[key][1])

    @rule(key=keys, score=scores)
    def update(self, key, score):
        if key not in self.model:
            with pytest.raises(NotFoundError):
                self.heap.update(key, score)
        else:
            self.heap.update(key, score)
            self.model[key] = (score, self.model[key][1])

    @rule(key=keys)
    def delete(self, key):
        if key not in self.model:
            with pytest.raises(NotFoundError):
                self.heap.delete(key)
        else:
            assert self.heap.delete(key) == (self.model.pop(key)[0], key)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def drain_some(self, data):
        n = data.draw(st.integers(1, len(self.model)))
        expected = self.expected_order()[:n]
        assert [self.heap.pop() for _ in range(n)] == expected
        for _, k in expected:
            del self.model[k]

    @invariant()
    def matches_model(self):
        h = self.heap
        assert len(h) == h.size() == len(self.model)
        assert h.is_empty() == (not self.model)
        order = self.expected_order()
        assert h.peek() == (order[0] if order else None)
        for k in ALL_KEYS:
            expected = self.model[k][0] if k in self.model else None
            assert h.get_score(k) == expected
            assert (k in h) == h.contains(k) == (k in self.model)
        # lazy deletion never lets stale entries dominate memory
        assert len(h._heap) <= 2 * len(self.model) + _MIN_COMPACT + 1


class MaxHeapMachine(HeapMachine):
    max_heap = True


TestMinHeap = HeapMachine.TestCase
TestMinHeap.settings = settings(max_examples=50, stateful_step_count=60, deadline=None)
TestMaxHeap = MaxHeapMachine.TestCase
TestMaxHeap.settings = settings(max_examples=40, stateful_step_count=60, deadline=None)


def test_ties_are_fifo_and_updates_keep_their_place():
    h = IndexedHeap()
    for k in ["a", "b", "c", "d"]:
        h.push(k, 1)
    h.decrease_key("a", 0)
    h.increase_key("a", 1)  # back to 1: still first among equals
    h.delete("b")
    h.push("b", 1)  # re-pushed: now last
    assert [h.pop()[1] for _ in range(4)] == ["a", "c", "d", "b"]


def test_max_heap_order_and_key_directions():
    h = IndexedHeap(max_heap=True)
    for k, s in enumerate([5, 1, 3, 3]):
        h.push(k, s)
    h.increase_key(1, 4)  # score 1 -> 4
    h.decrease_key(0, 2)  # score 5 -> 2
    with pytest.raises(ValidationError):
        h.decrease_key(2, 10)
    assert [h.pop() for _ in range(4)] == [(4, 1), (3, 2), (3, 3), (2, 0)]


def test_many_updates_compact_and_keep_order():
    h = IndexedHeap()
    rng = np.random.default_rng(1)
    for k in range(200):
        h.push(k, float(rng.random()))
    final = {}
    for _ in range(5000):
        k = int(rng.integers(200))
        s = float(rng.random())
        h.update(k, s)
        final[k] = s
    assert len(h._heap) <= 2 * 200 + _MIN_COMPACT + 1
    popped = [h.pop() for _ in range(200)]
    assert [s for s, _ in popped] == sorted(s for s, _ in popped)
    for s, k in popped:
        if k in final:
            assert s == final[k]


def test_empty_heap():
    h = IndexedHeap()
    assert h.peek() is None
    assert h.is_empty() and len(h) == 0 and not h
    with pytest.raises(IndexError):
        h.pop()
    with pytest.raises(StateError):
        h.pop()


def test_duplicate_push_leaves_heap_unchanged():
    h = IndexedHeap()
    h.push(0, 2.0)
    with pytest.raises(ValidationError, match="already"):
        h.push(0, 1.0)
    assert h.get_score(0) == 2.0 and len(h) == 1


@pytest.mark.parametrize("bad", [math.nan, np.float64("nan"), True, "1", None, 1 + 2j])
def test_bad_scores_rejected(bad):
    h = IndexedHeap()
    h.push(1, 1.0)
    with pytest.raises(ValidationError):
        h.push(2, bad)
    for method in (h.update, h.decrease_key, h.increase_key):
        with pytest.raises(ValidationError):
            method(1, bad)
    assert len(h) == 1 and h.get_score(1) == 1.0 and 2 not in h


def test_numpy_and_infinite_scores():
    h = IndexedHeap()
    h.push("x", np.float32(2.5))
    h.push("y", -math.inf)
    h.push("z", np.int64(1))
    assert [k for _, k in (h.pop(), h.pop(), h.pop())] == ["y", "z", "x"]


def test_unknown_ids_raise_not_found():
    h = IndexedHeap()
    h.push(0, 0.0)
    for call in (
        lambda: h.delete(7),
        lambda: h.decrease_key(7, 0),
        lambda: h.increase_key(7, 0),
        lambda: h.update(7, 0),
    ):
        with pytest.raises(NotFoundError):
            call()
        with pytest.raises(KeyError):
            call()
    assert h.get_score(7) is None and len(h) == 1


def test_unhashable_key():
    h = IndexedHeap()
    with pytest.raises(ValidationError):
        h.push([1], 0.0)
    with pytest.raises(ValidationError):
        h.delete([1])
    assert h.get_score([1]) is None and [1] not in h and len(h) == 0


def test_constructor_and_clear():
    with pytest.raises(ValidationError):
        IndexedHeap(max_heap=1)
    h = IndexedHeap(max_heap=True)
    assert h.max_heap
    h.push(1, 1)
    h.update(1, 2)
    h.clear()
    assert len(h) == 0 and h.peek() is None and len(h._heap) == 0
    h.push(1, 3)
    assert h.pop() == (3, 1)
