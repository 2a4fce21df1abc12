"""Sketches: approximate counting in fixed memory.

    cmsketch       CountMinSketch: never under-counts; stable hashes, so sketches merge
    _cms_kernels   its hashing and counting loops (numba)
    heavy_hitters  HeavyHitters: the most frequent items, on a CountMinSketch and an IndexedHeap

Used by the engine's hot-prefix pinning and the retrieval pipeline's hit counts.  The seed path
``llmds.cmsketch`` re-exports ``cmsketch``.
"""
