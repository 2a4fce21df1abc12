"""cb_lab ragged batches: masks against brute force, the documented example, bad chunks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cb_lab.core.batch_builder import TokenMeta, build_ragged_batch
from cb_lab.exceptions import ValidationError

def _brute_mask(meta):
    n = len(meta)
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            m[i, j] = meta[i].req_id == meta[j].req_id and meta[j].pos_in_seq <= meta[i].pos_in_seq
    return m


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", 7]), st.integers(0, 20), st.integers(0, 5)),
        max_size=5,
    )
)
def test_ragged_mask_matches_brute_force(spec):
    chunks = [(rid, start, torch.randn(n, 4)) for rid, start, n in spec]
    tokens, meta, mask = build_ragged_batch(chunks)
    n = sum(c[2].size(0) for c in chunks)
    assert mask.shape == (n, n) and mask.dtype == torch.bool
    assert [m.global_idx for m in meta] == list(range(n))
    expect_meta = [TokenMeta(rid, s + i, 0) for rid, s, t in chunks for i in range(t.size(0))]
    assert [(m.req_id, m.pos_in_seq) for m in meta] == [
        (m.req_id, m.pos_in_seq) for m in expect_meta
    ]
    if n:
        assert torch.equal(tokens, torch.cat([c[2] for c in chunks]))
        assert torch.equal(mask, _brute_mask(meta))


def test_ragged_batch_documented_example():
    chunks = [("req1", 0, torch.randn(3, 16)), ("req2", 0, torch.randn(2, 16))]
    tokens, meta, mask = build_ragged_batch(chunks)
    assert tokens.shape == (5, 16)
    expect = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expect)
    assert meta[3] == TokenMeta("req2", 0, 3)


@pytest.mark.parametrize(
    "bad",
    [
        [("a", -1, torch.randn(2, 4))],
        [("a", 0, torch.randn(4))],
        [("a", 0, torch.ones(2, 4, dtype=torch.int64))],
        [("a", 0, torch.randn(2, 4)), ("b", 0, torch.randn(2, 5))],
        [(None, 0, torch.randn(2, 4))],
        [("a", 0)],
    ],
)
def test_ragged_batch_rejects_bad_chunks(bad):
    with pytest.raises(ValidationError):
        build_ragged_batch(bad)


def test_empty_batch():
    tokens, meta, mask = build_ragged_batch([])
    assert tokens.shape == (0, 0) and meta == [] and mask.shape == (0, 0)
