"""GGUF 4-bit weights served as they are: block formats mapped exactly onto torch's int4 kernel.

A GGUF linear weight ``[N, K]`` is stored in blocks along K.  The 4-bit formats map exactly onto
the per-group (32 values) scale and zero of ``torch.ops.aten._weight_int4pack_mm_for_cpu``, whose
dequantized weight is ``w = (q - 8) * scale + zero`` for a nibble ``q`` in 0..15:

==========  ==========================================  ===============  =====================
format      GGUF value                                  scale            zero
==========  ==========================================  ===============  =====================
Q4_0        ``d * (q - 8)``                             ``d``            ``0``
Q4_1        ``d * q + m``                               ``d``            ``m + 8 d``
Q4_K        ``d * sc_j * q - dmin * m_j`` (6-bit        ``d * sc_j``     ``8 d sc_j - dmin m_j``
            sub-scales and mins per 32 of a 256 block)
==========  ==========================================  ===============  =====================

Exact up to the rounding of scale and zero into the activation dtype (bfloat16: the kernel's
fast path; the scales are float16 in the file).  Other formats (Q8_0, Q5_*, Q6_K, ...) have no
exact int4 form: :func:`gguf_int4` returns None for them and the loader dequantizes them.

:class:`Int4Linear` is one such weight, packed once at load (``_convert_weight_to_int4pack_for_cpu``:
``[N / 64, K, 32]`` bytes, rows ``i`` and ``i + 32`` of each 64-row block in one byte's low and
high nibble).  The int4 kernel wins at a few rows per call (one request decoding: it reads a
quarter of the bfloat16 bytes) and loses to a dense bfloat16 weight at many; dequantizing the
weight for each call costs about what a dense multiply of 512 rows does.  Measured per call on
the gate/up weight ``[3072, 576]`` (2-core AMD EPYC, bfloat16; medians of 3): int4 kernel 4.4 /
9.2 / 16.1 / 25.6 ms at 32 / 128 / 256 / 512 rows against dequantize + dense 11.4 / 16.9 / 18.0
/ 25.9 ms: the crossover is near 512 rows.  Above ``max_rows`` rows (default 256: large prefill
chunks) the weight is dequantized into a scratch buffer shared by every weight of the same shape
and multiplied densely, so no dequantized copy is kept.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from llmds.engine.models._quant_kernels import dequant_int4pack

__all__ = ["GROUP", "SUPPORTED", "INT4_MAX_ROWS", "gguf_int4", "Int4Linear"]

GROUP = 32
INT4_MAX_ROWS = 256  # rows per call up to which the int4 kernel runs (measured: see the module docstring)
SUPPORTED = ("Q4_0", "Q4_1", "Q4_K")
_NIBBLES = np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[blocks, 16 * j] bytes -> [blocks, 32 * j] values: per 16 bytes, the low nibbles then the high."""
    n = qs.shape[0]
    return ((qs.reshape(n, -1, 1, 16) >> _NIBBLES) & np.uint8(15)).reshape(n, -1)


def gguf_int4(raw: np.ndarray, qtype: str, n: int, k: int):
    """``(q, scale, zero)`` of a GGUF tensor ``[n, k]`` stored as ``raw`` bytes (uint8), or None.

    q : uint8 [n, k] nibbles 0..15; scale, zero : float32 [n, k / 32], so that
    ``(q - 8) * scale + zero`` (per group of 32 along k) equals ``gguf.quants.dequantize``.
    """
    if qtype not in SUPPORTED or k % GROUP:
        return None
    g = k // GROUP
    if qtype == "Q4_K":
        if k % 256:
            return None
        b = raw.reshape(n * (k // 256), 144)
        d, dmin, sc_raw, qs = _f16(b[:, 0:2]), _f16(b[:, 2:4]), b[:, 4:16], b[:, 16:]
        s3 = sc_raw.reshape(-1, 3, 4)
        lo, hi, both = s3[:, 0], s3[:, 1], s3[:, 2]
        sc = np.concatenate([lo & 0x3F, (both & 0x0F) | ((lo >> 2) & 0x30)], -1).astype(np.float32)
        mn = np.concatenate([hi & 0x3F, (both >> 4) | ((hi >> 2) & 0x30)], -1).astype(np.float32)
        # 128 bytes per super-block: 4 x 32 bytes, low nibbles = sub-block 2j, high = 2j + 1
        q = ((qs.reshape(-1, 4, 1, 32) >> _NIBBLES) & np.uint8(15)).reshape(n, k)
        scale = (d * sc).reshape(n, g)
        zero = (8 * d * sc - dmin * mn).reshape(n, g)
        return q, scale, zero
    width = 18 if qtype == "Q4_0" else 20
    b = raw.reshape(n * g, width)
    d = _f16(b[:, 0:2])
    q = _nibbles(b[:, width - 16:]).reshape(n, k)
    if qtype == "Q4_0":
        return q, d.reshape(n, g), np.zeros((n, g), np.float32)
    m = _f16(b[:, 2:4])
    return q, d.reshape(n, g), (m + 8 * d).reshape(n, g)


class Int4Linear:
    """``x @ W.T`` for a weight held as torch's int4 pack (see the module docstring).

    Parameters
    ----------
    q, scale, zero : from :func:`gguf_int4` (rows may be several GGUF tensors stacked)
    dtype : activation dtype (bfloat16 for the kernel's fast path)
    max_rows : rows above which a call dequantizes into a shared scratch and runs densely
    scratch : ``{(n, k): tensor}`` shared by the weights of one model
    """

    __slots__ = ("packed", "sz", "n", "k", "max_rows", "scratch")

    def __init__(self, q: np.ndarray, scale: np.ndarray, zero: np.ndarray, dtype: torch.dtype,
                 max_rows: int, scratch: dict) -> None:
        n, k = q.shape
        self.n, self.k = n, k
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.from_numpy(q.astype(np.int32)), 2)
        self.sz = torch.from_numpy(np.stack([scale.T, zero.T], -1)).to(dtype).contiguous()  # [k / 32, n, 2]
        self.max_rows = max_rows
        self.scratch = scratch

    @classmethod
    def from_packed(cls, packed: torch.Tensor, sz: torch.Tensor, max_rows: int, scratch: dict) -> "Int4Linear":
        """A weight from an earlier pack (``packed``, ``sz`` as this class keeps them)."""
        self = cls.__new__(cls)
        self.packed, self.sz = packed, sz
        self.k, self.n = sz.shape[0] * GROUP, sz.shape[1]
        self.max_rows, self.scratch = max_rows, scratch
        return self

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.sz.nbytes

    def dequantize(self) -> torch.Tensor:
        """The weight ``[n, k]`` in the activation dtype, in the shared scratch (valid until the next call)."""
        w = self.scratch.get((self.n, self.k))
        if w is None:
            w = self.scratch[(self.n, self.k)] = torch.empty((self.n, self.k), dtype=self.sz.dtype)
        dequant_int4pack(self.packed.numpy(), _bits(self.sz), GROUP, _bits(w))
        return w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.max_rows:
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.sz)
        return F.linear(x, self.dequantize())


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()
