"""KVStorage: the KV arena's tensors, addressed by the block ids a BlockManager hands out.

One preallocated K tensor and one V tensor hold every layer's blocks::

    k_cache, v_cache : [num_layers, num_blocks, block_size, num_kv_heads, head_dim]

Layer-major: ``k_cache[layer]`` is a contiguous ``[num_blocks, block_size, H,
D]`` tensor and ``k_cache[layer].view(-1, H, D)`` (:meth:`k_layer`) its flat
*slot* view, one row per token slot (``k_slots`` / ``v_slots``: all layers'
slot views, ``[num_layers, num_blocks * block_size, H, D]``)::

    slot = block_id * block_size + offset        (token t of a table: block table[t // block_size])

The storage keeps no block tables: the caller passes the table (a list of
block ids, or an int64 tensor of them) that its
:class:`~llmds.engine.kv.block_manager.BlockManager` owns.

* ``write(layer, slots, k, v)`` scatters ``[n, H, D]`` rows to slots (a slice
  is one copy; a slot tensor one ``index_copy_``); ``slot_mapping(table, start,
  stop)`` gives the slots of positions ``[start, stop)``, ``slots(table,
  positions, num_tokens)`` of any validated positions.
* ``k_view`` / ``v_view`` / ``view`` (one layer) and ``kv_views`` (all layers)
  read the first ``num_tokens`` tokens of a table: a zero-copy slice of the
  arena when the table is one ascending run of consecutive ids (pass
  ``contiguous`` when known, e.g. ``BlockManager.is_contiguous(seq)``), else
  a copy gathered through the table.
* Sizing: ``from_memory_budget`` (whole blocks in a byte budget) and
  ``bytes_per_block``.  Any floating dtype (``torch.bfloat16`` included).

Bad arguments raise :class:`~llmds.errors.ValidationError` before anything is written.
"""

from __future__ import annotations

import numpy as np
import torch

from llmds._checks import check_int, check_token_ids, is_int
from llmds.errors import ValidationError

__all__ = ["KVStorage", "check_device", "check_dtype"]


def check_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValidationError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
    return dtype


def check_device(device) -> torch.device:
    try:
        return torch.device(device)
    except (TypeError, RuntimeError) as exc:
        raise ValidationError(f"device must name a torch device such as 'cpu', got {device!r}") from exc


def _is_run(table) -> bool:
    if isinstance(table, torch.Tensor):
        return table.numel() < 2 or bool((table[1:] - table[:-1] == 1).all())
    return all(b - a == 1 for a, b in zip(table, table[1:]))


