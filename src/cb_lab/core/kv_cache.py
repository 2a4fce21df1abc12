"""KV caches of cb_lab (defined in :mod:`llmds.engine.paged_kv`).

``DenseKVCache`` keeps contiguous, doubling buffers; ``PagedKVCache`` keeps its
rows in the blocks of a ``TensorKVCache`` on the shared ``PagedAllocator``
(``pool=`` to share one pool between requests).
"""

from llmds.engine.paged_kv import BaseKVCache, DenseKVCache, PagedKVCache

__all__ = ["BaseKVCache", "DenseKVCache", "PagedKVCache"]
