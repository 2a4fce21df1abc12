"""The numba attention kernels (decode, prefill) against a float64 reference, both cache dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.engine.models._attn_kernels import paged_decode_attention, paged_prefill_attention, softmax_inplace

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


def _scattered_cache(rng, lens, dtype, spare=3):
    """K/V block tensors with each request's blocks scattered over the pool (spare blocks named by no table)."""
    nblk = [-(-n // BS) for n in lens]
    total = sum(nblk) + spare
    order = rng.permutation(total).astype(np.int32)
    tables = np.full((len(lens), max(nblk)), -1, np.int32)
    at = 0
    for b, m in enumerate(nblk):
        tables[b, :m] = order[at:at + m]
        at += m
    k = torch.from_numpy(rng.standard_normal((total, BS, NKV, HD), np.float32) * 2)
    v = torch.from_numpy(rng.standard_normal((total, BS, NKV, HD), np.float32))
    if dtype == "bfloat16":
        k, v = k.bfloat16(), v.bfloat16()
        return tables, *(t.view(torch.int16).numpy().view(np.uint16) for t in (k, v)), k.float().numpy(), v.float().numpy()
    return tables, k.numpy(), v.numpy(), k.numpy(), v.numpy()


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 40)), min_size=1, max_size=5),
       seed=st.integers(0, 2**16), dtype=st.sampled_from(["float32", "bfloat16"]),
       out_dtype=st.sampled_from(["float32", "bfloat16"]))
def test_prefill_kernel_matches_float64_causal_reference(chunks, seed, dtype, out_dtype):
    """Chunks of (start, n) tokens at odd lengths over scattered blocks: token i of a chunk sees positions 0..start+i."""
    rng = np.random.default_rng(seed)
    lens = [s + n for s, n in chunks]
    tables, kc, vc, kref, vref = _scattered_cache(rng, lens, dtype)
    starts = np.array([s for s, _ in chunks], np.int64)
    ns = np.array([n for _, n in chunks], np.int64)
    offsets = np.concatenate([[0], np.cumsum(ns)[:-1]]).astype(np.int64)
    q = rng.standard_normal((int(ns.sum()), NH, HD)).astype(np.float32) * 2
    out = np.full(q.shape, np.nan, np.float32)
    if out_dtype == "bfloat16":
        out_t = torch.full(q.shape, float("nan"), dtype=torch.bfloat16)
        out = out_t.view(torch.int16).numpy().view(np.uint16)
    scale = np.float32(HD ** -0.5)
    paged_prefill_attention(q, kc, vc, tables, starts, ns, offsets, scale, out)
    got = out_t.float().numpy() if out_dtype == "bfloat16" else out
    group = NH // NKV
    for c, (s0, n) in enumerate(chunks):
        kb = kref[tables[c, :-(-lens[c] // BS)]].reshape(-1, NKV, HD).astype(np.float64)
        vb = vref[tables[c, :-(-lens[c] // BS)]].reshape(-1, NKV, HD).astype(np.float64)
        for i in range(n):
            ctx = s0 + i + 1
            for h in range(NH):
                sc = kb[:ctx, h // group] @ q[offsets[c] + i, h].astype(np.float64) * scale
                p = np.exp(sc - sc.max())
                ref = (p / p.sum()) @ vb[:ctx, h // group]
                tol = 2e-5 if out_dtype == "float32" else 1e-2 * (np.abs(ref).max() + 1)
                np.testing.assert_allclose(got[offsets[c] + i, h], ref, rtol=0, atol=tol)


def test_decode_kernel_writes_bfloat16_rounded_to_nearest():
    """With a bfloat16 output the kernel stores round-to-nearest-even of its float32 result (torch's cast)."""
    rng = np.random.default_rng(7)
    lens = [37, 5]
    tables, kc, vc, _, _ = _scattered_cache(rng, lens, "float32")
    q = rng.standard_normal((2, NH, HD)).astype(np.float32)
    out32 = np.empty((2, NH, HD), np.float32)
    paged_decode_attention(q, kc, vc, tables, np.asarray(lens, np.int32), np.float32(0.125), out32)
    out16 = torch.empty((2, NH, HD), dtype=torch.bfloat16)
    paged_decode_attention(q, kc, vc, tables, np.asarray(lens, np.int32), np.float32(0.125),
                           out16.view(torch.int16).numpy().view(np.uint16))
    assert torch.equal(out16, torch.from_numpy(out32).bfloat16())
