"""The numba decode-attention kernel against a float64 reference, both cache dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.engine.models._attn_kernels import paged_decode_attention, softmax_inplace

NH, NKV, HD, BS = 9, 3, 64, 16


def _reference(q, k, v, tables, lens, scale):
    """Float64 attention per request over the tokens its block table names."""
    out = np.zeros(q.shape)
    group = NH // NKV
    for b, n in enumerate(lens):
        nblk = -(-n // BS)
        kb = k[tables[b, :nblk]].reshape(-1, NKV, HD)[:n].astype(np.float64)
        vb = v[tables[b, :nblk]].reshape(-1, NKV, HD)[:n].astype(np.float64)
        for i in range(NH):
            s = kb[:, i // group] @ q[b, i].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[b, i] = (p / p.sum()) @ vb[:, i // group]
    return out


@settings(max_examples=25, deadline=None)
@given(lens=st.lists(st.integers(1, 70), min_size=1, max_size=6), seed=st.integers(0, 2**16),
       dtype=st.sampled_from(["float32", "bfloat16"]))
def test_kernel_matches_float64_reference(lens, seed, dtype):
    rng = np.random.default_rng(seed)
    nblk = [-(-n // BS) for n in lens]
    total = sum(nblk) + 3  # spare blocks that no table names
    order = rng.permutation(total).astype(np.int32)  # blocks scattered over the pool
    tables = np.full((len(lens), max(nblk)), -1, np.int32)
    at = 0
    for b, m in enumerate(nblk):
        tables[b, :m] = order[at:at + m]
        at += m
    k = torch.from_numpy(rng.standard_normal((total, BS, NKV, HD), np.float32) * 2)
    v = torch.from_numpy(rng.standard_normal((total, BS, NKV, HD), np.float32))
    q = rng.standard_normal((len(lens), NH, HD), np.float32) * 2
    if dtype == "bfloat16":
        k, v = k.bfloat16(), v.bfloat16()
        kc, vc = (t.view(torch.int16).numpy().view(np.uint16) for t in (k, v))
        kref, vref = k.float().numpy(), v.float().numpy()  # the values the cache holds
    else:
        kc, vc = kref, vref = k.numpy(), v.numpy()
    lens_a = np.asarray(lens, np.int32)
    out = np.full((len(lens), NH, HD), np.nan, np.float32)
    scale = np.float32(HD ** -0.5)
    paged_decode_attention(q, kc, vc, tables, lens_a, scale, out)
    np.testing.assert_allclose(out, _reference(q, kref, vref, tables, lens, scale), rtol=0, atol=2e-5)


@pytest.mark.parametrize("spread", [1e-3, 1.0, 30.0, 300.0])
def test_softmax_exponential_within_a_few_ulp(spread):
    x = (np.random.default_rng(0).standard_normal(4099) * spread).astype(np.float32)
    ref = np.exp(x.astype(np.float64) - x.max())
    ref /= ref.sum()
    got = x.copy()
    softmax_inplace(got)
    assert got.dtype == np.float32
    # float32 rounding of x * log2(e) costs |x| * 6e-8 relative: ~1 ulp where weights matter
    big = ref > 1e-4
    np.testing.assert_allclose(got[big], ref[big], rtol=2e-6)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-7)  # 2 ulp of 1.0
    assert np.all(got >= 0)
    assert abs(float(got.astype(np.float64).sum()) - 1.0) < 1e-5
