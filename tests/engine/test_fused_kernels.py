"""The element-wise numba kernels of a Llama layer against float64 references, float32 and bfloat16.

bfloat16 arrays go in and out as their bits; the kernels compute in float32 and round once, so
their results sit within one bfloat16 rounding of the float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.engine.models import _fused_kernels as fk
from llmds.engine.models._simd import as_kernel_array as A

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _tol(dtype, ref):
    """One rounding of the output dtype (plus float32 noise) at the reference's magnitude."""
    eps = 2.0**-8 if dtype == "bfloat16" else 2e-6
    return eps * (np.abs(ref) + 1e-3) + 1e-6


def _f64(t):
    return t.double().numpy()



@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 70), H=st.sampled_from([8, 64, 576, 97]), dtype=st.sampled_from(list(DTYPES)),
       seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_add_rms_norm(T, H, dtype, seed, scale):
    g = torch.Generator().manual_seed(seed)
    dt = DTYPES[dtype]
    h = (torch.randn(T, H, generator=g) * scale).to(dt)
    d = (torch.randn(T, H, generator=g) * scale).to(dt)
    w = (torch.rand(H, generator=g) + 0.5).to(dt)
    resid = (h.double() + d.double()).to(dt)  # the residual stream keeps its dtype
    x = _f64(resid)
    ref = _f64(w)[None] * x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5)
    for kernel in (fk.add_rms_norm, fk.add_rms_norm_par):
        hh, out = h.clone(), torch.empty_like(h)
        kernel(A(hh), A(d), A(w), np.float32(1e-5), A(out))
        assert torch.equal(hh, resid) or dtype == "float32" and np.allclose(_f64(hh), x, rtol=2e-7, atol=0)
        assert np.all(np.abs(_f64(out) - ref) <= _tol(dtype, ref))


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 70), H=st.sampled_from([8, 576, 97]), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_float32_residual_with_bfloat16_activations(T, H, seed, scale):
    """The bfloat16 model's layout: the residual stream float32, the layer outputs added to it and
    the norms' outputs bfloat16.  The residual takes the exact float32 sum; the output is one
    bfloat16 rounding from the float64 reference."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(T, H, generator=g) * scale
    d = (torch.randn(T, H, generator=g) * scale).bfloat16()
    w = (torch.rand(H, generator=g) + 0.5).bfloat16()
    resid = h + d.float()
    x = _f64(resid)
    ref = _f64(w)[None] * x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5)
    for kernel in (fk.add_rms_norm, fk.add_rms_norm_par):
        hh, out = h.clone(), torch.empty(T, H, dtype=torch.bfloat16)
        kernel(A(hh), A(d), A(w), np.float32(1e-5), A(out))
        assert torch.equal(hh, resid)
        assert np.all(np.abs(_f64(out) - ref) <= _tol("bfloat16", ref))
    for kernel in (fk.rms_norm, fk.rms_norm_par):
        out = torch.empty(T, H, dtype=torch.bfloat16)
        kernel(A(resid), A(w), np.float32(1e-5), A(out))
        assert np.all(np.abs(_f64(out) - ref) <= _tol("bfloat16", ref))


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 70), H=st.sampled_from([8, 576, 97]), dtype=st.sampled_from(list(DTYPES)),
       seed=st.integers(0, 2**16))
def test_rms_norm(T, H, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    dt = DTYPES[dtype]
    x, w = torch.randn(T, H, generator=g).to(dt), (torch.rand(H, generator=g) + 0.5).to(dt)
    xx = _f64(x)
    ref = _f64(w)[None] * xx / np.sqrt((xx**2).mean(-1, keepdims=True) + 1e-6)
    for kernel in (fk.rms_norm, fk.rms_norm_par):
        out = torch.empty_like(x)
        kernel(A(x), A(w), np.float32(1e-6), A(out))
        assert np.all(np.abs(_f64(out) - ref) <= _tol(dtype, ref))


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 70), F=st.sampled_from([1, 16, 1536, 33]), dtype=st.sampled_from(list(DTYPES)),
       seed=st.integers(0, 2**16), scale=st.sampled_from([1e-2, 1.0, 30.0]))
def test_silu_mul(T, F, dtype, seed, scale):
    g = torch.Generator().manual_seed(seed)
    gu = (torch.randn(T, 2 * F, generator=g) * scale).to(DTYPES[dtype])
    x = _f64(gu)
    ref = x[:, :F] / (1 + np.exp(-x[:, :F])) * x[:, F:]
    for kernel in (fk.silu_mul, fk.silu_mul_par):
        out = torch.empty(T, F, dtype=gu.dtype)
        kernel(A(gu), A(out))
        assert np.all(np.abs(_f64(out) - ref) <= _tol(dtype, ref) * 2)  # exp: ~1 ulp of float32 more


def test_silu_mul_saturates_without_overflow():
    gu = torch.tensor([[-1e4, -100.0, 0.0, 100.0, 1e4, 1.0, 1.0, 1.0, 1.0, 1.0]])
    out = torch.empty(1, 5)
    fk.silu_mul(A(gu), A(out))
    np.testing.assert_allclose(out.numpy()[0], [0.0, 0.0, 0.0, 100.0, 1e4], atol=1e-30)


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 40), dtype=st.sampled_from(list(DTYPES)), seed=st.integers(0, 2**16))
def test_rope_cache_rotates_q_and_k_and_writes_kv_at_the_slots(T, dtype, seed):
    nh, nkv, hd, nslots = 9, 3, 64, 200
    rng = np.random.default_rng(seed)
    dt = DTYPES[dtype]
    qkv = torch.from_numpy(rng.standard_normal((T, (nh + 2 * nkv) * hd)).astype(np.float32)).to(dt)
    pos = rng.integers(0, 500, T).astype(np.int64)
    slots = rng.choice(nslots, T, replace=False).astype(np.int64)
    inv = 1.0 / (10000.0 ** (np.arange(0, hd, 2) / hd))
    ang = np.outer(np.arange(512), inv)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    kc = torch.zeros(nslots, nkv, hd, dtype=dt)
    vc = torch.zeros(nslots, nkv, hd, dtype=dt)
    q = np.full((T, nh, hd), np.nan, np.float32)
    fk.pick(fk.rope_cache, T)(A(qkv), pos, cos, sin, slots, nh, nkv, q, A(kc), A(vc))
    x = _f64(qkv).reshape(T, nh + 2 * nkv, hd)
    c, s = cos[pos].astype(np.float64)[:, None], sin[pos].astype(np.float64)[:, None]
    half = hd // 2
    rot = np.concatenate([x[..., :half] * c - x[..., half:] * s, x[..., half:] * c + x[..., :half] * s], -1)
    np.testing.assert_allclose(q, rot[:, :nh], rtol=0, atol=1e-5)
    np.testing.assert_allclose(_f64(kc)[slots], rot[:, nh:nh + nkv], rtol=0, atol=_tol(dtype, 8.0))
    assert torch.equal(vc[torch.from_numpy(slots)], qkv[:, (nh + nkv) * hd:].reshape(T, nkv, hd))
    untouched = np.setdiff1d(np.arange(nslots), slots)
    assert not kc[torch.from_numpy(untouched)].any() and not vc[torch.from_numpy(untouched)].any()
