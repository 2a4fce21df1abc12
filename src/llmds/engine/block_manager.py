"""KV managers for the planner: paged block tables with prefix caching, and two stand-ins.

``BlockManager`` keeps one block table (a list of block ids) per request on
the shared :class:`~llmds.paged_allocator.PagedAllocator` and shares prefixes
through the shared :class:`~llmds.prefix_cache.PrefixCache` (the same index
the seed ``KVCache`` uses): block ``i`` of a request is keyed by the hash of
block ``i-1``'s key and block ``i``'s token ids, so a key names the whole
prefix.

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
computed.  A freed indexed block stays reusable on the
allocator's cached free list (LRU: least recently freed is reclaimed first,
and a request's blocks are freed last-block-first so its tail goes before its
head); ``pin_prefix`` keeps hot prefixes from eviction.  Requests without
token ids (cb_lab) never share.

Pinned blocks are not available to other requests, so "can this request ever
run" counts the blocks available to *it*: the pool minus the pinned blocks,
plus the pinned blocks its own prefix hits (those it shares).  ``check_fits``
rejects a request beyond that, and ``pin_prefix(..., keep_fitting=reqs)``
refuses a pin that would leave one of ``reqs`` unable to finish
(``Planner.pin_prefix`` passes the planner's live requests).

``BlockCountKV`` only counts blocks (lengths-only requests); ``NullKV`` never
runs out.  All three satisfy :class:`KVManager`, the protocol the planner
(``llmds.engine.planner``) talks to.
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence, runtime_checkable

from llmds.engine.request import RequestState
from llmds.errors import CapacityError, StateError, ValidationError
from llmds.paged_allocator import PagedAllocator
from llmds.prefix_cache import ROOT_KEY, PrefixCache

__all__ = ["KVManager", "BlockManager", "BlockCountKV", "NullKV"]


@runtime_checkable
class KVManager(Protocol):
    """What the planner needs from a KV-cache manager.

    Implemented by :class:`BlockManager` (paged
    blocks + prefix cache), ``BlockCountKV`` (block counts only, for
    lengths-only requests) and ``NullKV`` (unlimited).  Invariant kept by
    every implementation: between steps a running request holds blocks for
    exactly its ``num_computed_tokens`` tokens, so a decode needs a new block
    only when ``num_computed_tokens % block_size == 0``; the planner asks for
    those blocks (``append_decode_slots``) only then.
    """

    block_size: int

    @property
    def num_free_blocks(self) -> int: ...

    def check_fits(self, seq: RequestState) -> None:
        """Raise ``CapacityError`` if ``seq`` could never run, even alone (pinned blocks
        it does not share are not available to it)."""

    def match_prefix(self, seq: RequestState) -> int:
        """Cached tokens a not-yet-allocated ``seq`` would reuse (<= num_tokens - 1); no side effects."""

    def can_allocate(self, seq: RequestState, num_new_tokens: int) -> bool: ...

    def allocate(self, seq: RequestState, num_new_tokens: int) -> bool:
        """Admit ``seq``: take its cached prefix (sets ``num_cached_tokens`` and
        ``num_computed_tokens``), then blocks for ``num_new_tokens`` more tokens.
        False (nothing changed) when blocks run short."""

    def append_slots(self, seq: RequestState, num_new_tokens: int) -> bool:
        """Blocks for ``num_new_tokens`` more tokens of a running ``seq``; False (nothing changed) when short."""

    def append_decode_slots(self, seqs: list[RequestState]) -> bool:
        """One more block for each decoding request in ``seqs`` (all at a block boundary);
        all or nothing: False (nothing changed) when short.  The decode fast path."""

    def free(self, seq: RequestState) -> None:
        """Release ``seq``'s blocks (idempotent)."""

    def rollback(self, seq: RequestState, *, release: bool = False) -> None:
        """Undo a cancelled step's KV work for a running ``seq`` whose
        ``num_computed_tokens`` is still the pre-step value: unindex the blocks
        it registered that hold uncomputed tokens, then free the blocks beyond
        its ``num_computed_tokens`` (the invariant above holds again).  With
        ``release`` (``seq`` was admitted by the cancelled step) free all its
        blocks and undo the admission's statistics."""

    def usage(self) -> float: ...


