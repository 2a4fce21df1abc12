"""Argument checks and token-slot arithmetic for :class:`llmds.engine.kv_arena.TensorKVCache`.

A token's *slot* is its row in a layer's flat view ``[num_blocks * block_size, heads, head_dim]``:
``slot = table[pos // block_size] * block_size + pos % block_size``.
"""

from __future__ import annotations

import numpy as np
import torch

from llmds.engine.kv_blocks import SeqBlocks
from llmds.errors import ValidationError

__all__ = ["check_dtype", "check_int", "check_kv", "slots_for"]


def check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValidationError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValidationError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValidationError(
            f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}"
        )
    return dtype


def check_kv(name: str, t, shape: tuple[int, int, int], dtype, device) -> None:
    """``t`` must be a tensor of ``shape`` ([positions, num_kv_heads, head_dim]), dtype, device."""
    if not isinstance(t, torch.Tensor):
        raise ValidationError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != shape:
        raise ValidationError(
            f"{name} must have shape {shape} ([positions, num_kv_heads, head_dim]), "
            f"got {tuple(t.shape)}"
        )
    if t.dtype != dtype:
        raise ValidationError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValidationError(f"{name} must be on device {device}, got {t.device}")


def slots_for(positions, seq: SeqBlocks, bs: int, device) -> tuple[slice | torch.Tensor, int]:
    """Validated slots of ``positions`` (distinct ints in ``[0, seq.used)``) and their count.

    A slice when the slots are one run (an int; a run of positions on a
    contiguous request), else an int64 tensor on ``device``.  Vectorized
    (numpy on the host, where block tables live); no per-token Python.
    """
    used, blocks = seq.used, seq.blocks
    if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
        p = int(positions)
        if not 0 <= p < used:
            raise _position_error(p, p, used)
        s = blocks[p // bs] * bs + p % bs
        return slice(s, s + 1), 1
    if isinstance(positions, range) and positions.step == 1 and seq.contiguous:
        lo, n = positions.start, len(positions)
        if n and (lo < 0 or positions.stop > used):
            raise _position_error(lo, positions.stop - 1, used)
        base = blocks[0] * bs + lo
        return slice(base, base + n), n
    if isinstance(positions, torch.Tensor):
        dt = positions.dtype
        if dt.is_floating_point or dt.is_complex or dt == torch.bool:
            raise ValidationError(f"positions must be an integer tensor, got {dt}")
        arr = positions.detach().cpu().numpy()
    else:
        arr = np.asarray(positions)
        if arr.size and arr.dtype.kind not in "iu":
            raise ValidationError(f"positions must be ints, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValidationError(f"positions must be an int or 1-D, got shape {arr.shape}")
    n = arr.size
    if n == 1:  # a decode step: the int path is cheaper than numpy reductions
        return slots_for(int(arr[0]), seq, bs, device)
    arr = arr.astype(np.int64, copy=False)
    if n:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= used:
            raise _position_error(lo, hi, used)
        step = np.diff(arr)
        if (step == 1).all():  # a run (a prefill chunk): one slice on a contiguous request
            if seq.contiguous:
                base = blocks[0] * bs + lo
                return slice(base, base + n), n
        elif not (step > 0).all() and np.bincount(arr - lo).max() > 1:
            raise ValidationError("positions must be distinct")
    if seq.contiguous:  # slot = first_block * bs + position
        slots = arr + blocks[0] * bs
    else:
        slots = np.asarray(blocks, dtype=np.int64)[arr // bs] * bs + arr % bs
    return torch.from_numpy(slots).to(device), n


def _position_error(lo: int, hi: int, used: int) -> ValidationError:
    return ValidationError(
        f"positions must be in [0, used_tokens={used}), got [{lo}, {hi}]; "
        "append_tokens() before writing new positions"
    )
