"""GGUF weights served as they are: each block format's mapping onto torch's int4 kernel, exactly,
against ``gguf.quants.dequantize``; the int4 and dequantize-then-dense paths; Q8_0 embedding rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from tests.engine.gguf_fixture import encode_q4_k, encode_q6_k

from llmds.engine.models.linear import Q8Embedding
from llmds.engine.models.quant import GROUP, Int4Linear, gguf_int4


def _weights(rows=128, cols=512, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32) * 0.05


def _encoded(fmt, w):
    return encode_q4_k(w) if fmt == "Q4_K" else quantize(w, T[fmt])


def _int4_value(q, scale, zero):
    return (q.astype(np.float32) - 8) * np.repeat(scale, GROUP, 1) + np.repeat(zero, GROUP, 1)


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q4_K"])
def test_block_formats_map_exactly_onto_the_int4_form(fmt):
    w = _weights()
    raw = _encoded(fmt, w)
    ref = dequantize(raw, T[fmt]).reshape(w.shape)
    q, scale, zero = gguf_int4(raw.reshape(-1), fmt, *w.shape)
    assert q.dtype == np.uint8 and q.max() <= 15
    np.testing.assert_allclose(_int4_value(q, scale, zero), ref, rtol=1e-6, atol=1e-7)


def test_formats_without_an_exact_int4_form_are_refused():
    w = _weights()
    assert gguf_int4(quantize(w, T.Q8_0).reshape(-1), "Q8_0", *w.shape) is None
    assert gguf_int4(encode_q6_k(w).reshape(-1), "Q6_K", *w.shape) is None
    np.testing.assert_allclose(dequantize(encode_q6_k(w), T.Q6_K).reshape(w.shape), w, atol=0.01)  # the encoder


@pytest.mark.parametrize("fmt", ["Q4_1", "Q4_K"])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_int4_linear_matches_the_dequantized_weight(fmt, rows):
    """One row runs the int4 kernel, more run dequantize + dense (max_rows=1): both compute with the
    weight whose scale and zero are rounded to bfloat16."""
    w = _weights(192, 512, seed=rows)
    q, scale, zero = gguf_int4(_encoded(fmt, w).reshape(-1), fmt, *w.shape)
    lin = Int4Linear(q, scale, zero, torch.bfloat16, max_rows=1, scratch={})
    as_kernel = _int4_value(q, *(torch.from_numpy(a).bfloat16().float().numpy() for a in (scale, zero)))
    np.testing.assert_array_equal(lin.dequantize().float().numpy(),
                                  torch.from_numpy(as_kernel).bfloat16().float().numpy())
    x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows)).bfloat16()
    got = lin(x).float()
    ref = x.float() @ torch.from_numpy(as_kernel).T
    assert got.shape == (rows, 192)
    assert torch.allclose(got, ref, rtol=0.02, atol=0.02 * ref.abs().max().item())


def test_scratch_is_shared_by_weights_of_one_shape():
    scratch: dict = {}
    a = Int4Linear(*gguf_int4(quantize(_weights(seed=1), T.Q4_0).reshape(-1), "Q4_0", 128, 512), torch.bfloat16, 0,
                   scratch)
    b = Int4Linear(*gguf_int4(quantize(_weights(seed=2), T.Q4_0).reshape(-1), "Q4_0", 128, 512), torch.bfloat16, 0,
                   scratch)
    assert a.dequantize() is b.dequantize() and len(scratch) == 1


def test_q8_0_embedding_rows_are_the_dequantized_rows():
    w = _weights(300, 256)
    raw = quantize(w, T.Q8_0).reshape(300, 8, 34)
    values = np.ascontiguousarray(raw[:, :, 2:]).view(np.int8)
    scales = np.ascontiguousarray(raw[:, :, :2]).view(np.float16)[..., 0].astype(np.float32)
    ref = dequantize(quantize(w, T.Q8_0), T.Q8_0).reshape(300, 256)
    ids = torch.tensor([0, 299, 17, 17])
    for dtype in (torch.float32, torch.bfloat16):
        got = Q8Embedding(values, scales, dtype)(ids)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.float().numpy(), torch.from_numpy(ref[ids.numpy()]).to(dtype).float().numpy())
