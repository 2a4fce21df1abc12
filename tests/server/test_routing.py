"""The replica router's policy and prefix table, without Ray."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.engine.kv.block_manager import BlockManager
from llmds.engine.request import RequestState
from llmds.server.routing import PrefixTable, RouterConfig, choose_replica, prompt_keys

BS = 4


def test_prompt_keys_are_the_block_managers_keys():
    """The router keys a prompt exactly as the engine's prefix index keys its blocks."""
    bm = BlockManager(16, BS)
    prompt = list(range(100, 114))  # 3 full blocks + 2 tokens
    seq = RequestState("a", prompt, max_new_tokens=1)
    assert bm.allocate(seq, len(prompt))
    assert sorted(bm.cached_keys()) == sorted(prompt_keys(prompt, BS))
    assert len(prompt_keys(prompt, BS)) == 3
    assert prompt_keys(prompt[:12], BS) == prompt_keys(prompt, BS)[:2]  # the last token's block is never cached


def test_longest_match_wins_within_the_gap():
    rng = random.Random(0)
    assert choose_replica([0, 3, 5], [0, 2, 4], 8, rng) == (2, "prefix")
    assert choose_replica([2, 2, 0], [5, 1, 0], 8, rng) == (1, "prefix")  # tie on match: lower load


def test_falls_back_to_two_choices_past_the_gap_or_without_a_match():
    rng = random.Random(0)
    idx, why = choose_replica([9, 0, 0], [10, 0, 1], 8, rng)
    assert why == "balance" and idx in (1, 2)
    for _ in range(50):
        idx, why = choose_replica([0, 0, 0, 0], [3, 0, 3, 3], 8, rng)
        assert why == "balance"
    # two choices never pick the more loaded of the pair: the busiest replica only when tied
    picks = {choose_replica([0] * 3, [0, 0, 100], 8, rng)[0] for _ in range(200)}
    assert 2 not in picks


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 50)), min_size=1, max_size=12),
       st.integers(0, 16), st.integers(0, 2**32 - 1))
def test_policy_invariants(pairs, gap, seed):
    matches = [m for m, _ in pairs]
    loads = [q for _, q in pairs]
    idx, why = choose_replica(matches, loads, gap, random.Random(seed))
    assert 0 <= idx < len(pairs)
    if why == "prefix":
        assert matches[idx] == max(matches) > 0  # the longest match ...
        assert loads[idx] - min(loads) <= gap  # ... never past the gap
        assert loads[idx] == min(q for m, q in pairs if m == matches[idx])
    else:
        best = min(range(len(pairs)), key=lambda i: (-matches[i], loads[i], i))
        assert matches[best] == 0 or loads[best] - min(loads) > gap or len(pairs) == 1


def test_table_routed_then_advertised():
    now = [0.0]
    t = PrefixTable(routed_ttl=5.0, clock=lambda: now[0])
    keys = prompt_keys(list(range(40)), BS)
    t.routed("r1", keys[:5])
    assert t.matches(keys, ["r0", "r1"]) == [0, 5]
    t.advertise("r0", keys[:3])
    assert t.matches(keys, ["r0", "r1"]) == [3, 5]
    t.advertise("r1", [])  # a report taken before the request got there: routed keys stay a while
    assert t.matches(keys, ["r0", "r1"]) == [3, 5]
    now[0] = 6.0
    t.advertise("r1", keys[:2])  # after the ttl the report rules: 3 blocks were evicted
    assert t.matches(keys, ["r0", "r1"]) == [3, 2]
    t.remove("r0")
    assert t.matches(keys, ["r0", "r1"]) == [0, 2]
    t.advertise("r1", [])
    assert t.holders == {}


def test_match_needs_the_leading_run():
    t = PrefixTable()
    keys = prompt_keys(list(range(40)), BS)
    t.advertise("r", keys[1:])  # holds every block but the first: nothing usable
    assert t.matches(keys, ["r"]) == [0]


def test_routed_keys_are_bounded():
    t = PrefixTable(max_routed=4, clock=lambda: 0.0)
    keys = prompt_keys(list(range(80)), BS)
    t.routed("r", keys)
    assert t.matches(keys, ["r"]) == [0]  # the leading keys were the oldest: dropped
    assert sum(1 for s in t.holders.values() if "r" in s) == 4


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["adv", "route", "remove"]), st.integers(0, 2),
                          st.lists(st.integers(0, 30), max_size=8)), max_size=30))
def test_holders_is_the_union_of_both_sources(ops):
    t = PrefixTable(max_routed=6, routed_ttl=0.0, clock=lambda: 0.0)
    adv: dict[int, set] = {}
    for op, r, ks in ops:
        if op == "adv":
            t.advertise(r, ks)
            adv[r] = set(ks)
        elif op == "route":
            t.routed(r, ks)
        else:
            t.remove(r)
            adv.pop(r, None)
    for r in range(3):
        held = {k for k, s in t.holders.items() if r in s}
        assert adv.get(r, set()) <= held
        assert len(held - adv.get(r, set())) <= 6


def test_config_is_checked():
    with pytest.raises(Exception):
        RouterConfig(max_queue_gap=-1)
    with pytest.raises(ValueError):
        choose_replica([1], [0, 1], 1, random.Random(0))
