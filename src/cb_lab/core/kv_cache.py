"""Per-request KV caches of the cb_lab API: dense, and paged on a block manager's blocks.

Both store the keys and values of one request as ``[num_tokens, dim]`` rows.

* :class:`DenseKVCache` keeps one preallocated buffer per K and V and doubles
  it when full (amortised O(1) per appended row; never a copy per token).
* :class:`PagedKVCache` keeps its rows in blocks that a
  :class:`~llmds.engine.kv.block_manager.BlockManager` allocated; row ``i`` lives
  in block ``table[i // block_size]`` at offset ``i % block_size`` of a
  :class:`~llmds.engine.kv.storage.KVStorage`.  Whose table, depends on who
  drives it:

  - **a Scheduler with a block manager** (``Scheduler(kv=BlockManager(...))``):
    the cache is bound to its request when the request is added, and stores
    into the request's own table, the blocks the planner allocated for it
    (the planner sees the real blocks; preemption and finishing free them);
  - ``pool=TensorKVCache(...)``: one table of that arena, shared with other
    caches on the same pool (a fixed pool: running out raises
    ``KVMemoryError``, nothing changed);
  - neither: a private arena that grows to twice its size, in whole blocks,
    when full.

  ``append`` writes the rows straight into their block slots; ``get_kv`` is a
  zero-copy view when the table is one run of consecutive blocks, otherwise
  one gather through the table.

Views returned by ``get_kv`` stay valid until the next ``append``/``retain``/
``release`` of that cache.  ``retain(index)`` keeps only the given rows (used by
cache compression); ``num_appended`` counts every row ever appended.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod

import numpy as np
import torch

from llmds._checks import check_int
from llmds.kv_arena.arena import TensorKVCache
from llmds.engine.kv.storage import KVStorage, check_device
from cb_lab.exceptions import KVCacheError, KVMemoryError, ValidationError

__all__ = ["BaseKVCache", "DenseKVCache", "PagedKVCache"]

_ids = itertools.count()


class BaseKVCache(ABC):
    """Append-only store of one request's keys and values, ``[num_tokens, dim]`` each."""

    device: torch.device | None = None
    dim: int | None = None  # row width, fixed by the first append
    dtype: torch.dtype | None = None
    num_appended: int = 0  # rows ever appended (retain does not lower it)

    @abstractmethod
    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Append ``[n, dim]`` keys and values."""

    @abstractmethod
    def get_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All stored keys and values, ``[num_tokens, dim]`` each."""

    @abstractmethod
    def __len__(self) -> int: ...

    def retain(self, index) -> None:
        """Keep only the rows ``index`` (ints in ``[0, len)``, in the order given)."""
        raise KVCacheError(f"{type(self).__name__} does not support retain()")

    def release(self) -> None:
        """Drop every row (and give blocks back to a shared pool)."""
        raise KVCacheError(f"{type(self).__name__} does not support release()")

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` rows (``0 <= n <= len``): a failed step's rows are cut this way."""
        n = check_int("n", n, 0, len(self))
        if n < len(self):
            self.retain(range(n))

    # ------------------------------------------------------------- helpers
    def _check_rows(self, k: torch.Tensor, v: torch.Tensor) -> int:
        """Validate an append; fixes dim/dtype/device on the first one; returns n rows."""
        for name, t in (("k_new", k), ("v_new", v)):
            if not isinstance(t, torch.Tensor):
                raise ValidationError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 2 or not t.is_floating_point():
                raise ValidationError(
                    f"{name} must be a floating 2-D tensor [n, dim], got "
                    f"{tuple(t.shape)} {t.dtype}"
                )
        if k.shape != v.shape or k.dtype != v.dtype or k.device != v.device:
            raise ValidationError(
                f"k_new {tuple(k.shape)} {k.dtype} {k.device} and v_new "
                f"{tuple(v.shape)} {v.dtype} {v.device} must match"
            )
        if self.device is not None and k.device != self.device:
            raise ValidationError(f"KV rows are on {k.device}; this cache is on {self.device}")
        if self.dim is not None and (k.size(1) != self.dim or k.dtype != self.dtype):
            raise ValidationError(
                f"KV rows are [n, {k.size(1)}] {k.dtype}; this cache holds "
                f"[n, {self.dim}] {self.dtype}"
            )
        return k.size(0)

    def _check_index(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            idx = index.to(self.device)
        else:
            arr = np.asarray(index)
            if arr.size == 0:
                arr = arr.astype(np.int64)
            elif arr.dtype.kind not in "iu":
                raise ValidationError(f"index must hold ints, got dtype {arr.dtype}")
            idx = torch.as_tensor(arr, device=self.device)
        if idx.dim() != 1 or idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise ValidationError(
                f"index must be a 1-D integer sequence, got {tuple(idx.shape)} {idx.dtype}"
            )
        idx = idx.to(torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise ValidationError(f"index values must be in [0, {len(self)})")
        return idx

    def _empty(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.empty(0, self.dim or 0, dtype=self.dtype or torch.float32, device=self.device)
        return t, t.clone()


class DenseKVCache(BaseKVCache):
    """Contiguous K/V buffers, doubled when full; ``get_kv`` returns views.

    Parameters
    ----------
    device : torch.device, optional
        Where rows must live (default: wherever the first append's rows are).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = None if device is None else check_device(device)
        self.dim = None
        self.dtype = None
        self.num_appended = 0
        self._k: torch.Tensor | None = None  # [capacity, dim]
        self._v: torch.Tensor | None = None
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return 0 if self._k is None else self._k.size(0)

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        n = self._check_rows(k_new, v_new)
        if n == 0:
            return
        if self._k is None:
            self.dim, self.dtype, self.device = k_new.size(1), k_new.dtype, k_new.device
        end = self._n + n
        if end > self.capacity:
            cap = max(16, 2 * self.capacity, end)
            k = torch.empty(cap, self.dim, dtype=self.dtype, device=self.device)
            v = torch.empty_like(k)
            if self._n:
                k[: self._n] = self._k[: self._n]
                v[: self._n] = self._v[: self._n]
            self._k, self._v = k, v
        self._k[self._n : end] = k_new
        self._v[self._n : end] = v_new
        self._n = end
        self.num_appended += n

    def get_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._k is None:
            return self._empty()
        return self._k[: self._n], self._v[: self._n]

    def retain(self, index) -> None:
        idx = self._check_index(index)
        if self._k is None:
            return
        m = idx.numel()
        self._k[:m] = self._k.index_select(0, idx)  # index_select copies, so no aliasing
        self._v[:m] = self._v.index_select(0, idx)
        self._n = m

    def release(self) -> None:
        self._k = self._v = None
        self._n = 0

    def truncate(self, n: int) -> None:
        self._n = check_int("n", n, 0, self._n)


class PagedKVCache(BaseKVCache):
    """Rows stored in blocks a block manager allocated (see the module docstring).

    Parameters
    ----------
    block_size : int, optional
        Tokens per block (default 64, or the pool's block size; a scheduler's
        block manager must have the same block size if one is given).
    device : torch.device, optional
        Device of a private arena (default CPU).
    pool : TensorKVCache, optional
        A shared arena; its ``num_kv_heads * head_dim`` must equal the row width.
    layer : int
        Which layer of ``pool`` this cache uses (default 0).
    """

    def __init__(
        self,
        block_size: int | None = None,
        device: torch.device | str | None = None,
        pool: TensorKVCache | None = None,
        layer: int = 0,
    ) -> None:
        if pool is not None and not isinstance(pool, TensorKVCache):
            raise ValidationError(f"pool must be a TensorKVCache, got {type(pool).__name__}")
        self._block_size_given = block_size is not None
        if block_size is None:
            block_size = pool.block_size if pool is not None else 64
        block_size = check_int("block_size", block_size, 1)
        if pool is not None and block_size != pool.block_size:
            raise ValidationError(
                f"block_size={block_size} differs from the pool's {pool.block_size}"
            )
        self.block_size = block_size
        self.device = (None if device is None else check_device(device)) if pool is None else pool.device
        if self.device is None:
            self.device = torch.device("cpu")
        self._shared = pool is not None
        self._pool = pool
        self._layer = pool.storage.check_layer(layer) if pool is not None else 0
        self._sid = ("PagedKVCache", next(_ids))  # this cache's request id in an arena
        self._seq = None  # bound: the request whose block table holds the rows
        self._storage: KVStorage | None = None  # bound: the scheduler's storage
        self._contiguous = None  # bound: the block manager's is_contiguous(seq)
        self._n = 0
        self.num_appended = 0
        self.dim = self.dtype = None
        if pool is not None:
            self.dim, self.dtype = pool.num_kv_heads * pool.head_dim, pool.dtype

    def __len__(self) -> int:
        return self._n

    @property
    def pool(self):
        """Where the rows live: the arena (``TensorKVCache``), or the scheduler's ``KVStorage``."""
        return self._storage if self._seq is not None else self._pool

    @property
    def is_bound(self) -> bool:
        """True while the rows live in a scheduler's request's block table."""
        return self._seq is not None

    def block_table(self) -> list[int]:
        """Block ids holding this cache's rows, in row order."""
        if not self._n:
            return []
        if self._seq is not None:
            return self._seq.block_table[: -(-self._n // self.block_size)]
        return self._pool.block_table(self._sid)

    def is_contiguous(self) -> bool:
        """True when ``get_kv`` is a zero-copy view (the blocks are consecutive)."""
        if self._n == 0:
            return True
        if self._seq is not None:
            return self._contiguous(self._seq)
        return self._pool.view_is_contiguous(self._sid)

    # ------------------------------------------------------------ binding
    def check_bindable(self, block_size: int) -> None:
        """``ValidationError`` unless this cache can store into the blocks of a scheduler's block
        manager of ``block_size`` (no shared pool; the same block size, if one was given)."""
        if self._shared:
            raise ValidationError(
                "this scheduler's block manager holds the requests' KV: give the request a "
                "PagedKVCache() without pool= so it stores into the planner's blocks"
            )
        if self._block_size_given and self.block_size != block_size:
            raise ValidationError(
                f"the PagedKVCache has block_size={self.block_size} but the scheduler's block manager "
                f"uses {block_size}: create it as PagedKVCache() or with that block size"
            )

    def bind(self, storage: KVStorage, seq, is_contiguous) -> None:
        """Store into ``seq``'s block table in ``storage`` from now on (the cache must be empty);
        ``is_contiguous(seq)``: the block manager's, for zero-copy views.

        Called by a Scheduler with a block manager when it adds ``seq``
        (after :meth:`check_bindable`)."""
        if self._n or self._shared:
            raise KVCacheError("only an empty cache without a pool can store into a request's blocks")
        if self._block_size_given and self.block_size != storage.block_size:
            raise ValidationError(
                f"this PagedKVCache has block_size={self.block_size}; the scheduler's block manager "
                f"uses {storage.block_size}: create it as PagedKVCache() or with that block size"
            )
        self.release()
        self._pool = None
        self._seq, self._storage, self._contiguous = seq, storage, is_contiguous
        self.block_size = storage.block_size
        self.device, self.dim, self.dtype = storage.device, storage.head_dim, storage.dtype

    def unbind(self) -> None:
        """Stop using the request's table: copy the rows to a private arena first.

        The scheduler calls it when the request leaves it without releasing its
        cache, right after the planner freed the blocks (nothing has written them yet)."""
        if self._seq is None:
            return
        m = self._n
        k, v = self._bound_rows(self._table_when_bound) if m else (None, None)
        self._seq = self._storage = self._pool = self._contiguous = None
        self._n = 0
        if m:
            self._grow_private(m)
            self._reserve(m)
            self._store(k, v)

    # ------------------------------------------------------------ storage
    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.size(0), -1, self.dim if self._seq is not None else self._pool.head_dim)

    def _bound_rows(self, table) -> tuple[torch.Tensor, torch.Tensor]:
        st, n = self._storage, self._n
        contig = all(b - a == 1 for a, b in zip(table, table[1:]))
        return (st.k_view(0, table, n, contig).reshape(n, self.dim),
                st.v_view(0, table, n, contig).reshape(n, self.dim))

    def _reserve(self, n: int) -> bool:
        """Make room for ``n`` more rows in the arena; False when it is full."""
        p = self._pool
        if self._n == 0:
            return (
                p.allocate_for(self._sid, n, p.max_total_tokens, reserve=not self._shared)
                if n <= p.max_total_tokens
                else False
            )
        return p.append_tokens(self._sid, n)

    def _grow_private(self, need: int) -> None:
        """Move the rows to a private arena with room for ``need`` rows (whole blocks, doubling)."""
        old, bs = self._pool, self.block_size
        blocks = max(2, -(-need // bs), 2 * (old.num_blocks if old is not None else 0))
        new = TensorKVCache(1, 1, self.dim, blocks * bs, bs, self.dtype, self.device)
        if self._n:
            k, v = old.k_view(self._sid, 0), old.v_view(self._sid, 0)
            new.allocate_for(self._sid, self._n, new.max_total_tokens)
            new.write(self._sid, 0, range(self._n), k, v)
        self._pool = new

    def _store(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Write rows ``[_n, _n + n)`` (room already made) and count them."""
        start, n = self._n, k_new.size(0)
        if self._seq is not None:
            seq, st = self._seq, self._storage
            if (start + n) > len(seq.block_table) * self.block_size:
                raise KVCacheError(
                    f"request {seq.request_id!r} holds {len(seq.block_table)} blocks of {self.block_size} "
                    f"tokens; {start + n} rows do not fit (rows are appended by its scheduler's steps)"
                )
            self._table_when_bound = seq.block_table  # the same list until the request is re-admitted
            slots, _ = st.slots(seq.block_table, range(start, start + n), start + n,
                                self._contiguous(seq))
            st.scatter(0, slots, self._shape(k_new), self._shape(v_new))
        else:
            self._pool.write(self._sid, self._layer, range(start, start + n),
                             self._shape(k_new), self._shape(v_new))
        self._n = start + n

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        n = self._check_rows(k_new, v_new)
        if n == 0:
            return
        if self.dim is None:
            self.dim, self.dtype = k_new.size(1), k_new.dtype
        if self._seq is None:
            if self._pool is None:
                self._grow_private(n)
            if not self._reserve(n):
                if self._shared:
                    p = self._pool
                    raise KVMemoryError(
                        f"the shared KV pool is out of blocks: {n} more rows need "
                        f"{-(-(self._n + n) // p.block_size)} blocks for this cache, "
                        f"{p.available_blocks()} of {p.num_blocks} are available; release finished "
                        "requests' caches or give the pool more tokens"
                    )
                self._grow_private(self._n + n)
                if not self._reserve(n):  # pragma: no cover - a fresh arena always has room
                    raise KVCacheError("private KV arena could not grow")
        self._store(k_new, v_new)
        self.num_appended += n

    def get_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._n == 0:
            return self._empty()
        if self._seq is not None:
            seq, st, n = self._seq, self._storage, self._n
            contiguous = self._contiguous(seq)
            return (st.k_view(0, seq.block_table, n, contiguous).reshape(n, self.dim),
                    st.v_view(0, seq.block_table, n, contiguous).reshape(n, self.dim))
        p, d = self._pool, self.dim
        return (
            p.k_view(self._sid, self._layer).reshape(self._n, d),
            p.v_view(self._sid, self._layer).reshape(self._n, d),
        )

    def retain(self, index) -> None:
        idx = self._check_index(index)
        if self._n == 0:
            return
        k, v = self.get_kv()
        k, v = k.index_select(0, idx), v.index_select(0, idx)  # copies: safe to overwrite the rows
        m = idx.numel()
        if self._seq is None:
            self._pool.free_for(self._sid)
            self._n = 0
            if m and not self._reserve(m):  # pragma: no cover - m rows fitted a moment ago
                raise KVCacheError("could not re-place retained KV rows")
        self._n = 0
        if m:
            self._store(k, v)

    def release(self) -> None:
        if self._seq is None and self._pool is not None:
            self._pool.free_for(self._sid)
        self._n = 0

    def truncate(self, n: int) -> None:
        if self._seq is None:
            super().truncate(n)
        else:  # the rows are a prefix of the request's table; its blocks are the planner's
            self._n = check_int("n", n, 0, self._n)

    def __del__(self) -> None:
        # give the blocks of a shared pool back when the cache is dropped
        pool = getattr(self, "_pool", None)
        if pool is not None and getattr(self, "_shared", False):
            pool.free_for(self._sid)