def _check_fits(seq: RequestState, block_size: int, num_blocks: int, available: int | None = None,
                why: str = "") -> None:
    """CapacityError if ``seq`` needs more than ``available`` blocks (default: the pool), even alone."""
    if available is None or available == num_blocks:
        have = f"the KV pool has {num_blocks}"
    else:
        have = f"only {available} of the pool's {num_blocks} blocks are available to it{why}"
        num_blocks = available
    prompt = -(-seq.num_prompt_tokens // block_size)
    if prompt > num_blocks:
        raise CapacityError(
            f"request {seq.request_id!r}: its prompt of {seq.num_prompt_tokens} tokens needs {prompt} "
            f"blocks of {block_size} tokens but {have}; shorten the prompt or "
            "give the pool more blocks"
        )
    # the last sampled token is never fed back, so its KV is never stored
    peak = _peak_blocks(seq, block_size)
    if peak > num_blocks:
        raise CapacityError(
            f"request {seq.request_id!r}: prompt ({seq.num_prompt_tokens}) + max_new_tokens "
            f"({seq.max_new_tokens}) needs {peak} blocks of {block_size} tokens but {have}; "
            "lower max_new_tokens or give the pool more blocks"
        )


def _peak_blocks(seq: RequestState, block_size: int) -> int:
    """Blocks ``seq`` holds at its longest (the last sampled token's KV is never stored)."""
    return -(-(seq.num_prompt_tokens + max(seq.max_new_tokens, 1) - 1) // block_size)


def _check_new(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValidationError(f"{name} must be an int >= 0, got {n!r}")
    return n


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
        An existing pool to allocate from (its ``page_size`` is the block size).
    """

    __slots__ = ("block_size", "num_blocks", "allocator", "prefix_cache", "num_queries", "num_hits",
                 "num_query_tokens", "num_hit_tokens", "_match_seq", "_match")

    def __init__(self, num_blocks: int, block_size: int = 16, *, enable_prefix_caching: bool = True,
                 allocator: PagedAllocator | None = None) -> None:
        if allocator is None:
            allocator = PagedAllocator(block_size, num_blocks)
        elif not isinstance(allocator, PagedAllocator):
            raise ValidationError("allocator must be a PagedAllocator")
        self.allocator = allocator
        self.block_size = allocator.page_size
        self.num_blocks = allocator.max_pages
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
        """Free blocks, cached ones included (they are reclaimable)."""
        return self.allocator.num_free

    def usage(self) -> float:
        """Fraction of blocks held by requests or pins (0..1)."""
        return 1.0 - self.allocator.num_free / self.num_blocks

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
        return {
            "num_blocks": self.num_blocks,
            "num_free_blocks": self.allocator.num_free,
            "usage": self.usage(),
            "prefix_queries": self.num_queries,
            "prefix_hits": self.num_hits,
            "prefix_query_tokens": self.num_query_tokens,
            "prefix_hit_tokens": self.num_hit_tokens,
            "prefix_hit_rate": self.hit_rate,
            "evictions": self.evictions,
            "cached_blocks": len(self.prefix_cache) if self.prefix_cache is not None else 0,
        }

    def check_fits(self, seq: RequestState) -> None:
        """Raise ``CapacityError`` if ``seq`` could never run, even alone.

        Blocks available to it: the pool minus the pinned blocks, plus the
        pinned blocks its own prefix hits (it shares those).
        """
        pc = self.prefix_cache
        if pc is None or not pc.num_pinned:
            _check_fits(seq, self.block_size, self.num_blocks)
            return
        hits = self._pinned_hits(seq, ())
        _check_fits(seq, self.block_size, self.num_blocks, self.num_blocks - pc.num_pinned + hits,
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
                peak = _peak_blocks(seq, self.block_size)
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
        return self._blocks_needed(seq, num_new_tokens) <= self.allocator.num_free

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
        n = _check_new("num_new_tokens", num_new_tokens)
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
        if need > self.allocator.num_free:
            return False
        if pages:
            self.prefix_cache.acquire(pages)
        fresh = -(-(hit + n) // self.block_size) - len(pages)
        seq.block_table = pages + self.allocator.alloc(fresh) if fresh > 0 else list(pages)
        seq.num_cached_tokens = seq.num_computed_tokens = hit
        seq._num_hashed_blocks = len(pages)
        seq._last_key = key
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
            alloc = self.allocator
            if need > alloc.num_free:
                return False
            bt += alloc.alloc(need)
            self._match_seq = None
        if self.prefix_cache is not None and seq.prompt_token_ids is not None:
            self._register(seq, c)
        return True

    def append_decode_slots(self, seqs: list[RequestState]) -> bool:
        """One more block for each decoding request in ``seqs`` (each at a block boundary).

        All or nothing: False, changing nothing, when fewer blocks are free.
        One allocator call for the batch; the block each request just filled
        is registered in the prefix index (decode blocks are cached too).
        """
        alloc = self.allocator
        k = len(seqs)
        if k > alloc.num_free:
            return False
        pages = alloc.alloc(k)
        self._match_seq = None
        pc = self.prefix_cache
        if pc is None:
            for s, p in zip(seqs, pages):
                s.block_table.append(p)
            return True
        register, bs = pc.register, self.block_size
        for s, p in zip(seqs, pages):
            bt = s.block_table
            bt.append(p)
            if s.prompt_token_ids is None:
                continue
            j = len(bt) - 2  # the block that just filled
            if s._num_hashed_blocks == j:  # common case: all earlier blocks are hashed
                s._last_key = register(bt[j], s._last_key, s.token_slice(j * bs, j * bs + bs))[0]
                s._num_hashed_blocks = j + 1
            else:
                self._register(s, s.num_computed_tokens)
        return True

    def free(self, seq: RequestState) -> None:
        """Release ``seq``'s blocks (idempotent); full computed blocks stay cached."""
        bt = seq.block_table
        if not bt:
            return
        if self.prefix_cache is not None and seq.prompt_token_ids is not None:
            self._register(seq, seq.num_computed_tokens)
            self.prefix_cache.free(bt[::-1])  # tail first: the head of a prefix is evicted last
        else:
            self.allocator.free(bt[::-1])
        seq.block_table = []
        seq._num_hashed_blocks = 0
        seq._last_key = ROOT_KEY
        self._match_seq = None

    def rollback(self, seq: RequestState, *, release: bool = False) -> None:
        """Undo a cancelled step's KV work for ``seq`` (see :class:`KVManager`).

        Only blocks this step gave ``seq`` can hold uncomputed tokens: those at
        index >= ``num_computed_tokens // block_size`` were allocated fresh for
        ``seq`` (prefix hits lie below), so any of them that is indexed was
        registered by ``seq`` during the cancelled step and is unindexed here,
        before it is freed (it goes back as an ordinary free block).
        """
        bs, bt, pc = self.block_size, seq.block_table, self.prefix_cache
        c = seq.num_computed_tokens
        full = c // bs
        if pc is not None and seq.prompt_token_ids is not None and seq._num_hashed_blocks > full:
            for i in range(full, seq._num_hashed_blocks):
                pc.unregister(bt[i])  # a no-op for a block that deduplicated onto another
            seq._num_hashed_blocks = full
            seq._last_key = pc.chain_keys(seq.token_slice(0, full * bs), full)[-1] if full else ROOT_KEY
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
        if len(bt) > keep:
            extra = bt[keep:]
            del bt[keep:]
            self.allocator.free(extra[::-1])

    # ---------------------------------------------------------------- internal
    def _register(self, seq: RequestState, upto: int) -> None:
        """Index the full blocks of ``seq`` whose tokens ``[.., upto)`` are known."""
        bs = self.block_size
        end = min(upto, seq.num_tokens, len(seq.block_table) * bs) // bs
        i = seq._num_hashed_blocks
        if i >= end:
            return
        key, bt, register, tok = seq._last_key, seq.block_table, self.prefix_cache.register, seq.token_slice
        while i < end:
            key = register(bt[i], key, tok(i * bs, (i + 1) * bs))[0]
            i += 1
        seq._num_hashed_blocks = i
        seq._last_key = key


class BlockCountKV:
    """Counts blocks per request for lengths-only requests (cb_lab); no block ids, no sharing."""

    __slots__ = ("block_size", "num_blocks", "_free", "_held")

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        for name, v in (("num_blocks", num_blocks), ("block_size", block_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValidationError(f"{name} must be an int >= 1, got {v!r}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self._free = num_blocks
        self._held: dict = {}  # {request_id: blocks held}

    @property
    def num_free_blocks(self) -> int:
        return self._free

    def usage(self) -> float:
        return 1.0 - self._free / self.num_blocks

    def num_blocks_of(self, seq: RequestState) -> int:
        return self._held.get(seq.request_id, 0)

    def check_fits(self, seq: RequestState) -> None:
        _check_fits(seq, self.block_size, self.num_blocks)

    def match_prefix(self, seq: RequestState) -> int:
        return 0

    def can_allocate(self, seq: RequestState, num_new_tokens: int) -> bool:
        need = -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size) - self._held.get(seq.request_id, 0)
        return need <= self._free

    def allocate(self, seq: RequestState, num_new_tokens: int) -> bool:
        n = _check_new("num_new_tokens", num_new_tokens)
        if seq.request_id in self._held:
            raise StateError(f"request {seq.request_id!r} already holds blocks; use append_slots")
        need = -(-n // self.block_size)
        if need > self._free:
            return False
        self._free -= need
        self._held[seq.request_id] = need
        seq.num_cached_tokens = seq.num_computed_tokens = 0
        return True

    def append_slots(self, seq: RequestState, num_new_tokens: int) -> bool:
        held = self._held.get(seq.request_id, 0)
        need = -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size) - held
        if need > 0:
            if need > self._free:
                return False
            self._free -= need
            self._held[seq.request_id] = held + need
        return True

    def append_decode_slots(self, seqs: list[RequestState]) -> bool:
        k = len(seqs)
        if k > self._free:
            return False
        self._free -= k
        held = self._held
        for s in seqs:
            held[s.request_id] += 1
        return True

    def free(self, seq: RequestState) -> None:
        self._free += self._held.pop(seq.request_id, 0)

    def rollback(self, seq: RequestState, *, release: bool = False) -> None:
        if release:
            self.free(seq)
            return
        held = self._held.get(seq.request_id, 0)
        keep = -(-seq.num_computed_tokens // self.block_size)
        if held > keep:
            self._free += held - keep
            self._held[seq.request_id] = keep


class NullKV:
    """Unlimited KV: every request always fits (the planner then only enforces token budgets)."""

    __slots__ = ()
    block_size = 1 << 62  # decodes never cross a block boundary
    num_free_blocks = 1 << 62

    def usage(self) -> float:
        return 0.0

    def check_fits(self, seq: RequestState) -> None:
        return None

    def match_prefix(self, seq: RequestState) -> int:
        return 0

    def can_allocate(self, seq: RequestState, num_new_tokens: int) -> bool:
        return True

    def allocate(self, seq: RequestState, num_new_tokens: int) -> bool:
        seq.num_cached_tokens = seq.num_computed_tokens = 0
        return True

    def append_slots(self, seq: RequestState, num_new_tokens: int) -> bool:
        return True

    def append_decode_slots(self, seqs: list[RequestState]) -> bool:
        return True

    def free(self, seq: RequestState) -> None:
        return None

    def rollback(self, seq: RequestState, *, release: bool = False) -> None:
        return None
