"""cb_lab KV caches: paged = dense under random appends and retains, views, shared pools, bad rows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cb_lab.core.kv_cache import DenseKVCache, PagedKVCache
from cb_lab.exceptions import KVMemoryError, ValidationError
from llmds import errors
from llmds.kv_arena.arena import TensorKVCache

@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(0, 9), min_size=1, max_size=12),
    st.integers(1, 5),
    st.lists(st.integers(0, 200), max_size=6),
)
def test_paged_cache_equals_dense_cache(appends, block_size, keep):
    dense, paged = DenseKVCache(), PagedKVCache(block_size=block_size)
    g = torch.Generator().manual_seed(len(appends))
    for n in appends:
        k, v = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
        dense.append(k, v)
        paged.append(k, v)
        assert len(dense) == len(paged) == dense.num_appended == paged.num_appended
        for a, b in zip(dense.get_kv(), paged.get_kv()):
            assert torch.equal(a, b)
    if len(dense):
        idx = sorted({i % len(dense) for i in keep})
        dense.retain(idx)
        paged.retain(idx)
        assert len(paged) == len(idx)
        for a, b in zip(dense.get_kv(), paged.get_kv()):
            assert torch.equal(a, b)


def test_paged_get_kv_is_a_view_when_contiguous_and_a_gather_otherwise():
    private = PagedKVCache(block_size=4)
    for _ in range(5):  # grows its private pool several times
        private.append(torch.randn(3, 8), torch.randn(3, 8))
    assert private.is_contiguous()
    k, _ = private.get_kv()
    arena = private.pool.k_cache
    assert k.untyped_storage().data_ptr() == arena.untyped_storage().data_ptr()  # zero-copy

    pool = TensorKVCache(1, 2, 4, 64, block_size=4)
    a, b = PagedKVCache(pool=pool), PagedKVCache(pool=pool)
    rows = {id(a): [], id(b): []}
    for _ in range(4):  # interleaved growth: a's blocks are not consecutive
        for c, n in ((a, 3), (b, 2)):
            k = torch.randn(n, 8)
            rows[id(c)].append(k)
            c.append(k, k * 2)
    assert not a.is_contiguous()
    ka, va = a.get_kv()
    assert torch.equal(ka, torch.cat(rows[id(a)])) and torch.equal(va, 2 * ka)
    assert ka.untyped_storage().data_ptr() != pool.k_cache.untyped_storage().data_ptr()
    assert set(a.block_table()).isdisjoint(b.block_table())


def test_shared_pool_out_of_blocks_raises_and_changes_nothing():
    pool = TensorKVCache(1, 1, 8, 16, block_size=4)
    a, b = PagedKVCache(pool=pool), PagedKVCache(pool=pool)
    a.append(torch.randn(10, 8), torch.randn(10, 8))
    before = a.get_kv()[0].clone()
    b.append(torch.randn(4, 8), torch.randn(4, 8))
    with pytest.raises(KVMemoryError) as ei:
        a.append(torch.randn(5, 8), torch.randn(5, 8))
    assert isinstance(ei.value, errors.CapacityError)
    assert len(a) == 10 and torch.equal(a.get_kv()[0], before)
    b.release()  # frees blocks: now it fits
    a.append(torch.randn(5, 8), torch.randn(5, 8))
    assert len(a) == 15


@pytest.mark.parametrize("cache_cls", [DenseKVCache, PagedKVCache])
def test_cache_rejects_bad_rows(cache_cls):
    c = cache_cls()
    c.append(torch.randn(2, 8), torch.randn(2, 8))
    for k, v in [
        (torch.randn(2, 4), torch.randn(2, 4)),
        (torch.randn(2, 8), torch.randn(3, 8)),
        (torch.randn(8), torch.randn(8)),
        (torch.randn(2, 8, dtype=torch.float64),) * 2,
    ]:
        with pytest.raises(ValidationError):
            c.append(k, v)
    assert len(c) == 2
    with pytest.raises(ValidationError):
        c.retain([0, 5])
