"""numba kernels for the element-wise parts of a Llama layer, in float32 and bfloat16.

What torch runs as several ops (each a pass over memory, a temporary, and on some CPUs a slow
bfloat16 path) runs here as one pass per row, computing in float32 and rounding once:

* ``add_rms_norm``: the residual add and the RMSNorm after it (``h += d; out = w * norm(h)``);
* ``rms_norm``: RMSNorm alone (the first layer's input, the final norm);
* ``silu_mul``: SiLU-and-mul over the fused gate/up projection (``out = silu(g) * u``);
* ``rope_cache``: rotate-half RoPE on the q and k heads of the fused qkv projection, q written
  out in float32 for the attention kernels, k and v written into the layer's K/V block tensor
  at the tokens' slots.

Arrays are float32 or bfloat16 bits (uint16; see :mod:`._simd`); a kernel's arrays may mix the
two.  Rows are independent: each kernel has a serial and a ``prange`` build
(``*_par``), and :func:`pick` chooses by row count (a parallel region costs a few
microseconds; below ``PARALLEL_ROWS`` rows it is not worth it).
"""

from __future__ import annotations

import types

import numpy as np
from numba import prange

from llmds._jit import njit
from llmds.engine.models._simd import exp_f32, load, store

__all__ = ["PARALLEL_ROWS", "rms_norm", "add_rms_norm", "silu_mul", "rope_cache", "pick"]

PARALLEL_ROWS = 64


def _rms_norm(x, w, eps, out):
    """out[t] = w * x[t] / sqrt(mean(x[t]**2) + eps)."""
    T, H = x.shape
    for t in prange(T):
        xr, o = x[t], out[t]
        ss = np.float32(0.0)
        for j in range(H):
            v = load(xr, j)
            ss += v * v
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(H) + eps)
        for j in range(H):
            store(o, j, load(w, j) * (load(xr, j) * inv))


def _add_rms_norm(h, d, w, eps, out):
    """h[t] += d[t] (rounded to h's dtype, as the residual stream is); out[t] = rms_norm(h[t])."""
    T, H = h.shape
    for t in prange(T):
        hr, dr, o = h[t], d[t], out[t]
        for j in range(H):
            store(hr, j, load(hr, j) + load(dr, j))
        ss = np.float32(0.0)
        for j in range(H):
            v = load(hr, j)
            ss += v * v
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(H) + eps)
        for j in range(H):
            store(o, j, load(w, j) * (load(hr, j) * inv))


def _silu_mul(gu, out):
    """out[t, j] = silu(gu[t, j]) * gu[t, F + j], F = out.shape[1] (gate columns, then up)."""
    T, F = out.shape
    for t in prange(T):
        g, o = gu[t], out[t]
        for j in range(F):
            x = load(g, j)
            s = x / (np.float32(1.0) + exp_f32(-x))
            store(o, j, s * load(g, F + j))


def _rope_cache(qkv, positions, cos, sin, slots, nh, nkv, q_out, k_cache, v_cache):
    """q_out[t] = rope(q heads of qkv[t]); k_cache[slots[t]] = rope(k heads); v_cache[slots[t]] = v heads.

    qkv [T, (nh + 2 nkv) hd]; cos/sin [max_pos, hd/2] float32; q_out float32 [T, nh, hd];
    k_cache / v_cache [num_slots, nkv, hd].  (x1, x2) -> (x1 c - x2 s, x2 c + x1 s), halves of hd.
    """
    T = qkv.shape[0]
    hd = q_out.shape[2]
    half = hd // 2
    for t in prange(T):
        row = qkv[t]
        c, s = cos[positions[t]], sin[positions[t]]
        for i in range(nh):
            b = i * hd
            qo = q_out[t, i]
            for j in range(half):
                x1 = load(row, b + j)
                x2 = load(row, b + half + j)
                qo[j] = x1 * c[j] - x2 * s[j]
                qo[half + j] = x2 * c[j] + x1 * s[j]
        slot = slots[t]
        for i in range(nkv):
            b = (nh + i) * hd
            ko = k_cache[slot, i]
            for j in range(half):
                x1 = load(row, b + j)
                x2 = load(row, b + half + j)
                store(ko, j, x1 * c[j] - x2 * s[j])
                store(ko, half + j, x2 * c[j] + x1 * s[j])
            b = (nh + nkv + i) * hd
            vo = v_cache[slot, i]
            for j in range(hd):
                store(vo, j, load(row, b + j))


_OPTS = dict(fastmath=True, cache=True, nogil=True, error_model="numpy")  # numpy: no zero-division branch


def _builds(f):
    """``f`` compiled serial and with ``parallel=True``.

    The parallel build compiles a copy named ``<name>_par``: numba's on-disk cache keys a
    function by its qualified name and line, not by its options, so the two builds of one
    function would load each other's machine code.
    """
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_par", f.__defaults__, f.__closure__)
    g.__qualname__ = f.__qualname__ + "_par"
    return njit(**_OPTS)(f), njit(parallel=True, **_OPTS)(g)


rms_norm, rms_norm_par = _builds(_rms_norm)
add_rms_norm, add_rms_norm_par = _builds(_add_rms_norm)
silu_mul, silu_mul_par = _builds(_silu_mul)
rope_cache, rope_cache_par = _builds(_rope_cache)

_PAR = {rms_norm: rms_norm_par, add_rms_norm: add_rms_norm_par, silu_mul: silu_mul_par, rope_cache: rope_cache_par}


def pick(kernel, rows: int):
    """``kernel``'s parallel build for ``rows >= PARALLEL_ROWS``, else the serial one."""
    return _PAR[kernel] if rows >= PARALLEL_ROWS else kernel
