"""TokenLRU: exact contents, recency order and eviction order against an OrderedDict model."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from llmds.errors import CapacityError, ValidationError
from llmds.memory.token_lru import TokenLRU

keys = st.integers(0, 12)


def cost(value):  # values are (key, tokens, version) tuples
    return value[1]


class LRUMachine(RuleBasedStateMachine):
    @initialize(budget=st.integers(1, 40))
    def setup(self, budget):
        self.budget = budget
        self.evicted: list = []
        self.cache = TokenLRU(budget, cost, on_evict=lambda k, v: self.evicted.append((k, v)))
        self.model: OrderedDict = OrderedDict()  # {key: value}, least recent first
        self.version = 0

    def model_total(self):
        return sum(v[1] for v in self.model.values())

    def model_evict_to(self, target):
        out = []
        while self.model_total() > target:
            out.append(self.model.popitem(last=False))
        return out

    @rule(key=keys, tokens=st.integers(0, 50))
    def put(self, key, tokens):
        self.version += 1
        value = (key, tokens, self.version)
        if tokens > self.budget:
            with pytest.raises(CapacityError):
                self.cache.put(key, value)
            return
        self.model.pop(key, None)
        self.model[key] = value
        expected = self.model_evict_to(self.budget)
        self.cache.put(key, value)
        assert self.evicted == expected
        self.evicted.clear()

    @rule(key=keys)
    def get(self, key):
        expected = self.model.get(key)
        if expected is not None:
            self.model.move_to_end(key)
        assert self.cache.get(key) == expected

    @rule(key=keys)
    def contains(self, key):
        assert (key in self.cache) == (key in self.model)  # must not refresh: checked by order

    @rule(key=keys)
    def pop(self, key):
        assert self.cache.pop(key) == self.model.pop(key, None)

    @rule(goal=st.integers(0, 45))
    def evict_until_budget(self, goal):
        expected = self.model_evict_to(goal)
        assert self.cache.evict_until_budget(goal) == expected
        assert self.evicted == expected  # callback sees the same pairs, oldest first
        self.evicted.clear()

    @rule()
    def clear_rarely(self):
        if self.version % 7 == 0:
            self.cache.clear()
            self.model.clear()
            assert self.evicted == []

    @invariant()
    def matches_model(self):
        assert self.cache.keys() == list(self.model)
        assert self.cache.total_tokens() == self.model_total() <= self.budget
        assert len(self.cache) == self.cache.size() == len(self.model)


TestTokenLRU = LRUMachine.TestCase
TestTokenLRU.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)


def test_matches_cachetools_on_fresh_keys():
    """Inserts of new keys and gets: same surviving keys as cachetools.LRUCache(getsizeof=...)."""
    cachetools = pytest.importorskip("cachetools")
    rng = np.random.default_rng(0)
    ours = TokenLRU(500, len)
    ref = cachetools.LRUCache(maxsize=500, getsizeof=len)
    for i in range(3000):
        if i % 3 == 2:
            k = int(rng.integers(0, i))
            assert ours.get(k) == ref.get(k)
        else:
            v = "x" * int(rng.integers(1, 40))
            ours.put(i, v)
            ref[i] = v
    assert set(ours.keys()) == set(ref.keys())
    assert ours.total_tokens() == ref.currsize


def test_readme_example_and_eviction_order():
    cache = TokenLRU(token_budget=10, token_of=len)
    cache.put("a", "aaaa")
    cache.put("b", "bbb")
    cache.put("c", "cc")
    assert cache.get("a") == "aaaa"  # a is now most recent: order b, c, a
    assert "b" in cache  # does not refresh
    cache.put("d", "ddd")  # 12 tokens > 10: evicts b
    assert cache.keys() == ["c", "a", "d"] and cache.total_tokens() == 9
    assert cache.evict_until_budget(4) == [("c", "cc"), ("a", "aaaa")]
    assert cache.keys() == ["d"]


def test_reput_replaces_value_and_token_count():
    cache = TokenLRU(10, len)
    cache.put("a", "aaaaaa")
    cache.put("b", "bb")
    cache.put("a", "a")  # 6 -> 1 token, and a becomes most recent
    assert cache.total_tokens() == 3 and cache.keys() == ["b", "a"]
    cache.put("b", "bbbbbbbbb")  # 9 + 1 = 10 fits exactly, nothing evicted
    assert cache.total_tokens() == 10 and cache.keys() == ["a", "b"]


def test_value_larger_than_budget_keeps_existing_entry():
    evicted = []
    cache = TokenLRU(5, len, on_evict=lambda k, v: evicted.append(k))
    cache.put("a", "aaa")
    with pytest.raises(CapacityError, match="token_budget=5"):
        cache.put("a", "x" * 6)
    assert cache.get("a") == "aaa" and cache.total_tokens() == 3 and evicted == []


def test_missing_key_and_zero_token_values():
    cache = TokenLRU(1, lambda v: 0)
    assert cache.get("nope") is None
    for i in range(100):
        cache.put(i, i)
    assert len(cache) == 100 and cache.total_tokens() == 0
    assert cache.evict_until_budget(0) == []


def test_callback_not_called_on_replace_pop_clear():
    calls = []
    cache = TokenLRU(10, len, on_evict=lambda k, v: calls.append(k))
    cache.put("a", "1")
    cache.put("a", "2")
    cache.pop("a")
    cache.put("b", "3")
    cache.clear()
    assert calls == [] and len(cache) == 0 and cache.total_tokens() == 0


@pytest.mark.parametrize("budget", [0, -1, True, 1.5, "10", None])
def test_bad_budget(budget):
    with pytest.raises(ValidationError):
        TokenLRU(budget, len)


def test_bad_callables():
    with pytest.raises(ValidationError):
        TokenLRU(10, token_of=5)
    with pytest.raises(ValidationError):
        TokenLRU(10, len, on_evict="x")


@pytest.mark.parametrize("result", [-1, 1.5, True, "3", None])
def test_bad_token_of_result_leaves_cache_unchanged(result):
    cache = TokenLRU(10, lambda v: result if v == "bad" else 1)
    cache.put("a", "ok")
    with pytest.raises(ValidationError):
        cache.put("a", "bad")
    assert cache.get("a") == "ok" and cache.total_tokens() == 1


def test_numpy_integer_token_counts():
    cache = TokenLRU(10, lambda v: np.int64(len(v)))
    cache.put("a", "abc")
    assert cache.total_tokens() == 3 and type(cache.total_tokens()) is int


def test_unhashable_key_and_bad_target():
    cache = TokenLRU(10, len)
    with pytest.raises(ValidationError):
        cache.put(["k"], "v")
    with pytest.raises(ValidationError):
        cache.get(["k"])
    assert ["k"] not in cache
    cache.put("a", "aa")
    for bad in (-1, True, 1.5, None):
        with pytest.raises(ValidationError):
            cache.evict_until_budget(bad)
    assert cache.keys() == ["a"] and cache.token_budget == 10
