"""Hash-chained prefix index over pages of a ``PagedAllocator``.

One implementation, used by the seed ``KVCache`` and by the engine's block
manager.  Page ``i`` of a token sequence is keyed by

    key_i = hash((key_{i-1}, tokens of page i)),   key_{-1} = ROOT_KEY

so a key names the *whole* prefix up to and including that page, not just
the page's own tokens.  Keys are Python tuple hashes: stable across
processes for integer token ids (int and tuple hashing is not salted).

Index state (every indexed page is immutable: owners copy before writing)::

    _page_of:   {key: page_id}
    _key_of:    {page_id: key}
    _tokens_of: {page_id: tuple of the page's tokens}   # verifies every hit

With ``retain_freed=True`` (engine) an indexed page whose refcount falls to 0
stays indexed on the allocator's free list, marked cached, so a later request
with the same prefix can take it back; the allocator reclaims such pages LRU
(least recently freed first) only when it runs out of never-cached pages and
then calls back into :meth:`_on_reclaim`.  With ``retain_freed=False`` (seed
``KVCache``) a page leaves the index when its last reference is freed.
"""

from __future__ import annotations

from typing import Sequence

from llmds.errors import StateError, ValidationError
from llmds.memory.paged_allocator import PagedAllocator

__all__ = ["ROOT_KEY", "PrefixCache", "prefix_keys"]

ROOT_KEY = 0x6C6C6D6473  # parent key of a sequence's first page


def prefix_keys(tokens: Sequence, page_size: int, num_pages: int | None = None,
                parent_key: int = ROOT_KEY) -> list[int]:
    """Chain keys of the first ``num_pages`` full pages of ``tokens`` (default: every full page).

    The one definition of a prefix's key: the index, the hot-prefix counts and the replica
    router (:mod:`llmds.server.routing`) all call it, so the same prefix has the same key in
    every process.
    """
    n = len(tokens) // page_size if num_pages is None else num_pages
    out = []
    key = parent_key
    for i in range(n):
        key = hash((key, tuple(tokens[i * page_size : (i + 1) * page_size])))
        out.append(key)
    return out


