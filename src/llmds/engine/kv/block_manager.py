"""The owner of block tables: paged KV blocks with prefix caching, for the planner.

``BlockManager`` decides which blocks each request holds, as one block table
(a list of block ids) per request, ``seq.block_table``, on the shared
:class:`~llmds.memory.paged_allocator.PagedAllocator`.  Every K/V store (``KVStorage``, the
CortexStream ``TensorKVCache`` layer, cb_lab's ``PagedKVCache``) stores into those block
ids and keeps no tables: planner → block manager → block ids → storage.

Which blocks a table gets is its placement (:mod:`llmds.engine.kv.placement`):
the free list's order by default; the CortexStream arena passes
``placement=RunPlacement`` (one run per table, with a growth room, for zero-copy
views).  Blocks a placement holds back count as free and are given back before
anything is refused.

Prefixes are shared through :class:`~llmds.memory.prefix_cache.PrefixCache` (the seed
``KVCache``'s index): block ``i`` is keyed by the hash of block ``i-1``'s key and block
``i``'s token ids, so a key names the whole prefix.

When full blocks are registered (and why it is safe):

* at allocation, every block whose tokens are all known *and* computed by the
  chunk being scheduled (``end <= num_computed_tokens + num_new_tokens``), so
  requests admitted in the same step share: the later one reads KV that an
  earlier item of the same plan writes (see ``StepPlan.prefill``);
* a block that fills during decode is registered when the request gets its
  next block (``append_decode_slots``, one step later) or is freed, whichever
  comes first.

Hence an indexed block always holds computed KV or KV that the current plan
computes before any reader; a cancelled plan (``Planner.cancel``) calls
``rollback``, which unindexes the blocks it registered for tokens it never
computed.  A freed indexed block stays reusable on the allocator's cached free
list (LRU: least recently freed is reclaimed first, and a request's blocks are
freed last-block-first so its tail goes before its head); ``pin_prefix`` keeps
hot prefixes from eviction.  Requests without token ids (cb_lab, the arena)
never share.

It satisfies :class:`~llmds.engine.kv.kv_manager.KVManager`, the protocol the
planner talks to (re-exported here with ``NullKV``, the unlimited stand-in).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from llmds._checks import check_bool, check_int
from llmds.engine.kv.kv_manager import KVManager, NullKV, check_fits, peak_blocks
from llmds.engine.kv.placement import FreeListPlacement, Placement
from llmds.engine.request import RequestState
from llmds.errors import CapacityError, StateError, ValidationError
from llmds.memory._runs import true_runs
from llmds.memory.paged_allocator import PagedAllocator
from llmds.memory.prefix_cache import ROOT_KEY, PrefixCache

__all__ = ["KVManager", "BlockManager", "NullKV"]  # KVManager, NullKV: re-exported from kv_manager


class BlockManager:
    """Block tables on a paged pool with hash-chained prefix caching.

    Parameters
    ----------
    num_blocks : int
        Blocks in the pool (ignored when ``allocator`` is given).
    block_size : int
        Tokens per block.
    enable_prefix_caching : bool
        Share full blocks between requests with token ids.
    allocator : PagedAllocator, optional
        An existing pool to allocate from; then ``num_blocks`` and ``block_size``
        must match its ``max_pages`` and ``page_size`` (the allocator's names
        for them: this is the one place they are mapped).
    placement : callable, optional
        ``placement(allocator)`` makes the :class:`~llmds.engine.kv.placement.Placement`
        that picks each table's blocks (default: the free list's order).
    """

    __slots__ = ("block_size", "num_blocks", "allocator", "prefix_cache", "num_queries", "num_hits",
                 "num_query_tokens", "num_hit_tokens", "_match_seq", "_match", "placement")

    def __init__(self, num_blocks: int, block_size: int = 16, *, enable_prefix_caching: bool = True,
                 allocator: PagedAllocator | None = None,
                 placement: Callable[[PagedAllocator], Placement] = FreeListPlacement) -> None:
        num_blocks = check_int("num_blocks", num_blocks, 1)
        block_size = check_int("block_size", block_size, 1)
        check_bool("enable_prefix_caching", enable_prefix_caching)
        if allocator is None:
            allocator = PagedAllocator(block_size, num_blocks)
        elif not isinstance(allocator, PagedAllocator):
            raise ValidationError(f"allocator must be a PagedAllocator, got {type(allocator).__name__}")
        elif (allocator.max_pages, allocator.page_size) != (num_blocks, block_size):
            raise ValidationError(
                f"the allocator has {allocator.max_pages} blocks of {allocator.page_size} tokens; "
                f"expected num_blocks={num_blocks}, block_size={block_size}"
            )
        self.allocator = allocator
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.placement = placement(allocator)  # which blocks each table gets
        self.prefix_cache = PrefixCache(allocator, retain_freed=True) if enable_prefix_caching else None
        self.num_queries = 0  # admissions of requests with token ids
        self.num_hits = 0  # ... of which reused at least one block
        self.num_query_tokens = 0  # tokens those admissions asked for
        self.num_hit_tokens = 0  # ... of which came from the cache
        self._match_seq: RequestState | None = None  # match_prefix result, valid until the next mutation
        self._match: tuple[list[int], int] = ([], ROOT_KEY)

    # ----------------------------------------------------------------- queries
    @property
    def num_free_blocks(self) -> int:
        """Free blocks: cached ones and rooms included (both are reclaimable)."""
        return self.placement.num_free

    def usage(self) -> float:
        """Fraction of blocks held by requests' tables or pins (0..1)."""
        return 1.0 - self.placement.num_free / self.num_blocks

    def free_mask(self) -> np.ndarray:
        """Boolean ``[num_blocks]``: True for free blocks, growth rooms included.  O(num_blocks)."""
        return self.placement.free_mask()

    def fragmentation(self) -> float:
        """``1 - largest free run / free blocks`` (0 when nothing is free), rooms counted as free."""
        mask = self.placement.free_mask()
        n = int(mask.sum())
        return 1.0 - int(true_runs(mask)[1].max()) / n if n else 0.0

    def is_contiguous(self, seq: RequestState) -> bool:
        """True when ``seq``'s table is one ascending run of block ids (zero-copy views)."""
        return self.placement.is_contiguous(seq)

    def cached_keys(self) -> list[int]:
        """Chain keys of every indexed full block, in no order (what a replica advertises)."""
        return self.prefix_cache.keys() if self.prefix_cache is not None else []

    def get_block_table(self, seq: RequestState) -> list[int]:
        return seq.block_table

    @property
    def evictions(self) -> int:
        """Cached blocks reclaimed for new content (from the prefix index)."""
        return self.prefix_cache.evictions if self.prefix_cache is not None else 0

    @property
    def hit_rate(self) -> float:
        """Cached tokens / queried tokens over all admissions with token ids."""
        return self.num_hit_tokens / self.num_query_tokens if self.num_query_tokens else 0.0

    def stats(self) -> dict[str, float]:
        """Pool, prefix-cache and placement counters.

        ``block_tables``: requests holding blocks of this manager; a
        ``RunPlacement`` adds ``contiguous_tables`` (how many are one run) and
        ``room_blocks`` (free blocks held as growth rooms, counted in ``num_free_blocks``).
        """
        return {
            "num_blocks": self.num_blocks,
            "num_free_blocks": self.placement.num_free,
            "usage": self.usage(),
            "prefix_queries": self.num_queries,
            "prefix_hits": self.num_hits,
            "prefix_query_tokens": self.num_query_tokens,
            "prefix_hit_tokens": self.num_hit_tokens,
            "prefix_hit_rate": self.hit_rate,
            "evictions": self.evictions,
            "cached_blocks": len(self.prefix_cache) if self.prefix_cache is not None else 0,
            **self.placement.stats(),
        }

    def check_fits(self, seq: RequestState) -> None:
        """Raise ``CapacityError`` if ``seq`` could never run, even alone.

        Blocks available to it: the pool minus the pinned blocks, plus the
        pinned blocks its own prefix hits (it shares those).
        """
        pc = self.prefix_cache
        if pc is None or not pc.num_pinned:
            check_fits(seq, self.block_size, self.num_blocks)
            return
        hits = self._pinned_hits(seq, ())
        check_fits(seq, self.block_size, self.num_blocks, self.num_blocks - pc.num_pinned + hits,
                    f" ({pc.num_pinned} are pinned, {hits} of those shared with its prefix; unpin "
                    "prefixes to make room)")

    def _pinned_hits(self, seq: RequestState, extra) -> int:
        """Pinned blocks (or blocks in ``extra``) that ``seq`` would reuse as a prefix hit.

        Pins are always whole chains from the first block, so they form a
        prefix of the match.  Reads the prefix cache's pin table (one index per
        pool; pins made on it directly are counted too).
        """
        pc = self.prefix_cache
        max_pages = (seq.num_tokens - 1) // self.block_size  # as match_prefix: >= 1 token to compute
        if pc is None or seq.prompt_token_ids is None or max_pages <= 0:
            return 0
        if not pc.num_pinned and not extra:
            return 0
        tokens = seq.prompt_token_ids if not seq.num_output_tokens else seq.all_token_ids
        pages, _ = pc.match(tokens, max_pages)
        return sum(1 for p in pages if pc.is_pinned(p) or p in extra)

    # ---------------------------------------------------------- prefix lookup
    def match_prefix(self, seq: RequestState) -> int:
        """Tokens of ``seq`` found in the prefix cache (whole blocks, <= num_tokens - 1).

        No references are taken; the result is remembered for the next
        ``allocate(seq, ...)`` unless the manager changes in between.
        """
        pc = self.prefix_cache
        self._match_seq = seq
        max_pages = (seq.num_tokens - 1) // self.block_size  # leave >= 1 token to compute (logits)
        if pc is None or seq.prompt_token_ids is None or max_pages <= 0:
            self._match = ([], ROOT_KEY)
            return 0
        tokens = seq.prompt_token_ids if not seq.num_output_tokens else seq.all_token_ids
        self._match = pc.match(tokens, max_pages)
        return len(self._match[0]) * self.block_size

    def pin_prefix(self, token_ids: Sequence[int], *, keep_fitting: Iterable[RequestState] = ()) -> list[int]:
        """Pin the cached full blocks holding a prefix of ``token_ids`` against eviction.

        Returns the pinned block ids (pass them to :meth:`unpin`); they stay
        allocated (counted in ``usage``) and are no longer available to
        requests that do not share them.  Raises ``CapacityError``, pinning
        nothing, when a request of ``keep_fitting`` could then never finish
        (see :meth:`check_fits`); ``Planner.pin_prefix`` passes its live
        requests.
        """
        if self.prefix_cache is None:
            raise StateError("prefix caching is disabled")
        pc = self.prefix_cache
        pages, _ = pc.match(list(token_ids))
        new = {p for p in pages if not pc.is_pinned(p)}
        if new:
            avail = self.num_blocks - pc.num_pinned - len(new)  # before pinned hits
            for seq in keep_fitting:
                peak = peak_blocks(seq, self.block_size)
                if peak <= avail:
                    continue  # fits without sharing any pinned block: no prefix match needed
                hits = self._pinned_hits(seq, new)
                if peak > avail + hits:
                    raise CapacityError(
                        f"pinning these {len(pages)} blocks would leave request {seq.request_id!r} "
                        f"unable to finish: it needs {peak} blocks, only {avail + hits} of the pool's "
                        f"{self.num_blocks} would be available to it ({hits} pinned ones it shares); "
                        "unpin other prefixes first or pin after it finishes"
                    )
        if pages:
            pc.pin(pages)
        self._match_seq = None
        return pages

    def unpin(self, block_ids: Sequence[int]) -> None:
        """Drop one pin from each block (as returned by :meth:`pin_prefix`)."""
        if self.prefix_cache is None:
            raise StateError("prefix caching is disabled")
        self.prefix_cache.unpin(list(block_ids))
        self._match_seq = None

    # --------------------------------------------------------------- allocation
    def can_allocate(self, seq: RequestState, num_new_tokens: int) -> bool:
        """Would ``allocate`` (new request) or ``append_slots`` (running) succeed?"""
        return self._blocks_needed(seq, num_new_tokens) <= self.placement.num_free

    def _blocks_needed(self, seq: RequestState, n: int) -> int:
        bs = self.block_size
        if seq.block_table:
            return max(0, -(-(seq.num_computed_tokens + n) // bs) - len(seq.block_table))
        if self._match_seq is not seq:
            self.match_prefix(seq)
        pages = self._match[0]
        ref = self.allocator.refcount
        taken_back = sum(1 for p in pages if ref(p) == 0)  # free cached hits leave the free list
        return -(-(len(pages) * bs + n) // bs) - len(pages) + taken_back

    def allocate(self, seq: RequestState, num_new_tokens: int) -> bool:
        """Admit ``seq``: reuse its cached prefix, then allocate blocks for
        ``num_new_tokens`` tokens after it.

        Sets ``seq.num_cached_tokens = seq.num_computed_tokens`` = the hit
        (whole blocks; at least one token is always left to compute).  Returns
        False, changing nothing, when the pool is short of blocks.
        """
        n = check_int("num_new_tokens", num_new_tokens, 0)
        if seq.block_table:
            raise StateError(f"request {seq.request_id!r} already holds blocks; use append_slots")
        need = self._blocks_needed(seq, n)
        pages, key = self._match
        hit = len(pages) * self.block_size
        if hit + n > seq.num_tokens:
            raise ValidationError(
                f"num_new_tokens={n} exceeds the {seq.num_tokens - hit} uncached tokens of request "
                f"{seq.request_id!r}"
            )
        self._match_seq = None
        place = self.placement
        if need > place.num_free:
            return False
        fresh = -(-(hit + n) // self.block_size) - len(pages)
        if pages:
            place.ensure_free(need)
            self.prefix_cache.acquire(pages)
            place.adopt(seq, pages + self.allocator.alloc(fresh) if fresh > 0 else list(pages))
        elif fresh > 0:
            place.place(seq, fresh, peak_blocks(seq, self.block_size))
        seq.num_cached_tokens = seq.num_computed_tokens = hit
        seq.num_hashed_blocks = len(pages)
        seq.last_block_key = key
        if self.prefix_cache is not None and seq.prompt_token_ids is not None:
            self.num_queries += 1
            self.num_query_tokens += seq.num_tokens
            if hit:
                self.num_hits += 1
                self.num_hit_tokens += hit
            self._register(seq, hit + n)
        return True

    def append_slots(self, seq: RequestState, num_new_tokens: int) -> bool:
        """Grow a running request's table to hold ``num_new_tokens`` more tokens.

        Returns False, changing nothing, when the pool is short of blocks.
        """
        c = seq.num_computed_tokens + num_new_tokens
        if not seq.num_computed_tokens <= c <= seq.num_tokens:
            raise ValidationError(
                f"num_new_tokens={num_new_tokens!r} must be in [0, {seq.num_tokens - seq.num_computed_tokens}] "
                f"for request {seq.request_id!r}"
            )
        bt = seq.block_table
        need = -(-c // self.block_size) - len(bt)
        if need > 0:
            if need > self.placement.num_free:
                return False
            if bt:
                self.placement.grow(seq, need)
            else:  # a lengths-only table emptied by a zero-token allocate
                self.placement.place(seq, need, peak_blocks(seq, self.block_size))
            self._match_seq = None
        if self.prefix_cache is not None and seq.prompt_token_ids is not None:
            self._register(seq, c)
        return True

    def append_decode_slots(self, seqs: list[RequestState]) -> bool:
        """One more block for each decoding request in ``seqs`` (each at a block boundary).

        All or nothing: False, changing nothing, when fewer blocks are free.
        The placement picks the blocks (one allocator call for the free list);
        the block each request just filled is registered in the prefix index
        (decode blocks are cached too).
        """
        if len(seqs) > self.placement.num_free:
            return False
        self.placement.grow_each(seqs)
        self._match_seq = None
        pc = self.prefix_cache
        if pc is None:
            return True
        register, bs = pc.register, self.block_size
        for s in seqs:
            bt = s.block_table
            if s.prompt_token_ids is None:
                continue
            j = len(bt) - 2  # the block that just filled
            if s.num_hashed_blocks == j:  # common case: all earlier blocks are hashed
                s.last_block_key = register(bt[j], s.last_block_key, s.token_slice(j * bs, j * bs + bs))[0]
                s.num_hashed_blocks = j + 1
            else:
                self._register(s, s.num_computed_tokens)
        return True

    def fork(self, parent: RequestState, child: RequestState) -> list[tuple[int, int]] | None:
        """Give a new ``child`` ``parent``'s KV (parallel sampling): full blocks by reference (immutable
        from here), a partial last block copied (copy-on-write: each writes its next token there next
        step).  The copies ``(src, dst)`` to apply to the KV storage; None (no change) if no block is free."""
        bt, full = parent.block_table, parent.num_computed_tokens // self.block_size
        if len(bt) - full > self.placement.num_free:
            return None
        self.allocator.incref(bt[:full])
        copies = self.placement.fork(parent, child, full)
        child.num_hashed_blocks, child.last_block_key = parent.num_hashed_blocks, parent.last_block_key
        self._match_seq = None
        return copies

    def free(self, seq: RequestState) -> None:
        """Release ``seq``'s blocks (idempotent); full computed blocks stay cached."""
        if not seq.block_table:
            return
        cached = self.prefix_cache is not None and seq.prompt_token_ids is not None
        if cached:
            self._register(seq, seq.num_computed_tokens)
        table, room = self.placement.release(seq)
        # one call; tail first, so a prefix's head is evicted last (room blocks are uncached)
        (self.prefix_cache if cached else self.allocator).free(table[::-1] + room)
        seq.num_hashed_blocks = 0
        seq.last_block_key = ROOT_KEY
        self._match_seq = None

    def rollback(self, seq: RequestState, *, release: bool = False) -> None:
        """Undo a cancelled step's KV work for ``seq`` (see :class:`KVManager`).

        Only blocks this step gave ``seq`` can hold uncomputed tokens: those at
        index >= ``num_computed_tokens // block_size`` were allocated fresh for
        ``seq`` (prefix hits lie below), so any of them that is indexed was
        registered by ``seq`` during the cancelled step and is unindexed here,
        before it is freed (it goes back as an ordinary free block, or to the
        placement's room for the request).
        """
        bs, bt, pc = self.block_size, seq.block_table, self.prefix_cache
        c = seq.num_computed_tokens
        full = c // bs
        if pc is not None and seq.prompt_token_ids is not None and seq.num_hashed_blocks > full:
            for i in range(full, seq.num_hashed_blocks):
                pc.unregister(bt[i])  # a no-op for a block that deduplicated onto another
            seq.num_hashed_blocks = full
            seq.last_block_key = pc.chain_keys(seq.token_slice(0, full * bs), full)[-1] if full else ROOT_KEY
        self._match_seq = None
        if release:
            if pc is not None and seq.prompt_token_ids is not None and bt:  # counted at allocate
                self.num_queries -= 1
                self.num_query_tokens -= seq.num_tokens
                if seq.num_cached_tokens:
                    self.num_hits -= 1
                    self.num_hit_tokens -= seq.num_cached_tokens
            self.free(seq)
            return
        keep = -(-c // bs)
        if not keep:
            self.free(seq)
            return
        extra = self.placement.truncate(seq, keep)
        if extra:
            self.allocator.free(extra[::-1])

    # ---------------------------------------------------------------- internal
    def _register(self, seq: RequestState, upto: int) -> None:
        """Index the full blocks of ``seq`` whose tokens ``[.., upto)`` are known."""
        bs = self.block_size
        end = min(upto, seq.num_tokens, len(seq.block_table) * bs) // bs
        i = seq.num_hashed_blocks
        if i >= end:
            return
        key, bt, register, tok = seq.last_block_key, seq.block_table, self.prefix_cache.register, seq.token_slice
        while i < end:
            key = register(bt[i], key, tok(i * bs, (i + 1) * bs))[0]
            i += 1
        seq.num_hashed_blocks = i
        seq.last_block_key = key
