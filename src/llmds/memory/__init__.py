"""Memory: the one block pool, the one prefix index, and the structures on them.

    paged_allocator  PagedAllocator: pages with ref counts on an O(1) intrusive free list,
                     cached pages reclaimed least recently freed first (THE block pool)
    prefix_cache     PrefixCache: the hash-chained full-block prefix index (THE prefix index)
    kv_cache         the seed KVCache: token pages with prefix sharing, copy-on-write, dedup
    token_lru        TokenLRU: an LRU bounded by a token budget
    _runs            runs of True in a boolean mask (free runs, fragmentation)
    _kv_tokens       KVCache's token-sequence checks

The engine's block manager (``llmds.engine.kv``) and the seed ``KVCache`` both allocate from
``PagedAllocator`` and share prefixes through ``PrefixCache``.  The seed paths
``llmds.paged_allocator``, ``llmds.kv_cache`` and ``llmds.token_lru`` re-export these modules.
"""
