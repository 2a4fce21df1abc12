"""TensorKVCache: the CortexStream KV arena in Python.

The guide: ``shared/seed-api/cortexstream-kv-cache-guide.md``.

One preallocated K tensor and one V tensor hold every layer's blocks::

    k_cache, v_cache : [num_layers, num_blocks, block_size, num_kv_heads, head_dim]

Block ids come from a :class:`~llmds.paged_allocator.PagedAllocator` (its own,
or one shared with the engine's block manager).  A request owns a block table
(list of block ids); token ``t`` of a request lives in block
``table[t // block_size]`` at offset ``t % block_size``.

Capacity semantics (the guide's "Token Limit Strategy")
-------------------------------------------------------
* ``allocate_for(id, prompt_len)``: the guide's *fixed maximum*: the request
  may grow only inside its prompt blocks (cap = ``ceil(prompt/bs) * bs``).
* ``allocate_for(id, prompt_len, max_tokens)``: the guide's *dynamic* mode:
  blocks for the prompt now, one more block per ``block_size`` appended
  tokens, up to ``max_tokens`` in total, which is a hard cap (appending past
  it returns False).  With ``reserve=True`` (default) admission also reserves
  the growth: it succeeds only if ``ceil(max_tokens/bs)`` blocks are free and
  not promised to other requests, so a later append within the cap cannot run
  out of blocks (unless another user of a shared allocator takes them).  With
  ``reserve=False`` only the prompt blocks must be free (optimistic growth,
  append may return False: the caller preempts).  A cap larger than the whole
  arena never fits (False), so a shrinking policy can halve it.

Placement (``kv_blocks``): the prompt blocks go at the start of the first free run long enough
for the whole cap (else for the prompt), and the rest of that run is marked as
the request's growth *room*, which other placements skip; growth takes the next
adjacent block when it is free.  So a request's blocks are usually one run and
:meth:`k_view` / :meth:`v_view` are zero-copy slices of the arena.  When they
are not (a fragmented pool), the views are gathered copies; check
:meth:`view_is_contiguous` before writing through a view, or use :meth:`write`.

Threading: allocation bookkeeping (allocate/append/free) runs under one lock so
the WAIT policy (``kv_policies``) can block in one thread while another thread
frees.  Tensor reads and writes are not synchronised.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import torch

from llmds.engine._kv_checks import check_dtype, check_int, check_kv, slots_for
from llmds.engine._kv_report import block_map_text, stats_text
from llmds.engine.kv_blocks import ArenaBlockTables, SeqBlocks
from llmds.errors import ValidationError
from llmds.paged_allocator import PagedAllocator

__all__ = ["KVArenaStats", "TensorKVCache"]


@dataclass(frozen=True, slots=True)
class KVArenaStats:
    """A snapshot of the arena (pool-level byte counts include other pool users)."""

    num_sequences: int
    used_tokens: int  # sum over this arena's requests
    allocated_blocks: int  # pool-wide
    free_blocks: int  # pool-wide
    reserved_blocks: int  # promised to requests' growth, not yet allocated
    total_allocated_bytes: int
    total_free_bytes: int
    fragmentation: float
    contiguous_sequences: int  # requests whose views are zero-copy


class TensorKVCache:
    """Per-layer K/V block tensors with per-request block tables (the CortexStream KV arena).

    Parameters
    ----------
    num_layers, num_kv_heads, head_dim : int
        Model shape (> 0).
    max_total_tokens : int
        Tokens across all requests; ``num_blocks = ceil(max_total_tokens / block_size)``.
    block_size : int
        Tokens per block (> 0).
    dtype, device
        Of the K/V tensors.
    allocator : PagedAllocator, optional
        A pool to share (e.g. with the engine's block manager); its ``page_size``
        must equal ``block_size`` and its ``max_pages`` must equal ``num_blocks``.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_total_tokens: int,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device="cpu",
        *,
        allocator: PagedAllocator | None = None,
    ) -> None:
        self.num_layers = check_int("num_layers", num_layers)
        self.num_kv_heads = check_int("num_kv_heads", num_kv_heads)
        self.head_dim = check_int("head_dim", head_dim)
        self.max_total_tokens = check_int("max_total_tokens", max_total_tokens)
        self.block_size = check_int("block_size", block_size)
        self.dtype = check_dtype(dtype)
        try:
            self.device = torch.device(device)
        except (TypeError, RuntimeError) as exc:
            raise ValidationError(
                f"device must name a torch device such as 'cpu', got {device!r}"
            ) from exc
        self.num_blocks = -(-self.max_total_tokens // self.block_size)
        if allocator is None:
            allocator = PagedAllocator(self.block_size, self.num_blocks)
        elif not isinstance(allocator, PagedAllocator):
            raise ValidationError(
                f"allocator must be a PagedAllocator, got {type(allocator).__name__}"
            )
        elif allocator.page_size != self.block_size or allocator.max_pages != self.num_blocks:
            raise ValidationError(
                f"shared allocator has {allocator.max_pages} pages of {allocator.page_size} "
                f"tokens; expected {self.num_blocks} pages of {self.block_size} "
                f"(max_total_tokens={self.max_total_tokens})"
            )
        self.allocator = allocator
        shape = (
            self.num_layers,
            self.num_blocks,
            self.block_size,
            self.num_kv_heads,
            self.head_dim,
        )
        self.k_cache = torch.empty(
            shape, dtype=dtype, device=self.device
        )  # contents undefined until written
        self.v_cache = torch.empty(shape, dtype=dtype, device=self.device)
        # per-layer views over all slots: [num_blocks * block_size, num_kv_heads, head_dim]
        self._k_flat = [
            self.k_cache[i].view(-1, self.num_kv_heads, self.head_dim) for i in range(num_layers)
        ]
        self._v_flat = [
            self.v_cache[i].view(-1, self.num_kv_heads, self.head_dim) for i in range(num_layers)
        ]
        # all layers at once: [num_layers, num_blocks * block_size, heads, head_dim] views
        self._k_all = self.k_cache.view(num_layers, -1, self.num_kv_heads, self.head_dim)
        self._v_all = self.v_cache.view(num_layers, -1, self.num_kv_heads, self.head_dim)
        self.bytes_per_block = (
            2
            * self.num_layers
            * self.block_size
            * self.num_kv_heads
            * self.head_dim
            * dtype.itemsize
        )
        self._tables = ArenaBlockTables(allocator)
        self._seqs = self._tables.seqs  # {request_id: SeqBlocks}, insertion order

    def __repr__(self) -> str:
        return (
            f"TensorKVCache(layers={self.num_layers}, kv_heads={self.num_kv_heads}, "
            f"head_dim={self.head_dim}, blocks={self.num_blocks}x{self.block_size}, "
            f"dtype={self.dtype}, device={self.device}, "
            f"sequences={len(self._seqs)}, free_blocks={self.allocator.num_free})"
        )

    # ------------------------------------------------------------ sizing
    @staticmethod
    def memory_bytes_needed(
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_total_tokens: int,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
    ) -> int:
        """Arena bytes by the guide's formula:
        ``ceil(tokens/bs) * heads*bs*head_dim * layers * 2 (K and V) * bytes_per_element``."""
        vals = [
            check_int(n, v)
            for n, v in (
                ("num_layers", num_layers),
                ("num_kv_heads", num_kv_heads),
                ("head_dim", head_dim),
                ("max_total_tokens", max_total_tokens),
                ("block_size", block_size),
            )
        ]
        layers, heads, hd, tokens, bs = vals
        total_blocks = -(-tokens // bs)
        return layers * total_blocks * heads * bs * hd * 2 * check_dtype(dtype).itemsize

    @classmethod
    def from_memory_budget(
        cls,
        budget_bytes: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device="cpu",
        **kwargs,
    ) -> TensorKVCache:
        """The largest arena (whole blocks) that fits in ``budget_bytes``."""
        budget = check_int("budget_bytes", budget_bytes)
        per_block = cls.memory_bytes_needed(
            num_layers, num_kv_heads, head_dim, block_size, block_size, dtype
        )
        if budget < per_block:
            raise ValidationError(
                f"budget_bytes={budget} is below one block ({per_block} bytes); "
                "raise the budget or lower block_size"
            )
        tokens = budget // per_block * block_size
        return cls(num_layers, num_kv_heads, head_dim, tokens, block_size, dtype, device, **kwargs)

    def warmup(self) -> None:
        """Touch every page of the arena (zero-fill) so the first requests do not page-fault."""
        self.k_cache.zero_()
        self.v_cache.zero_()

    # ------------------------------------------------------------ allocation
    def blocks_needed(
        self, prompt_len: int, max_tokens: int | None = None, reserve: bool = True
    ) -> int:
        """Free, unpromised blocks that :meth:`allocate_for` needs for these arguments."""
        prompt, cap = self._check_lengths(prompt_len, max_tokens)
        return -(-(cap if reserve else prompt) // self.block_size)

    def available_blocks(self) -> int:
        """Free blocks not promised to a reserved request's growth."""
        return self._tables.available_blocks()

    def can_allocate(
        self, prompt_len: int, max_tokens: int | None = None, reserve: bool = True
    ) -> bool:
        return self.blocks_needed(prompt_len, max_tokens, reserve) <= self.available_blocks()

    def allocate_for(
        self,
        request_id: Hashable,
        prompt_len: int,
        max_tokens: int | None = None,
        *,
        reserve: bool = True,
    ) -> bool:
        """Allocate blocks for a request's prompt (see the module docstring for the cap semantics).

        Returns False, allocating nothing, when the request does not fit now.
        Raises ``StateError`` if ``request_id`` is already allocated and
        ``ValidationError`` for ``prompt_len <= 0`` or ``max_tokens < prompt_len``.
        """
        self._check_id(request_id)
        prompt, cap = self._check_lengths(prompt_len, max_tokens)
        return self._tables.allocate(request_id, prompt, cap, reserve)

    def append_token(self, request_id: Hashable) -> bool:
        """Make room for one more token; False (nothing changed) past the cap or out of blocks."""
        return self.append_tokens(request_id, 1)

    def append_tokens(self, request_id: Hashable, n: int) -> bool:
        """Make room for ``n`` more tokens, all or nothing; ``n == 0`` is a no-op (True)."""
        n = check_int("n", n, 0)
        return self._tables.append(request_id, n)

    def free_for(self, request_id: Hashable) -> bool:
        """Return a request's blocks to the pool; a no-op (returning False) for an unknown id."""
        return self._tables.free(request_id)

    @property
    def free_generation(self) -> int:
        """Bumped by every effective :meth:`free_for`; read it before a failed allocation."""
        return self._tables.free_generation

    def wait_for_free(self, generation: int, timeout: float) -> bool:
        """Block until a free happens after ``generation`` was read, or ``timeout`` seconds pass.

        Returns True if a free happened.  No lost wake-ups: a free between reading
        ``free_generation`` and calling this returns at once.
        """
        return self._tables.wait_for_free(generation, timeout)

    # ------------------------------------------------------------ per-request queries
    def has(self, request_id: Hashable) -> bool:
        return request_id in self._seqs

    __contains__ = has

    def __len__(self) -> int:
        return len(self._seqs)

    def used_tokens(self, request_id: Hashable) -> int:
        return self._tables.get(request_id).used

    def max_tokens(self, request_id: Hashable) -> int:
        """The request's token cap."""
        return self._tables.get(request_id).cap

    def block_table(self, request_id: Hashable) -> list[int]:
        """Block ids of the request, token order (a copy)."""
        return list(self._tables.get(request_id).blocks)

    def block_table_tensor(self, request_id: Hashable) -> torch.Tensor:
        """Block ids as an int64 tensor on the arena's device (cached; do not modify in place)."""
        return self._table(self._tables.get(request_id))

    def view_is_contiguous(self, request_id: Hashable) -> bool:
        """True when :meth:`k_view`/:meth:`v_view` return zero-copy views of the arena."""
        return self._tables.get(request_id).contiguous

    def k_view(self, request_id: Hashable, layer: int) -> torch.Tensor:
        """K of the request's used tokens, ``[used_tokens, num_kv_heads, head_dim]``.

        Zero-copy (shares the arena's storage) when :meth:`view_is_contiguous`,
        otherwise a copy gathered through the block table.
        """
        return self._view(self.k_cache, self._tables.get(request_id), self._check_layer(layer))

    def v_view(self, request_id: Hashable, layer: int) -> torch.Tensor:
        """V counterpart of :meth:`k_view`."""
        return self._view(self.v_cache, self._tables.get(request_id), self._check_layer(layer))

    def kv_views(self, request_id: Hashable) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of every layer, each ``[num_layers, used_tokens, num_kv_heads, head_dim]``.

        One tensor op per K/V instead of one per layer: zero-copy when
        :meth:`view_is_contiguous`, otherwise copies gathered through the block table.
        """
        seq = self._tables.get(request_id)
        if seq.contiguous or not seq.blocks:
            s = seq.blocks[0] * self.block_size if seq.blocks else 0
            return self._k_all[:, s : s + seq.used], self._v_all[:, s : s + seq.used]
        table = self._table(seq)
        shape = (self.num_layers, -1, self.num_kv_heads, self.head_dim)
        k = self.k_cache.index_select(1, table).view(shape)[:, : seq.used]
        v = self.v_cache.index_select(1, table).view(shape)[:, : seq.used]
        return k, v

    def write(
        self, request_id: Hashable, layer: int, positions, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Scatter ``k``/``v`` ``[n, num_kv_heads, head_dim]`` to token ``positions`` of a request.

        ``positions``: n distinct ints in ``[0, used_tokens)``: an int, a range,
        a list/array or an integer tensor.  An int, or a step-1 range on a
        contiguous request, is one slice copy per tensor; anything else is one
        ``index_copy_`` per tensor with slots ``table[pos // bs] * bs + pos % bs``
        computed vectorized.  No per-token Python.
        """
        seq = self._tables.get(request_id)
        layer = self._check_layer(layer)
        slots, n = slots_for(positions, seq, self.block_size, self.device)
        shape = (n, self.num_kv_heads, self.head_dim)
        check_kv("k", k, shape, self.dtype, self.device)
        check_kv("v", v, shape, self.dtype, self.device)
        kf, vf = self._k_flat[layer], self._v_flat[layer]
        if isinstance(slots, slice):
            kf[slots] = k
            vf[slots] = v
        else:
            kf.index_copy_(0, slots, k)
            vf.index_copy_(0, slots, v)

    # ------------------------------------------------------------ stats
    @property
    def num_allocated_sequences(self) -> int:
        return len(self._seqs)

    @property
    def total_allocated_bytes(self) -> int:
        """Bytes of the pool's allocated blocks (K and V, every layer)."""
        return self.allocator.num_allocated * self.bytes_per_block

    @property
    def total_free_bytes(self) -> int:
        return self.allocator.num_free * self.bytes_per_block

    def fragmentation(self) -> float:
        """``1 - largest free run / free blocks`` (0 when nothing is free)."""
        return self.allocator.fragmentation()

    def is_full(self) -> bool:
        """True when no block is left for a new request (all allocated or promised)."""
        return self.available_blocks() == 0

    def stats(self) -> KVArenaStats:
        a = self.allocator
        return KVArenaStats(
            num_sequences=len(self._seqs),
            used_tokens=sum(s.used for s in self._seqs.values()),
            allocated_blocks=a.num_allocated,
            free_blocks=a.num_free,
            reserved_blocks=self._tables.reserved,
            total_allocated_bytes=self.total_allocated_bytes,
            total_free_bytes=self.total_free_bytes,
            fragmentation=a.fragmentation(),
            contiguous_sequences=sum(s.contiguous for s in self._seqs.values()),
        )

    def dump_stats(self, file: TextIO | None = None) -> str:
        """Write the guide's ``dumpCacheStats`` text to ``file`` (stdout if None); returns it."""
        seqs = [(rid, s.used, s.cap, s.blocks) for rid, s in self._seqs.items()]
        text = stats_text(self, seqs)
        (file if file is not None else sys.stdout).write(text)
        return text

    def dump_block_map(self, file: TextIO | None = None, width: int = 64) -> str:
        """Write the guide's ``dumpBlockMap`` text (``width`` blocks per row); returns it."""
        width = check_int("width", width)
        used = np.ones(self.num_blocks, dtype=bool)
        used[self.allocator.free_pages()] = False
        text = block_map_text(used, self.allocator.fragmentation(), width)
        (file if file is not None else sys.stdout).write(text)
        return text

    # ------------------------------------------------------------ internals
    def _check_id(self, request_id) -> None:
        try:
            hash(request_id)
        except TypeError as exc:
            raise ValidationError(
                f"request_id must be hashable (str or int), got {type(request_id).__name__}"
            ) from exc

    def _check_lengths(self, prompt_len, max_tokens) -> tuple[int, int]:
        prompt = check_int("prompt_len", prompt_len)
        if max_tokens is None:  # the guide's fixed maximum: grow within the prompt's blocks
            return prompt, -(-prompt // self.block_size) * self.block_size
        cap = check_int("max_tokens", max_tokens)
        if cap < prompt:
            raise ValidationError(f"max_tokens ({cap}) must be >= prompt_len ({prompt})")
        return prompt, cap

    def _check_layer(self, layer) -> int:
        if (
            isinstance(layer, bool)
            or not isinstance(layer, (int, np.integer))
            or not 0 <= layer < self.num_layers
        ):
            raise ValidationError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        return int(layer)

    def _table(self, seq: SeqBlocks) -> torch.Tensor:
        if seq.table is None:
            seq.table = torch.tensor(seq.blocks, dtype=torch.int64, device=self.device)
        return seq.table

    def _view(self, cache: torch.Tensor, seq: SeqBlocks, layer: int) -> torch.Tensor:
        if seq.contiguous:  # consecutive blocks are one run of slots: slice the flat layer view
            s = seq.blocks[0] * self.block_size
            flat = self._k_flat[layer] if cache is self.k_cache else self._v_flat[layer]
            return flat[s : s + seq.used]
        gathered = cache[layer].index_select(0, self._table(seq))  # [n_blocks, bs, H, D], a copy
        return gathered.view(-1, self.num_kv_heads, self.head_dim)[: seq.used]