class KVStorage:
    """Per-layer K/V block tensors (see the module docstring).

    Parameters
    ----------
    num_layers, num_kv_heads, head_dim : int
        Model shape (> 0).
    num_blocks, block_size : int
        Blocks in the arena and tokens per block (> 0); match the BlockManager's.
    dtype, device
        Of the K/V tensors (any floating dtype).
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int,
                 block_size: int = 16, dtype: torch.dtype = torch.float32, device="cpu") -> None:
        (self.num_layers, self.num_kv_heads, self.head_dim, self.num_blocks, self.block_size,
         self.dtype, self.device) = self.key_of(num_layers, num_kv_heads, head_dim, num_blocks, block_size,
                                                dtype, device)
        shape = (self.num_layers, self.num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        self.k_cache = torch.empty(shape, dtype=dtype, device=self.device)  # undefined until written
        self.v_cache = torch.empty(shape, dtype=dtype, device=self.device)
        self.num_slots = self.num_blocks * self.block_size
        flat = (self.num_layers, self.num_slots, self.num_kv_heads, self.head_dim)
        # every layer's slot view at once: [num_layers, num_blocks * block_size, H, D]
        self.k_slots, self.v_slots = self.k_cache.view(flat), self.v_cache.view(flat)
        self._k_flat = [self.k_slots[i] for i in range(self.num_layers)]
        self._v_flat = [self.v_slots[i] for i in range(self.num_layers)]

    @staticmethod
    def key_of(num_layers, num_kv_heads, head_dim, num_blocks, block_size, dtype, device) -> tuple:
        """Validated ``(layers, kv_heads, head_dim, blocks, block_size, dtype, device)``."""
        dims = tuple(check_int(n, v, 1) for n, v in (
            ("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim),
            ("num_blocks", num_blocks), ("block_size", block_size)))
        return dims + (check_dtype(dtype), check_device(device))

    def shape_key(self) -> tuple:
        """This storage's :meth:`key_of` tuple (two storages with equal keys are interchangeable)."""
        return (self.num_layers, self.num_kv_heads, self.head_dim, self.num_blocks, self.block_size,
                self.dtype, self.device)

    def __repr__(self) -> str:
        return (f"KVStorage(layers={self.num_layers}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
                f"blocks={self.num_blocks}x{self.block_size}, dtype={self.dtype}, device={self.device})")

    # ------------------------------------------------------------------ sizing
    @staticmethod
    def bytes_per_block(num_layers: int, num_kv_heads: int, head_dim: int, block_size: int = 16,
                        dtype: torch.dtype = torch.float32) -> int:
        """K and V bytes of one block across all layers."""
        dims = [check_int(n, v, 1) for n, v in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads),
                                                ("head_dim", head_dim), ("block_size", block_size))]
        return 2 * dims[0] * dims[1] * dims[2] * dims[3] * check_dtype(dtype).itemsize

    @classmethod
    def blocks_for_budget(cls, budget_bytes: int, num_layers: int, num_kv_heads: int, head_dim: int,
                          block_size: int = 16, dtype: torch.dtype = torch.float32) -> int:
        """Whole blocks that fit in ``budget_bytes`` (``ValidationError`` below one block)."""
        budget = check_int("budget_bytes", budget_bytes, 1)
        per_block = cls.bytes_per_block(num_layers, num_kv_heads, head_dim, block_size, dtype)
        if budget < per_block:
            raise ValidationError(f"budget_bytes={budget} is below one block ({per_block} bytes); "
                                  "raise the budget or lower block_size")
        return budget // per_block

    @classmethod
    def from_memory_budget(cls, budget_bytes: int, num_layers: int, num_kv_heads: int, head_dim: int,
                           block_size: int = 16, dtype: torch.dtype = torch.float32, device="cpu") -> KVStorage:
        """The largest storage (whole blocks) that fits in ``budget_bytes``."""
        n = cls.blocks_for_budget(budget_bytes, num_layers, num_kv_heads, head_dim, block_size, dtype)
        return cls(num_layers, num_kv_heads, head_dim, n, block_size, dtype, device)

    @property
    def nbytes(self) -> int:
        return self.k_cache.nbytes + self.v_cache.nbytes

    def warmup(self) -> None:
        """Touch every page of the arena (zero-fill) so the first requests do not page-fault."""
        self.k_cache.zero_()
        self.v_cache.zero_()

    def copy_blocks(self, pairs) -> None:
        """Copy the K/V of block ``src`` into block ``dst`` in every layer, for each ``(src, dst)``
        of ``pairs`` (copy-on-write of a shared block: ``BlockManager.fork``)."""
        if not pairs:
            return
        ids = check_token_ids("block ids", [b for pair in pairs for b in pair], self.num_blocks)
        src = torch.tensor(ids[0::2], device=self.device)
        dst = torch.tensor(ids[1::2], device=self.device)
        for cache in (self.k_cache, self.v_cache):
            cache.index_copy_(1, dst, cache.index_select(1, src))

    # ------------------------------------------------------------------ slots
    def k_layer(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s K as the flat slot view ``[num_blocks * block_size, H, D]``."""
        return self._k_flat[self.check_layer(layer)]

    def v_layer(self, layer: int) -> torch.Tensor:
        return self._v_flat[self.check_layer(layer)]

    def check_layer(self, layer) -> int:
        if type(layer) is int and 0 <= layer < self.num_layers:
            return layer
        return check_int("layer", layer, 0, self.num_layers - 1)

    def slot_mapping(self, block_table, start: int, stop: int) -> torch.Tensor:
        """Slots (int64 tensor on the device) of positions ``[start, stop)`` of a table."""
        nb = len(block_table)
        start = check_int("start", start, 0)
        stop = check_int("stop", stop, start, nb * self.block_size)
        table = np.asarray(block_table.tolist() if isinstance(block_table, torch.Tensor) else block_table,
                           dtype=np.int64)
        pos = np.arange(start, stop, dtype=np.int64)
        return torch.from_numpy(table[pos // self.block_size] * self.block_size + pos % self.block_size).to(self.device)

    def slots(self, block_table, positions, num_tokens: int, contiguous: bool | None = None):
        """Validated slots of ``positions`` (distinct ints in ``[0, num_tokens)``) and their count.

        ``positions``: an int, a range, a list/array or an integer tensor.  Returns a
        slice when the slots are one run (an int; a run of positions in a contiguous
        table), else an int64 tensor on the device.  Vectorized; no per-token Python.
        """
        bs = self.block_size
        if not 0 <= num_tokens <= len(block_table) * bs:
            self._check_span(block_table, num_tokens)  # raises
        if is_int(positions):
            p = int(positions)
            if not 0 <= p < num_tokens:
                raise _position_error(p, p, num_tokens)
            s = int(block_table[p // bs]) * bs + p % bs
            return slice(s, s + 1), 1
        if contiguous is None:
            contiguous = _is_run(block_table)
        if isinstance(positions, range) and positions.step == 1 and contiguous:
            lo, n = positions.start, len(positions)
            if n and (lo < 0 or positions.stop > num_tokens):
                raise _position_error(lo, positions.stop - 1, num_tokens)
            base = int(block_table[0]) * bs + lo if n else 0
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
            return self.slots(block_table, int(arr[0]), num_tokens, contiguous)
        arr = arr.astype(np.int64, copy=False)
        if n:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= num_tokens:
                raise _position_error(lo, hi, num_tokens)
            step = np.diff(arr)
            if (step == 1).all():  # a run (a prefill chunk): one slice in a contiguous table
                if contiguous:
                    base = int(block_table[0]) * bs + lo
                    return slice(base, base + n), n
            elif not (step > 0).all() and np.bincount(arr - lo).max() > 1:
                raise ValidationError("positions must be distinct")
        if contiguous and n:
            slots = arr + int(block_table[0]) * bs
        else:
            table = block_table.cpu().numpy() if isinstance(block_table, torch.Tensor) else block_table
            slots = np.asarray(table, dtype=np.int64)[arr // bs] * bs + arr % bs
        return torch.from_numpy(slots).to(self.device), n

    # ------------------------------------------------------------------ writes
    def write(self, layer: int, slots, k: torch.Tensor, v: torch.Tensor) -> None:
        """Scatter ``k``/``v`` ``[n, num_kv_heads, head_dim]`` to ``slots`` of layer ``layer``.

        ``slots``: a slice, an int, or n distinct ints (list, array or tensor) in
        ``[0, num_blocks * block_size)``, e.g. from :meth:`slot_mapping`.
        """
        layer = self.check_layer(layer)
        slots, n = self._check_slots(slots)
        self.check_rows(k, v, n)
        self.scatter(layer, slots, k, v)

    def check_rows(self, k, v, n: int) -> None:
        """``k`` and ``v`` must be ``[n, num_kv_heads, head_dim]`` of the storage's dtype and device."""
        shape = (n, self.num_kv_heads, self.head_dim)
        dt, dev = self.dtype, self.device
        if (type(k) is torch.Tensor and type(v) is torch.Tensor and k.shape == shape and v.shape == shape
                and k.dtype is dt and v.dtype is dt and k.device == dev and v.device == dev):
            return  # the common case in one expression (every write checks its rows)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise ValidationError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.shape != shape:
                raise ValidationError(f"{name} must have shape {shape} ([positions, num_kv_heads, head_dim]), "
                                      f"got {tuple(t.shape)}")
            if t.dtype != self.dtype:
                raise ValidationError(f"{name} must have dtype {self.dtype}, got {t.dtype}")
            if t.device != self.device:
                raise ValidationError(f"{name} must be on device {self.device}, got {t.device}")

    def scatter(self, layer: int, slots, k: torch.Tensor, v: torch.Tensor) -> None:
        """:meth:`write` without checks: for callers that validated ``layer``, ``slots`` and rows."""
        kf, vf = self._k_flat[layer], self._v_flat[layer]
        if isinstance(slots, slice):
            kf[slots] = k
            vf[slots] = v
        else:
            kf.index_copy_(0, slots, k)
            vf.index_copy_(0, slots, v)

    def _check_slots(self, slots):
        total = self.num_slots
        if isinstance(slots, slice):
            lo, hi, step = slots.indices(total)
            if step != 1 or slots.start is None or slots.stop is None or not 0 <= slots.start <= slots.stop <= total:
                raise ValidationError(f"a slot slice must be [start:stop] within [0, {total}], got {slots}")
            return slots, hi - lo
        if is_int(slots):
            s = int(slots)
            if not 0 <= s < total:
                raise ValidationError(f"slot {s} is outside [0, {total})")
            return slice(s, s + 1), 1
        t = slots if isinstance(slots, torch.Tensor) else torch.as_tensor(np.asarray(slots, dtype=np.int64))
        if t.dim() != 1 or t.dtype not in (torch.int64, torch.int32):
            raise ValidationError(f"slots must be a 1-D integer sequence, got {tuple(t.shape)} {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= total):
            raise ValidationError(f"slots must be in [0, {total}), got [{int(t.min())}, {int(t.max())}]")
        return t.to(device=self.device, dtype=torch.int64), t.numel()

    # ------------------------------------------------------------------ reads
    def k_view(self, layer: int, block_table, num_tokens: int, contiguous: bool | None = None) -> torch.Tensor:
        """K of the table's first ``num_tokens`` tokens, ``[num_tokens, H, D]``: zero-copy
        when the table is one ascending run, else a copy gathered through it."""
        return self._read(self.k_cache, self._k_flat, layer, block_table, num_tokens, contiguous)

    def v_view(self, layer: int, block_table, num_tokens: int, contiguous: bool | None = None) -> torch.Tensor:
        return self._read(self.v_cache, self._v_flat, layer, block_table, num_tokens, contiguous)

    def view(self, layer: int, block_table, num_tokens: int, contiguous: bool | None = None):
        """``(k_view, v_view)`` of one layer."""
        if contiguous is None:
            contiguous = _is_run(block_table)
        return (self.k_view(layer, block_table, num_tokens, contiguous),
                self.v_view(layer, block_table, num_tokens, contiguous))

    def kv_views(self, block_table, num_tokens: int, contiguous: bool | None = None):
        """K and V of every layer, each ``[num_layers, num_tokens, H, D]``, one tensor op each."""
        self._check_span(block_table, num_tokens)
        if contiguous is None:
            contiguous = _is_run(block_table)
        if contiguous or not num_tokens:
            s = int(block_table[0]) * self.block_size if num_tokens else 0
            return self.k_slots[:, s : s + num_tokens], self.v_slots[:, s : s + num_tokens]
        table = self._table_tensor(block_table)
        shape = (self.num_layers, -1, self.num_kv_heads, self.head_dim)
        k = self.k_cache.index_select(1, table).view(shape)[:, :num_tokens]
        v = self.v_cache.index_select(1, table).view(shape)[:, :num_tokens]
        return k, v

    def _read(self, cache, flat, layer, block_table, num_tokens, contiguous) -> torch.Tensor:
        layer = self.check_layer(layer)
        self._check_span(block_table, num_tokens)
        if contiguous is None:
            contiguous = _is_run(block_table)
        if contiguous or not num_tokens:
            s = int(block_table[0]) * self.block_size if num_tokens else 0
            return flat[layer][s : s + num_tokens]
        gathered = cache[layer].index_select(0, self._table_tensor(block_table))  # [blocks, bs, H, D]
        return gathered.view(-1, self.num_kv_heads, self.head_dim)[:num_tokens]

    def _check_span(self, block_table, num_tokens) -> None:
        if not 0 <= num_tokens <= len(block_table) * self.block_size:
            raise ValidationError(f"num_tokens={num_tokens} does not fit the table's {len(block_table)} blocks "
                                  f"of {self.block_size} tokens")

    def _table_tensor(self, block_table) -> torch.Tensor:
        if isinstance(block_table, torch.Tensor):
            return block_table.to(device=self.device, dtype=torch.int64)
        return torch.tensor(block_table, dtype=torch.int64, device=self.device)


def _position_error(lo: int, hi: int, used: int) -> ValidationError:
    return ValidationError(f"positions must be in [0, used_tokens={used}), got [{lo}, {hi}]; "
                           "append_tokens() before writing new positions")
