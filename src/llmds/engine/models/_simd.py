"""Scalar building blocks the engine's numba kernels inline: float32 <-> bfloat16 bits, exp.

Every kernel takes its activations as float32 arrays or as bfloat16 *bits* (uint16 arrays: a
bfloat16 is the high half of a float32).  ``load(a, i)`` widens either to float32 by a shift and
an LLVM bit cast, ``store(a, i, x)`` narrows with round-to-nearest-even (what torch's
``.to(torch.bfloat16)`` does), so one kernel source serves both dtypes and its loops vectorize.

numba has no SVML here, so ``np.exp`` in a loop is a scalar libm call; ``exp_f32`` is ``2**y``
as a degree-6 polynomial of the fraction of ``y = x log2 e`` times the power of two built in the
float's exponent bits (relative error < 2e-7, about one ulp of float32), and it vectorizes.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from llmds._jit import njit

__all__ = ["f32_from_bits", "bits_from_f32", "load", "store", "exp_f32", "as_kernel_array"]

# 2**f on [0, 1): least squares on Chebyshev nodes, float32 coefficients (max rel. error 7e-9
# in float64 evaluation, about one ulp in float32).
_P0, _P1, _P2, _P3 = np.float32(1.0), np.float32(6.9314694e-01), np.float32(2.4023050e-01), np.float32(
    5.5480428e-02)
_P4, _P5, _P6 = np.float32(9.6845776e-03), np.float32(1.2387831e-03), np.float32(2.1877517e-04)
_LOG2E = np.float32(1.4426950408889634)


@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is ``bits`` cast to uint32 (an LLVM bitcast; vectorizes)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def bits_from_f32(typingctx, x):
    """The bit pattern of float32 ``x`` as a uint32 (an LLVM bitcast; vectorizes)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


def load(a, i):
    """Element ``i`` of a float32 or bfloat16-bits array, as float32."""


@overload(load)
def _load_impl(a, i):
    if a.dtype == types.uint16:
        def widen(a, i):
            return f32_from_bits(np.uint32(a[i]) << np.uint32(16))
        return widen

    def plain(a, i):
        return np.float32(a[i])
    return plain


def store(a, i, x):
    """``a[i] = x`` for a float32 or bfloat16-bits array (round to nearest even)."""


@overload(store)
def _store_impl(a, i, x):
    if a.dtype == types.uint16:
        def narrow(a, i, x):
            u = bits_from_f32(np.float32(x))
            a[i] = np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
        return narrow

    def plain(a, i, x):
        a[i] = x
    return plain


@njit(fastmath=True, cache=True, inline="always")
def exp_f32(x):
    """exp(x) in float32 (see the module docstring); exp(x) = 0 below -87.3, +inf is not reached."""
    y = min(max(x * _LOG2E, np.float32(-126.0)), np.float32(127.0))
    k = np.floor(y)
    f = y - k
    p = ((((((_P6 * f + _P5) * f + _P4) * f + _P3) * f + _P2) * f + _P1) * f + _P0)
    return p * f32_from_bits(np.uint32(np.int32(k) + np.int32(127)) << np.uint32(23))


def as_kernel_array(t) -> np.ndarray:
    """A torch tensor (float32 or bfloat16) as the numpy array the kernels take, sharing memory."""
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()
