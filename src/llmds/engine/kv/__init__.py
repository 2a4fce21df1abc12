"""KV cache: who holds which blocks, and the tensors the blocks address.

    block_manager.py  BlockManager: block tables, prefix caching, pins (THE owner of tables)
    placement.py      which blocks a table gets: the free list's order (FreeListPlacement)
    kv_manager.py     KVManager (what the planner needs from it), NullKV, capacity checks
    hot_prefix.py     HotPrefixes: counts prompt prefixes, pins the hot ones
    storage.py        KVStorage: per-layer K/V block tensors addressed by block ids
"""
