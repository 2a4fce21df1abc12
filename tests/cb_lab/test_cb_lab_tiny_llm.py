"""TinyLLM: seeded weights, ragged prefill = dense prefill, decode over a cache, bad input."""

from __future__ import annotations

import pytest
import torch
from lab_helpers import DIM, _prompts, assert_close

from cb_lab.core.batch_builder import build_ragged_batch
from cb_lab.core.kv_cache import DenseKVCache
from cb_lab.exceptions import ValidationError
from cb_lab.model.tiny_llm import TinyLLM
from llmds import errors

def test_tiny_llm_is_seeded():
    a, b, c = TinyLLM(16, seed=1), TinyLLM(16, seed=1), TinyLLM(16, seed=2)
    assert torch.equal(a.wq, b.wq) and torch.equal(a.wo, b.wo)
    assert not torch.equal(a.wq, c.wq)


def test_ragged_prefill_equals_dense_per_request():
    model = TinyLLM(DIM, num_heads=2)
    pa, pb, pc = _prompts(0, [5, 3, 7])
    tokens, _, mask = build_ragged_batch([("a", 0, pa), ("b", 0, pb), ("c", 0, pc)])
    out, k, v = model.forward_prefill_ragged(tokens, mask)
    for (s, e), p in zip([(0, 5), (5, 8), (8, 15)], (pa, pb, pc)):
        od, kd, vd = model.forward_prefill_dense(p)
        assert_close(out[s:e], od, atol=1e-6)
        assert_close(k[s:e], kd, atol=1e-6)


def test_decode_attends_to_itself_and_the_cache():
    """Decode of the last prompt token over the cache of the others equals the dense last row."""
    model = TinyLLM(DIM)
    (p,) = _prompts(1, [6])
    od, kd, vd = model.forward_prefill_dense(p)
    cache = DenseKVCache()
    cache.append(kd[:5], vd[:5])
    o, k1, v1 = model.forward_decode(p[5], cache)
    assert_close(o[0], od[5], atol=1e-6)
    assert_close(k1[0], kd[5], atol=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.forward_prefill_dense(torch.randn(3, 8)),
        lambda m: m.forward_prefill_dense(torch.randn(3, 16, dtype=torch.float64)),
        lambda m: m.forward_prefill_ragged(torch.randn(3, 16), torch.ones(3, 2, dtype=torch.bool)),
        lambda m: m.forward_prefill_ragged(torch.randn(3, 16), torch.ones(3, 3)),
        lambda m: m.forward_decode(torch.randn(2, 16), DenseKVCache()),
        lambda m: TinyLLM(dim=0),
        lambda m: TinyLLM(dim=16, num_heads=3),
    ],
)
def test_model_rejects_bad_input(call):
    with pytest.raises(ValidationError) as ei:
        call(TinyLLM(16))
    assert isinstance(ei.value, errors.ValidationError) and isinstance(ei.value, ValueError)
