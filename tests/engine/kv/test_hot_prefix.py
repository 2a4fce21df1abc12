"""HotPrefixes: Count-Min heat decides which prompt prefixes stay pinned, within a block bound."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.engine.kv.hot_prefix import HotPrefixes

BS = 4


class FakeManager:
    """Reference pin/unpin: block ``i`` of any prefix is a deterministic id; counts pins per block."""

    def __init__(self):
        self.refs: dict[int, int] = {}

    def pin(self, token_ids):
        blocks = [hash(tuple(token_ids[:(i + 1) * BS])) & 0xFFFF for i in range(len(token_ids) // BS)]
        for b in blocks:
            self.refs[b] = self.refs.get(b, 0) + 1
        return blocks

    def unpin(self, blocks):
        for b in blocks:
            self.refs[b] -= 1
            if not self.refs[b]:
                del self.refs[b]


def make(threshold=3, max_blocks=8, window=64):
    fm = FakeManager()
    return HotPrefixes(BS, threshold, max_blocks, fm.pin, fm.unpin, window=window), fm


def prompt(shared_blocks, tail, base=0):
    return [base + i for i in range(shared_blocks * BS)] + [1000 + tail] * 3


def see(hp, toks, times=1):
    keys = hp.keys_of(toks)
    for _ in range(times):
        hp.observe(keys)
    hp.maybe_pin(toks, keys)
    return keys


def test_a_prefix_is_pinned_once_it_reaches_the_threshold():
    hp, fm = make(threshold=3)
    toks = prompt(2, 0)
    see(hp, toks, 2)
    assert hp.pinned == {} and fm.refs == {}
    keys = see(hp, toks)
    assert list(hp.pinned) == [keys[1]] and hp.num_pinned_blocks == 2 == len(fm.refs)


def test_a_longer_hot_prefix_replaces_the_shorter_one_it_extends():
    hp, fm = make(threshold=2)
    see(hp, prompt(2, 0), 2)
    assert hp.num_pinned_blocks == 2
    see(hp, prompt(4, 1), 2)  # the same first two blocks, then two more
    assert len(hp.pinned) == 1 and hp.num_pinned_blocks == 4
    assert sorted(fm.refs.values()) == [1, 1, 1, 1]  # every block pinned once, none twice
    assert hp.num_unpins == 1


def test_pins_stay_within_the_bound_and_hotter_prefixes_displace_colder_ones():
    hp, fm = make(threshold=2, max_blocks=4)
    cold = prompt(3, 0, base=100)
    see(hp, cold, 2)
    assert hp.num_pinned_blocks == 3
    hot = prompt(3, 1, base=200)
    see(hp, hot, 5)
    assert hp.num_pinned_blocks == 3 and list(hp.pinned) == [hp.keys_of(hot)[2]]
    see(hp, cold, 1)  # colder than the pinned prefix: cannot displace it
    assert list(hp.pinned) == [hp.keys_of(hot)[2]]
    too_long = prompt(5, 2, base=300)
    see(hp, too_long, 9)  # longer than the whole bound: never pinned
    assert hp.num_pinned_blocks <= 4 and hp.keys_of(too_long)[4] not in hp.pinned


def test_prefixes_cool_off_after_two_windows_without_use():
    hp, fm = make(threshold=2, window=4)
    see(hp, prompt(2, 0), 2)
    assert hp.pinned
    for i in range(8):  # two windows of other prompts
        see(hp, prompt(1, i, base=500 + 10 * i))
    assert hp.keys_of(prompt(2, 0))[1] not in hp.pinned


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4), st.integers(1, 3)), max_size=40),
       st.integers(1, 6))
def test_random_traffic_keeps_the_bound_and_the_pin_counts(ops, max_blocks):
    hp, fm = make(threshold=2, max_blocks=max_blocks, window=8)
    for family, length, times in ops:
        see(hp, prompt(length, family, base=37 * family), times)
        pinned = {b for _, blocks in hp.pinned.values() for b in blocks}
        assert hp.num_pinned_blocks == len(pinned) <= max_blocks
        assert set(fm.refs) == pinned and set(fm.refs.values()) <= {1}  # no block pinned twice
    hp.clear()
    assert fm.refs == {} and hp.pinned == {}
