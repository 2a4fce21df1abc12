"""TensorKVCache: the CortexStream KV arena's request-keyed API, over a BlockManager and a KVStorage.

The guide: ``shared/seed-api/cortexstream-kv-cache-guide.md``.  This class is a
thin layer: the tensors are a :class:`~llmds.engine.kv.storage.KVStorage`
(``k_cache`` / ``v_cache`` ``[layers, blocks, block_size, kv_heads, head_dim]``)
and every request's block table is owned by a
:class:`~llmds.engine.kv.block_manager.BlockManager`: its own, which places each
table as one run of blocks with a growth room when it can
(:class:`~llmds.kv_arena.runs.RunPlacement`), or one passed as ``block_manager=``
(e.g. the engine's, whose tables follow the free list, so views are gathers
unless a table happens to be a run).  The layer adds the guide's token caps,
reservations and OOM waiting; token ``t`` of a request lives in block
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
  out of blocks (unless another user of a shared pool takes them).  With
  ``reserve=False`` only the prompt blocks must be free (optimistic growth,
  append may return False: the caller preempts).  A cap larger than the whole
  arena never fits (False), so a shrinking policy can halve it.

Views: :meth:`k_view` / :meth:`v_view` / :meth:`kv_views` are zero-copy slices
of the arena while the request's table is one run (:meth:`view_is_contiguous`;
the block manager places it so), else gathered copies; check before writing
through a view, or use :meth:`write`.

Threading: allocation bookkeeping (allocate/append/free) runs under one lock so
the WAIT policy (``llmds.kv_arena.policies``) can block in one thread while another thread
frees.  Tensor reads and writes are not synchronised.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Hashable
from typing import TextIO

import torch

from llmds._checks import check_bool, check_int
from llmds.engine.kv.block_manager import BlockManager
from llmds.engine.kv.storage import KVStorage
from llmds.engine.request import RequestState
from llmds.errors import NotFoundError, StateError, ValidationError
from llmds.kv_arena._report import KVArenaStats, block_map_text, stats_text
from llmds.kv_arena.runs import RunPlacement
from llmds.memory.paged_allocator import PagedAllocator

__all__ = ["KVArenaStats", "KVStorage", "TensorKVCache"]


class _Entry:
    """One request of the arena: ``seq``, a lengths-only ``RequestState`` of ``cap`` tokens
    (``num_prompt_tokens``) whose ``num_computed_tokens`` are the used tokens and whose table
    is the block manager's, plus the arena's own fields."""

    __slots__ = ("seq", "reserved", "table_tensor", "contig")

    def __init__(self, request_id: Hashable, cap: int, reserved: bool) -> None:
        self.seq = RequestState(request_id, num_prompt_tokens=cap, max_new_tokens=0)
        self.reserved = reserved  # cap blocks - table length is counted in the arena's reservations
        self.table_tensor: torch.Tensor | None = None  # the table as a tensor, for gathers; reset on growth
        # the block manager's is_contiguous(seq), asked after every change of the table (only the
        # arena changes it: allocate_for, append_tokens), so a view reads one attribute
        self.contig = True


class TensorKVCache:
    """The CortexStream KV arena: per-request K/V on a block manager's tables.

    Parameters
    ----------
    num_layers, num_kv_heads, head_dim : int
        Model shape (> 0).
    max_total_tokens : int
        Tokens across all requests; ``num_blocks = ceil(max_total_tokens / block_size)``.
    block_size : int
        Tokens per block (> 0).
    dtype, device
        Of the K/V tensors (any floating dtype).
    allocator : PagedAllocator, optional
        A pool to share; its ``page_size``/``max_pages`` must equal ``block_size``/``num_blocks``.
    block_manager : BlockManager, optional
        A block manager to share (e.g. the engine's); same size rule.  Default:
        a new one on ``allocator`` (or a new pool), without prefix caching, with
        run placement (:class:`~llmds.kv_arena.runs.RunPlacement`).
    storage : KVStorage, optional
        The tensors to share (e.g. the engine's); its shape, dtype and device must
        be the ones the other arguments give.  See :meth:`over`.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, max_total_tokens: int,
                 block_size: int = 16, dtype: torch.dtype = torch.float32, device="cpu", *,
                 allocator: PagedAllocator | None = None, block_manager: BlockManager | None = None,
                 storage: KVStorage | None = None) -> None:
        self.max_total_tokens = check_int("max_total_tokens", max_total_tokens, 1)
        bs = check_int("block_size", block_size, 1)
        num_blocks = -(-self.max_total_tokens // bs)
        if storage is None:
            storage = KVStorage(num_layers, num_kv_heads, head_dim, num_blocks, bs, dtype, device)
        elif not isinstance(storage, KVStorage) or storage.shape_key() != KVStorage.key_of(
                num_layers, num_kv_heads, head_dim, num_blocks, bs, dtype, device):
            raise ValidationError(f"storage {storage!r} does not have the arena's shape: {num_layers} layers, "
                                  f"{num_kv_heads} kv heads, head_dim {head_dim}, {num_blocks} blocks of "
                                  f"{bs}, {dtype} on {device}")
        self.storage = storage
        if block_manager is None:
            if allocator is not None and not isinstance(allocator, PagedAllocator):
                raise ValidationError(f"allocator must be a PagedAllocator, got {type(allocator).__name__}")
            block_manager = BlockManager(num_blocks, bs, enable_prefix_caching=False, allocator=allocator,
                                         placement=RunPlacement)
        elif not isinstance(block_manager, BlockManager) or allocator is not None:
            raise ValidationError("block_manager must be a BlockManager (and then no allocator is given)")
        elif (block_manager.num_blocks, block_manager.block_size) != (num_blocks, bs):
            raise ValidationError(
                f"the block manager has {block_manager.num_blocks} blocks of {block_manager.block_size} "
                f"tokens; expected {num_blocks} blocks of {bs} (max_total_tokens={self.max_total_tokens})"
            )
        self.block_manager = block_manager
        self.allocator = block_manager.allocator
        st = self.storage
        self.num_layers, self.num_kv_heads, self.head_dim = st.num_layers, st.num_kv_heads, st.head_dim
        self.num_blocks, self.block_size, self.dtype, self.device = num_blocks, bs, st.dtype, st.device
        self.k_cache, self.v_cache = st.k_cache, st.v_cache
        self._k_slots, self._v_slots = st.k_slots, st.v_slots  # [layers, slots, H, D] views
        self._k_layers = [st.k_layer(i) for i in range(st.num_layers)]  # per-layer slot views
        self._v_layers = [st.v_layer(i) for i in range(st.num_layers)]
        self.bytes_per_block = KVStorage.bytes_per_block(num_layers, num_kv_heads, head_dim, bs, st.dtype)
        self._seqs: dict[Hashable, _Entry] = {}  # insertion order
        self._reserved = 0  # sum over reserved requests of cap blocks - table length
        self._cond = threading.Condition(threading.RLock())
        self._free_generation = 0  # bumped by every free that released something

    def __repr__(self) -> str:
        return (f"TensorKVCache(layers={self.num_layers}, kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, blocks={self.num_blocks}x{self.block_size}, "
                f"dtype={self.dtype}, device={self.device}, "
                f"sequences={len(self._seqs)}, free_blocks={self.block_manager.num_free_blocks})")

    @classmethod
    def over(cls, storage: KVStorage, block_manager: BlockManager) -> TensorKVCache:
        """The request-keyed API on an existing storage and block manager (e.g. the engine's),
        so arena requests and the planner's share one pool and one set of tensors."""
        if not isinstance(storage, KVStorage):
            raise ValidationError(f"storage must be a KVStorage, got {type(storage).__name__}")
        return cls(storage.num_layers, storage.num_kv_heads, storage.head_dim,
                   storage.num_blocks * storage.block_size, storage.block_size, storage.dtype,
                   storage.device, block_manager=block_manager, storage=storage)

    # ------------------------------------------------------------ sizing
    @staticmethod
    def memory_bytes_needed(num_layers: int, num_kv_heads: int, head_dim: int, max_total_tokens: int,
                            block_size: int = 16, dtype: torch.dtype = torch.float32) -> int:
        """Arena bytes by the guide's formula:
        ``ceil(tokens/bs) * heads*bs*head_dim * layers * 2 (K and V) * bytes_per_element``."""
        tokens = check_int("max_total_tokens", max_total_tokens, 1)
        per_block = KVStorage.bytes_per_block(num_layers, num_kv_heads, head_dim, block_size, dtype)
        return -(-tokens // block_size) * per_block

    @classmethod
    def from_memory_budget(cls, budget_bytes: int, num_layers: int, num_kv_heads: int, head_dim: int,
                           block_size: int = 16, dtype: torch.dtype = torch.float32, device="cpu",
                           **kwargs) -> TensorKVCache:
        """The largest arena (whole blocks) that fits in ``budget_bytes``."""
        n = KVStorage.blocks_for_budget(budget_bytes, num_layers, num_kv_heads, head_dim, block_size, dtype)
        return cls(num_layers, num_kv_heads, head_dim, n * block_size, block_size, dtype, device, **kwargs)

    def warmup(self) -> None:
        """Touch every page of the arena (zero-fill) so the first requests do not page-fault."""
        self.storage.warmup()

    # ------------------------------------------------------------ allocation
    def blocks_needed(self, prompt_len: int, max_tokens: int | None = None, reserve: bool = True) -> int:
        """Free, unpromised blocks that :meth:`allocate_for` needs for these arguments."""
        prompt, cap = self._check_lengths(prompt_len, max_tokens)
        return -(-(cap if reserve else prompt) // self.block_size)

    def available_blocks(self) -> int:
        """Free blocks not promised to a reserved request's growth."""
        return max(0, self.block_manager.num_free_blocks - self._reserved)

    def can_allocate(self, prompt_len: int, max_tokens: int | None = None, reserve: bool = True) -> bool:
        return self.blocks_needed(prompt_len, max_tokens, reserve) <= self.available_blocks()

    def allocate_for(self, request_id: Hashable, prompt_len: int, max_tokens: int | None = None, *,
                     reserve: bool = True) -> bool:
        """Allocate blocks for a request's prompt (see the module docstring for the cap semantics).

        Returns False, allocating nothing, when the request does not fit now.
        Raises ``StateError`` if ``request_id`` is already allocated and
        ``ValidationError`` for ``prompt_len <= 0`` or ``max_tokens < prompt_len``.
        """
        try:
            hash(request_id)
        except TypeError as exc:
            raise ValidationError(f"request_id must be hashable (str or int), got {type(request_id).__name__}") from exc
        prompt, cap = self._check_lengths(prompt_len, max_tokens)
        reserve = check_bool("reserve", reserve)
        bs = self.block_size
        prompt_blocks, cap_blocks = -(-prompt // bs), -(-cap // bs)
        with self._cond:
            if request_id in self._seqs:
                raise StateError(f"request {request_id!r} already has KV blocks; free_for() it first")
            if cap_blocks > self.num_blocks or (cap_blocks if reserve else prompt_blocks) > self.available_blocks():
                return False
            entry = _Entry(request_id, cap, reserve)
            if not self.block_manager.allocate(entry.seq, prompt):  # pragma: no cover - checked above
                return False
            entry.seq.num_computed_tokens = prompt
            entry.contig = self.block_manager.is_contiguous(entry.seq)
            self._seqs[request_id] = entry
            if reserve:
                self._reserved += cap_blocks - prompt_blocks
            return True

    def append_token(self, request_id: Hashable) -> bool:
        """Make room for one more token; False (nothing changed) past the cap or out of blocks."""
        return self.append_tokens(request_id, 1)

    def append_tokens(self, request_id: Hashable, n: int) -> bool:
        """Make room for ``n`` more tokens, all or nothing; ``n == 0`` is a no-op (True)."""
        n = check_int("n", n, 0)
        with self._cond:
            entry = self._get(request_id)
            seq = entry.seq
            used = seq.num_computed_tokens + n
            if used > seq.num_prompt_tokens:  # the cap
                return False
            k = -(-used // self.block_size) - len(seq.block_table)
            if k > 0:
                # a reserved request draws on its own promise; others may not touch promised blocks
                free = self.block_manager.num_free_blocks if entry.reserved else self.available_blocks()
                if k > free or not self.block_manager.append_slots(seq, n):
                    return False
                if entry.reserved:
                    self._reserved -= k
                entry.table_tensor = None
                entry.contig = self.block_manager.is_contiguous(seq)
            seq.num_computed_tokens = used
            return True

    def free_for(self, request_id: Hashable) -> bool:
        """Return a request's blocks to the pool; a no-op (returning False) for an unknown id."""
        with self._cond:
            entry = self._seqs.pop(request_id, None) if _hashable(request_id) else None
            if entry is None:
                return False
            seq = entry.seq
            if entry.reserved:
                self._reserved -= -(-seq.num_prompt_tokens // self.block_size) - len(seq.block_table)
            self.block_manager.free(seq)
            self._free_generation += 1
            self._cond.notify_all()
            return True

    @property
    def free_generation(self) -> int:
        """Bumped by every effective :meth:`free_for`; read it before a failed allocation."""
        return self._free_generation

    def wait_for_free(self, generation: int, timeout: float) -> bool:
        """Block until a free happens after ``generation`` was read, or ``timeout`` seconds pass.

        Returns True if a free happened.  No lost wake-ups: a free between reading
        ``free_generation`` and calling this returns at once.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._free_generation != generation, timeout=timeout)

    # ------------------------------------------------------------ per-request queries
    def has(self, request_id: Hashable) -> bool:
        return _hashable(request_id) and request_id in self._seqs

    __contains__ = has

    def __len__(self) -> int:
        return len(self._seqs)

    def used_tokens(self, request_id: Hashable) -> int:
        return self._get(request_id).seq.num_computed_tokens

    def max_tokens(self, request_id: Hashable) -> int:
        """The request's token cap."""
        return self._get(request_id).seq.num_prompt_tokens

    def block_table(self, request_id: Hashable) -> list[int]:
        """Block ids of the request, token order (a copy of the block manager's table)."""
        return list(self._get(request_id).seq.block_table)

    def block_table_tensor(self, request_id: Hashable) -> torch.Tensor:
        """Block ids as an int64 tensor on the arena's device (cached; do not modify in place)."""
        return self._table_tensor(self._get(request_id))

    def view_is_contiguous(self, request_id: Hashable) -> bool:
        """True when :meth:`k_view`/:meth:`v_view` return zero-copy views of the arena."""
        return self._get(request_id).contig

    def k_view(self, request_id: Hashable, layer: int) -> torch.Tensor:
        """K of the request's used tokens, ``[used_tokens, num_kv_heads, head_dim]``.

        Zero-copy (shares the arena's storage) when :meth:`view_is_contiguous`,
        otherwise a copy gathered through the block table.
        """
        entry = self._get(request_id)
        seq = entry.seq
        if entry.contig:  # the hot path: one slice of the layer's slot view
            s = seq.block_table[0] * self.block_size
            return self._k_layers[self.storage.check_layer(layer)][s : s + seq.num_computed_tokens]
        return self.storage.k_view(layer, self._table_tensor(entry), seq.num_computed_tokens, False)

    def v_view(self, request_id: Hashable, layer: int) -> torch.Tensor:
        """V counterpart of :meth:`k_view`."""
        entry = self._get(request_id)
        seq = entry.seq
        if entry.contig:
            s = seq.block_table[0] * self.block_size
            return self._v_layers[self.storage.check_layer(layer)][s : s + seq.num_computed_tokens]
        return self.storage.v_view(layer, self._table_tensor(entry), seq.num_computed_tokens, False)

    def kv_views(self, request_id: Hashable) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of every layer, each ``[num_layers, used_tokens, num_kv_heads, head_dim]``.

        One tensor op per K/V instead of one per layer: zero-copy when
        :meth:`view_is_contiguous`, otherwise copies gathered through the block table.
        """
        entry = self._get(request_id)
        seq = entry.seq
        if entry.contig:
            s = seq.block_table[0] * self.block_size
            e = s + seq.num_computed_tokens
            return self._k_slots[:, s:e], self._v_slots[:, s:e]
        return self.storage.kv_views(self._table_tensor(entry), seq.num_computed_tokens, False)

    def write(self, request_id: Hashable, layer: int, positions, k: torch.Tensor, v: torch.Tensor) -> None:
        """Scatter ``k``/``v`` ``[n, num_kv_heads, head_dim]`` to token ``positions`` of a request.

        ``positions``: n distinct ints in ``[0, used_tokens)``: an int, a range,
        a list/array or an integer tensor.  An int, or a step-1 range on a
        contiguous request, is one slice copy per tensor; anything else is one
        ``index_copy_`` per tensor with slots ``table[pos // bs] * bs + pos % bs``
        computed vectorized.  No per-token Python.
        """
        entry = self._get(request_id)
        seq, st = entry.seq, self.storage
        layer = st.check_layer(layer)
        slots, n = st.slots(seq.block_table, positions, seq.num_computed_tokens, entry.contig)
        st.check_rows(k, v, n)
        st.scatter(layer, slots, k, v)

    # ------------------------------------------------------------ stats
    @property
    def num_allocated_sequences(self) -> int:
        return len(self._seqs)

    @property
    def total_allocated_bytes(self) -> int:
        """Bytes of the pool's blocks in use (K and V, every layer)."""
        return (self.num_blocks - self.block_manager.num_free_blocks) * self.bytes_per_block

    @property
    def total_free_bytes(self) -> int:
        return self.block_manager.num_free_blocks * self.bytes_per_block

    def fragmentation(self) -> float:
        """``1 - largest free run / free blocks`` (0 when nothing is free); growth rooms count as free."""
        return self.block_manager.fragmentation()

    def is_full(self) -> bool:
        """True when no block is left for a new request (all allocated or promised)."""
        return self.available_blocks() == 0

    def stats(self) -> KVArenaStats:
        free = self.block_manager.num_free_blocks
        return KVArenaStats(
            num_sequences=len(self._seqs),
            used_tokens=sum(e.seq.num_computed_tokens for e in self._seqs.values()),
            allocated_blocks=self.num_blocks - free,
            free_blocks=free,
            reserved_blocks=self._reserved,
            total_allocated_bytes=self.total_allocated_bytes,
            total_free_bytes=self.total_free_bytes,
            fragmentation=self.fragmentation(),
            contiguous_sequences=sum(e.contig for e in self._seqs.values()),
        )

    def dump_stats(self, file: TextIO | None = None) -> str:
        """Write the guide's ``dumpCacheStats`` text to ``file`` (stdout if None); returns it."""
        seqs = [(rid, e.seq.num_computed_tokens, e.seq.num_prompt_tokens, e.seq.block_table)
                for rid, e in self._seqs.items()]
        text = stats_text(self, seqs)
        (file if file is not None else sys.stdout).write(text)
        return text

    def dump_block_map(self, file: TextIO | None = None, width: int = 64) -> str:
        """Write the guide's ``dumpBlockMap`` text (``width`` blocks per row); returns it.

        ``X`` marks a block in a table (or pinned, or held by another pool user), ``.`` a
        free block or a growth room.
        """
        width = check_int("width", width, 1)
        text = block_map_text(~self.block_manager.free_mask(), self.fragmentation(), width)
        (file if file is not None else sys.stdout).write(text)
        return text

    # ------------------------------------------------------------ internals
    def _get(self, request_id) -> _Entry:
        try:
            return self._seqs[request_id]
        except (KeyError, TypeError):
            raise NotFoundError(f"request {request_id!r} has no KV blocks; allocate_for() it first") from None

    def _check_lengths(self, prompt_len, max_tokens) -> tuple[int, int]:
        prompt = check_int("prompt_len", prompt_len, 1)
        if max_tokens is None:  # the guide's fixed maximum: grow within the prompt's blocks
            return prompt, -(-prompt // self.block_size) * self.block_size
        cap = check_int("max_tokens", max_tokens, 1)
        if cap < prompt:
            raise ValidationError(f"max_tokens ({cap}) must be >= prompt_len ({prompt})")
        return prompt, cap

    def _table_tensor(self, entry: _Entry) -> torch.Tensor:
        if entry.table_tensor is None:
            entry.table_tensor = torch.tensor(entry.seq.block_table, dtype=torch.int64, device=self.device)
        return entry.table_tensor


def _hashable(request_id) -> bool:
    try:
        hash(request_id)
    except TypeError:
        return False
    return True
