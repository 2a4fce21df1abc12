"""Seed ``KVCache``: token pages with prefix sharing, copy-on-write and dedup.

Built on the shared block pool (:class:`~llmds.memory.paged_allocator.PagedAllocator`)
and the shared hash-chained prefix index (:class:`~llmds.memory.prefix_cache.PrefixCache`
with ``retain_freed=False``: a page leaves the index with its last reference).

State::

    _data:  [max_pages] page contents; a tuple for a sealed page (full, or the
            tail of a prefix; the same tuple object the index verifies hits
            with), a list for a private page still being written, None when free
    _seqs:  {seq_id: _Seq}; _Seq.pages is the page table (page ids in order)

Layout of one sequence (``ps = page_size``):

* without ``prefix_tokens`` (or with sharing disabled): tokens fill pages in
  order, ``ceil(n / ps)`` pages, only the last one partly filled;
* with ``prefix_tokens`` (sharing enabled): the prefix fills its own pages,
  the last one possibly partial, and the sequence's own tokens start on a
  fresh page.  So every prefix page, the partial tail included, is keyed by
  the whole prefix and shared by all sequences that carry that prefix.

Chain key of page ``i`` = ``hash((key of page i-1, tokens of page i))``
(``ROOT_KEY`` before page 0).  A partial prefix tail is keyed by its shorter
tuple, so it never matches a full page.  Attach walks the chain from page 0,
reuses every indexed page whose tokens are equal (the index verifies tokens,
never trusting a hash alone) and stops at the first miss; the pages it has
to create are registered so later sequences can reuse them.  A page filled
by ``append`` is sealed the same way (or replaced by an identical indexed
page: dedup).

Writes only ever land in a sequence's last page (``append``).  If another
sequence holds that page it is copied first (copy-on-write, ``cow_copies``);
if only this sequence holds it but it is indexed, it is dropped from the
index and written in place (with ``retain_freed=False`` the index entry
would die with the last reference anyway, so a copy would buy nothing).

Tokens are stored by reference (no per-token copies or objects): ``get``
returns a new list, but the token objects themselves are shared, so they
are expected to be immutable values (ints).  Not thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmds._checks import check_int, is_int
from llmds.memory._kv_tokens import as_token_list, unhashable
from llmds.errors import CapacityError, NotFoundError, ValidationError
from llmds.memory.paged_allocator import PagedAllocator
from llmds.memory.prefix_cache import ROOT_KEY, PrefixCache

__all__ = ["KVCache"]


class _Seq:
    """One attached sequence.

    ``last_key`` is the chain key a new page after the last one continues
    from: the last page's key when it is sealed (full, or a prefix tail),
    ``ROOT_KEY`` when there are no pages, None while the last page is open;
    ``parent_key`` is the chain key of the page before the last one
    (``ROOT_KEY`` for a one-page sequence).  Keys are only tracked when
    prefix sharing is enabled.
    """

    __slots__ = ("pages", "num_tokens", "last_len", "parent_key", "last_key")

    def __init__(self, pages: list[int], num_tokens: int, last_len: int,
                 parent_key: int, last_key: int | None) -> None:
        self.pages = pages
        self.num_tokens = num_tokens
        self.last_len = last_len  # tokens in the last page (0 when no pages)
        self.parent_key = parent_key
        self.last_key = last_key


class KVCache:
    """Paged KV cache of token sequences with prefix sharing.

    Parameters
    ----------
    page_size : int
        Tokens per page (> 0).
    max_pages : int
        Pages in the pool (> 0); ``attach``/``append`` raise ``CapacityError``
        (changing nothing) when the pool cannot hold the new pages.
    enable_prefix_sharing : bool
        Reuse indexed pages by reference (hash-chained, token-verified).
        When False every sequence gets private pages in the compact layout.

    Notes
    -----
    Attaching an id that is already attached raises ``ValidationError``
    (detach it first), as in vLLM where a request id is unique.
    """

    __slots__ = (
        "page_size",
        "max_pages",
        "enable_prefix_sharing",
        "_alloc",
        "_prefix",
        "_data",
        "_seqs",
        "_prefix_hits",
        "_prefix_queries",
        "_prefix_shares",
        "_cow_copies",
    )

    def __init__(self, page_size: int = 512, max_pages: int = 10000,
                 enable_prefix_sharing: bool = True) -> None:
        self.page_size = check_int("page_size", page_size, 1)
        self.max_pages = check_int("max_pages", max_pages, 1)
        self.enable_prefix_sharing = bool(enable_prefix_sharing)
        self._alloc = PagedAllocator(self.page_size, self.max_pages)
        self._prefix = PrefixCache(self._alloc, retain_freed=False)
        self._data: list = [None] * self.max_pages
        self._seqs: dict[int, _Seq] = {}
        self._prefix_hits = 0
        self._prefix_queries = 0
        self._prefix_shares = 0
        self._cow_copies = 0

    # ------------------------------------------------------------ read-only views
    @property
    def allocator(self) -> PagedAllocator:
        """The block pool (inspect only: mutating it corrupts the cache)."""
        return self._alloc

    @property
    def prefix_cache(self) -> PrefixCache:
        """The prefix index (inspect only)."""
        return self._prefix

    def page_ids(self, seq_id: int) -> list[int] | None:
        """A copy of the sequence's page table, or None for an unknown id."""
        s = self._seqs.get(check_int("seq_id", seq_id))
        return None if s is None else list(s.pages)

    def __contains__(self, seq_id: object) -> bool:
        return is_int(seq_id) and int(seq_id) in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)

    # ----------------------------------------------------------------- planning
    def _plan_chain(self, toks: list, bounds: list[tuple[int, int]], parent: int):
        """Keys, tuples and the longest indexed run for sealed chunks ``bounds``.

        Returns ``(matched page ids, keys, tuples)``; matching stops at the
        first chunk the index does not hold (later chunks are only keyed).
        Pure: changes nothing.
        """
        matched: list[int] = []
        keys: list[int] = []
        tups: list[tuple] = []
        lookup = self._prefix.lookup
        matching = True
        key = parent
        try:
            for s, e in bounds:
                t = tuple(toks[s:e])
                if matching:
                    p, key = lookup(key, t)
                    if p is None:
                        matching = False
                    else:
                        matched.append(p)
                else:
                    key = hash((key, t))  # == PrefixCache.chain_key(key, t)
                keys.append(key)
                tups.append(t)
        except TypeError as exc:
            raise unhashable(exc) from None
        return matched, keys, tups

    def _place(self, fresh: list[int], m: int, nsealed: int, bounds: list[tuple[int, int]],
               toks: list, keys: list[int], tups: list[tuple], parent: int) -> None:
        """Write chunks ``m..`` of ``bounds`` into ``fresh`` pages; index the sealed ones."""
        data, register = self._data, self._prefix.register
        for i, p in enumerate(fresh, start=m):
            if i < nsealed:
                data[p] = t = tups[i]
                register(p, keys[i - 1] if i else parent, t, keys[i])
            else:
                b0, b1 = bounds[i]
                data[p] = toks[b0:b1]

    def _check_room(self, need: int, what: str) -> None:
        free = self._alloc.num_free
        if need > free:
            raise CapacityError(
                f"{what} needs {need} new pages but only {free} of {self.max_pages} are free; "
                "detach sequences or create the cache with a larger max_pages"
            )

    # --------------------------------------------------------------- public API
    def attach(self, seq_id: int, kv_tokens: Sequence, prefix_tokens: Sequence | None = None) -> None:
        """Store ``kv_tokens`` for a new sequence, sharing indexed pages.

        Parameters
        ----------
        seq_id : int
            New sequence id (0 is valid; bools are rejected).
        kv_tokens : list
            The sequence's tokens (a list, tuple, other sequence, or 1-D array).
        prefix_tokens : list, optional
            A prefix of ``kv_tokens`` shared with other sequences (a system
            prompt, a document): it is laid out on its own pages so they can
            be shared whole, its partial last page included.

        Raises
        ------
        ValidationError
            Bad types, ``seq_id`` already attached, or ``kv_tokens`` does not
            start with ``prefix_tokens``.
        CapacityError
            Not enough free pages; nothing changed.
        """
        sid = check_int("seq_id", seq_id)
        if sid in self._seqs:
            raise ValidationError(f"sequence {sid} is already attached; detach it first")
        toks = as_token_list(kv_tokens, "kv_tokens")
        n = len(toks)
        plen = 0
        if prefix_tokens is not None:
            pre = as_token_list(prefix_tokens, "prefix_tokens")
            plen = len(pre)
            if plen > n or toks[:plen] != pre:
                raise ValidationError(
                    "kv_tokens must start with prefix_tokens "
                    f"(prefix of {plen} tokens, sequence of {n})"
                )
        ps, sharing = self.page_size, self.enable_prefix_sharing
        # chunk bounds: [0, plen) on its own pages (sharing only), then the rest
        start = plen if sharing else 0
        bounds = [(s, min(s + ps, plen)) for s in range(0, start, ps)]
        bounds += [(s, min(s + ps, n)) for s in range(start, n, ps)]
        nb = len(bounds)
        # sealed chunks (sharing only): every full one, plus the prefix's partial tail
        nsealed = nb if sharing else 0
        if nsealed and bounds[-1][1] - bounds[-1][0] < ps and bounds[-1][1] != plen:
            nsealed -= 1  # the sequence's own partial tail stays private and writable
        matched, keys, tups = self._plan_chain(toks, bounds[:nsealed], ROOT_KEY)
        m = len(matched)
        self._check_room(nb - m, f"attaching sequence {sid}")
        # ---- mutate (nothing below can fail)
        if sharing:
            self._prefix_queries += 1
            if m:
                self._prefix.acquire(matched)
                self._prefix_hits += 1
                self._prefix_shares += m
        fresh = self._alloc.alloc(nb - m)
        self._place(fresh, m, nsealed, bounds, toks, keys, tups, ROOT_KEY)
        last_len = bounds[-1][1] - bounds[-1][0] if nb else 0
        parent = keys[nb - 2] if sharing and nb >= 2 else ROOT_KEY
        if nb == 0:
            last_key = ROOT_KEY  # an empty sequence: its first page chains from the root
        else:
            last_key = keys[nb - 1] if sharing and nsealed == nb else None
        self._seqs[sid] = _Seq(matched + fresh, n, last_len, parent, last_key)

    def append(self, seq_id: int, tokens: Sequence) -> None:
        """Append ``tokens`` to an attached sequence.

        Fills the last page first (copying it first if another sequence holds
        it: copy-on-write), then new pages.  A page that becomes full is
        sealed into the prefix index, or swapped for an identical indexed page.

        Raises
        ------
        NotFoundError
            ``seq_id`` is not attached.
        CapacityError
            Not enough free pages; nothing changed.
        """
        sid = check_int("seq_id", seq_id)
        s = self._seqs.get(sid)
        if s is None:
            raise NotFoundError(f"sequence {sid} is not attached; attach it first")
        toks = as_token_list(tokens, "tokens")
        n = len(toks)
        if n == 0:
            return
        ps, sharing = self.page_size, self.enable_prefix_sharing
        alloc, prefix, data = self._alloc, self._prefix, self._data
        last = s.pages[-1] if s.pages else -1
        take = min(ps - s.last_len, n) if s.pages and s.last_len < ps else 0
        cow = take > 0 and alloc.refcount(last) > 1
        # plan the partly filled last page
        fill_key = s.last_key
        fill_tup = None
        dedup = None  # an indexed page identical to the filled last page
        if take and sharing:
            fill_key = None
            if s.last_len + take == ps:
                fill_tup = tuple(data[last]) + tuple(toks[:take])
                try:  # an identical indexed page (dedup) is never `last`: that one is partial
                    dedup, fill_key = prefix.lookup(s.parent_key, fill_tup)
                except TypeError as exc:
                    raise unhashable(exc) from None
        # plan the new pages: full ones sealed (and matched), a partial tail private
        bounds = [(i, min(i + ps, n)) for i in range(take, n, ps)]
        nsealed = len(bounds) if sharing else 0
        if nsealed and bounds[-1][1] - bounds[-1][0] < ps:
            nsealed -= 1
        matched, keys, tups = self._plan_chain(toks, bounds[:nsealed], fill_key)
        m = len(matched)
        self._check_room(
            (1 if cow and dedup is None else 0) + len(bounds) - m,
            f"appending {n} tokens to sequence {sid}",
        )
        # ---- mutate (nothing below can fail)
        if take:
            if dedup is not None:
                prefix.acquire([dedup])
                self._release([last])
                s.pages[-1] = dedup
                self._prefix_shares += 1
            else:
                if cow:
                    new = alloc.alloc(1)[0]
                    data[new] = list(data[last])  # the copy
                    self._release([last])
                    s.pages[-1] = last = new
                    self._cow_copies += 1
                elif prefix.is_indexed(last):
                    prefix.unregister(last)  # sole holder: write in place
                if fill_tup is not None:  # now full: store it sealed
                    data[last] = fill_tup
                    prefix.register(last, s.parent_key, fill_tup, fill_key)
                else:
                    page = data[last]
                    if type(page) is not list:
                        page = data[last] = list(page)
                    page += toks[:take]
            s.last_len += take
            s.last_key = fill_key
        if bounds:
            if m:
                prefix.acquire(matched)
                self._prefix_shares += m
            fresh = alloc.alloc(len(bounds) - m)
            self._place(fresh, m, nsealed, bounds, toks, keys, tups, fill_key)
            nb = len(bounds)
            s.parent_key = (keys[nb - 2] if nb >= 2 else fill_key) if sharing else ROOT_KEY
            s.last_key = keys[nb - 1] if sharing and nsealed == nb else None
            s.pages += matched
            s.pages += fresh
            s.last_len = bounds[-1][1] - bounds[-1][0]
        s.num_tokens += n

    def get(self, seq_id: int) -> list | None:
        """A new list of the sequence's tokens, or None for an unknown id.

        O(pages) list extends; mutating the result never changes the cache.
        """
        sid = check_int("seq_id", seq_id)
        s = self._seqs.get(sid)
        if s is None:
            return None
        data = self._data
        out: list = []
        for p in s.pages:
            out += data[p]
        return out

    def detach(self, seq_id: int) -> None:
        """Drop the sequence; pages are freed when their last holder goes. Unknown id: no-op."""
        sid = check_int("seq_id", seq_id)
        s = self._seqs.pop(sid, None)
        if s is not None and s.pages:
            self._release(s.pages)

    def _release(self, pages: list[int]) -> None:
        alloc, data = self._alloc, self._data
        before = alloc.num_free
        self._prefix.free(pages)
        if alloc.num_free - before == len(pages):  # all released (common: nothing shared)
            for p in pages:
                data[p] = None
            return
        ref = alloc.refcount
        for p in pages:
            if ref(p) == 0:
                data[p] = None  # drop the content with the last reference

    def defragment(self) -> dict[int, int]:
        """Compact live pages to the front of the pool, moving their contents.

        Applies the allocator's move plan ``{old_id: new_id}`` to the page
        storage, every page table and the prefix index, and returns it.
        O(max_pages + total pages held).
        """
        plan = self._alloc.defragment()
        if plan:
            data = self._data
            moved = [(new, data[old]) for old, new in plan.items()]
            for old in plan:
                data[old] = None
            for new, d in moved:
                data[new] = d
            get = plan.get
            for s in self._seqs.values():
                s.pages = [get(p, p) for p in s.pages]
            self._prefix.remap(plan)
        return plan

    def stats(self) -> dict:
        """Cache statistics.

        ``prefix_queries``: attaches that consulted the index; ``prefix_hits``:
        those that reused at least one page; ``prefix_shares``: pages reused
        by reference (attach, append dedup); ``shared_pages_count``: pages
        held by more than one sequence now; ``total_page_refs``: sum of
        refcounts; ``cow_copies``: pages copied before a write.
        """
        st = self._alloc.stats()
        return {
            "total_sequences": len(self._seqs),
            "total_tokens": sum(s.num_tokens for s in self._seqs.values()),
            "page_size": self.page_size,
            "total_pages": st.total_pages,
            "allocated_pages": st.allocated_pages,
            "free_pages": st.free_pages,
            "shared_pages_count": st.shared_pages,
            "total_page_refs": st.total_refs,
            "indexed_pages": len(self._prefix),
            "prefix_shares": self._prefix_shares,
            "prefix_hits": self._prefix_hits,
            "prefix_queries": self._prefix_queries,
            "cow_copies": self._cow_copies,
            "fragmentation_ratio": st.fragmentation_ratio,
        }