class PrefixCache:
    """Prefix index shared by every owner of one allocator.

    Parameters
    ----------
    allocator : PagedAllocator
        The pool; this index installs itself as the allocator's ``on_reclaim``.
    retain_freed : bool
        Keep freed indexed pages reusable until the allocator reclaims them.
    """

    __slots__ = (
        "allocator",
        "page_size",
        "retain_freed",
        "_page_of",
        "_key_of",
        "_tokens_of",
        "_pins",
        "evictions",
    )

    def __init__(self, allocator: PagedAllocator, retain_freed: bool = True) -> None:
        if not isinstance(allocator, PagedAllocator):
            raise ValidationError("allocator must be a PagedAllocator")
        if allocator.on_reclaim is not None:
            raise ValidationError("this allocator already has a reclaim owner (one PrefixCache per pool)")
        allocator.on_reclaim = self._on_reclaim
        self.allocator = allocator
        self.page_size = allocator.page_size
        self.retain_freed = bool(retain_freed)
        self._page_of: dict[int, int] = {}
        self._key_of: dict[int, int] = {}
        self._tokens_of: dict[int, tuple] = {}
        self._pins: dict[int, int] = {}  # {page_id: pin count}
        self.evictions = 0

    # ----------------------------------------------------------------- lookup
    @staticmethod
    def chain_key(parent_key: int, tokens: tuple) -> int:
        return hash((parent_key, tokens))

    def lookup(self, parent_key: int, tokens: tuple) -> tuple[int | None, int]:
        """``(page_id or None, key)`` of the page holding ``tokens`` after ``parent_key``."""
        key = hash((parent_key, tokens))
        p = self._page_of.get(key)
        if p is not None and self._tokens_of[p] != tokens:
            p = None  # hash collision: never trust a hash alone
        return p, key

    def match(self, tokens: Sequence, max_pages: int | None = None) -> tuple[list[int], int]:
        """Longest chain of indexed *full* pages holding a prefix of ``tokens``.

        Returns ``(page_ids, key of the last matched page or ROOT_KEY)``.
        Takes no references: call :meth:`acquire` on the pages you keep.
        """
        ps = self.page_size
        n = len(tokens) // ps
        if max_pages is not None:
            n = min(n, max_pages)
        out: list[int] = []
        key = ROOT_KEY
        page_of, tokens_of = self._page_of, self._tokens_of
        for i in range(n):
            t = tuple(tokens[i * ps : (i + 1) * ps])
            k = hash((key, t))
            p = page_of.get(k)
            if p is None or tokens_of[p] != t:
                break
            out.append(p)
            key = k
        return out, key

    def chain_keys(self, tokens: Sequence, num_pages: int, parent_key: int = ROOT_KEY) -> list[int]:
        """Keys of the first ``num_pages`` full pages of ``tokens`` (no lookup)."""
        return prefix_keys(tokens, self.page_size, num_pages, parent_key)

    def keys(self) -> list[int]:
        """The chain keys of every indexed page (in use or cached free), in no order."""
        return list(self._page_of)

    # --------------------------------------------------------------- ownership
    def acquire(self, page_ids: Sequence[int]) -> None:
        """Take one reference to each matched page (a free cached page is taken back)."""
        alloc = self.allocator
        for p in page_ids:  # validate all first: an error changes nothing
            if p not in self._key_of:
                raise StateError(f"page {p} is not in the prefix index")
        live = []
        for p in page_ids:
            if alloc.is_free(p):
                alloc.take(p)
            else:
                live.append(p)
        if live:
            alloc.incref(live)

    def register(self, page_id: int, parent_key: int, tokens: tuple,
                 key: int | None = None) -> tuple[int, bool]:
        """Index an allocated page as holding ``tokens`` after ``parent_key``.

        Returns ``(key, registered)``; ``registered`` is False when the key
        already names another page (same content: the first one stays canonical).
        From here on the page is immutable.  ``key``, if given, must be
        ``chain_key(parent_key, tokens)`` (as returned by :meth:`lookup`); it
        saves hashing the page's tokens a second time.
        """
        if self.allocator.is_free(page_id):
            raise StateError(f"page {page_id} is free; allocate it before registering it")
        if key is None:
            key = hash((parent_key, tokens))
        other = self._page_of.get(key)
        if other is not None:
            return key, other == page_id
        if page_id in self._key_of:
            raise StateError(f"page {page_id} is already indexed under another prefix")
        self._page_of[key] = page_id
        self._key_of[page_id] = key
        self._tokens_of[page_id] = tokens
        if self.retain_freed:
            self.allocator.mark_cached(page_id)
        return key, True

    def free(self, page_ids: Sequence[int]) -> None:
        """Drop one reference to each page; unindex pages that reach 0 unless retained."""
        alloc = self.allocator
        alloc.free(page_ids)
        if not self.retain_freed:
            key_of = self._key_of
            for p in page_ids:
                if p in key_of and alloc.refcount(p) == 0:
                    self._unindex(p)

    def is_indexed(self, page_id: int) -> bool:
        return page_id in self._key_of

    def key_of(self, page_id: int) -> int | None:
        return self._key_of.get(page_id)

    def tokens_of(self, page_id: int) -> tuple | None:
        return self._tokens_of.get(page_id)

    def unregister(self, page_id: int) -> None:
        """Remove a page from the index (its refcount is untouched)."""
        if page_id in self._key_of:
            self._unindex(page_id)
            self.allocator.unmark_cached(page_id)

    # ----------------------------------------------------------------- pinning
    def pin(self, page_ids: Sequence[int]) -> None:
        """Hold an extra reference so these indexed pages are never evicted."""
        self.acquire(page_ids)
        for p in page_ids:
            self._pins[p] = self._pins.get(p, 0) + 1

    def unpin(self, page_ids: Sequence[int]) -> None:
        want: dict[int, int] = {}
        for p in page_ids:  # count repeats so [p, p] needs two pins
            want[p] = want.get(p, 0) + 1
            if self._pins.get(p, 0) < want[p]:
                raise StateError(f"page {p} is not pinned (or pinned fewer times than unpinned)")
        for p in page_ids:
            c = self._pins[p] - 1
            if c:
                self._pins[p] = c
            else:
                del self._pins[p]
        self.free(page_ids)

    def is_pinned(self, page_id: int) -> bool:
        return page_id in self._pins

    def pinned_pages(self) -> list[int]:
        """Ids of the pinned pages, in no order."""
        return list(self._pins)

    @property
    def num_pinned(self) -> int:
        return len(self._pins)

    # ------------------------------------------------------------- maintenance
    def remap(self, plan: dict[int, int]) -> None:
        """Apply an allocator ``defragment()`` move plan ``{old: new}`` to the index."""
        if not plan:
            return
        moved = [(old, new) for old, new in plan.items() if old in self._key_of]
        entries = [(new, self._key_of.pop(old), self._tokens_of.pop(old)) for old, new in moved]
        pins = {plan.get(p, p): c for p, c in self._pins.items()}
        for new, key, toks in entries:
            self._key_of[new] = key
            self._tokens_of[new] = toks
            self._page_of[key] = new
        self._pins = pins

    def clear(self) -> None:
        """Unindex every free cached page (live pages stay indexed)."""
        self.allocator.evict_cached()

    def __contains__(self, key: int) -> bool:
        """Is a page indexed under chain key ``key`` (see :func:`prefix_keys`)?"""
        return key in self._page_of

    def __len__(self) -> int:
        return len(self._key_of)

    # ---------------------------------------------------------------- internal
    def _unindex(self, p: int) -> None:
        key = self._key_of.pop(p)
        del self._tokens_of[p]
        if self._page_of.get(key) == p:
            del self._page_of[key]

    def _on_reclaim(self, p: int) -> None:
        # the allocator is reusing a free cached page for new content
        if p in self._key_of:
            self._unindex(p)
            self.evictions += 1
