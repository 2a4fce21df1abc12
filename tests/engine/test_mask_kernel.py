"""apply_token_bitmask against numpy: the bits unpacked, the forbidden logits -inf, the rest untouched."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.engine._mask_kernel import apply_token_bitmask


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), width=st.sampled_from([31, 64, 97, 300]), pad=st.integers(0, 20))
def test_forbidden_tokens_and_padding_become_minus_inf(seed, width, pad):
    rng = np.random.default_rng(seed)
    n = 7
    x = rng.standard_normal((n, width)).astype(np.float32)
    rows = rng.permutation(n)[: rng.integers(1, n + 1)]  # distinct rows, in any order
    vocab = max(1, width - pad)
    words = (width + 31) // 32
    kinds = rng.integers(0, 3, (len(rows), words))  # all allowed, none, mixed words
    bits = np.where(kinds == 0, -1, np.where(kinds == 1, 0, rng.integers(-2**31, 2**31 - 1, (len(rows), words))))
    bits = bits.astype(np.int32)
    want = x.copy()
    for j, r in enumerate(rows):
        allowed = ((bits[j].view(np.uint32)[:, None] >> np.arange(32, dtype=np.uint32)) & 1).ravel()[:width] == 1
        allowed[vocab:] = False
        want[r, ~allowed] = -np.inf
    apply_token_bitmask(x, rows.astype(np.int64), bits, vocab)
    assert np.array_equal(x, want)
