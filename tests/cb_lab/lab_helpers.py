"""Shared helpers of the cb_lab tests: prompts, a max-abs comparison, isolated reference runs."""

from __future__ import annotations

import torch

from cb_lab.core.kv_cache import DenseKVCache
from cb_lab.model.tiny_llm import TinyLLM

DIM = 16


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Max-abs comparison (torch.testing.assert_close costs seconds of imports on first use)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


def _prompts(seed: int, lengths):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, DIM, generator=g) for n in lengths]


def isolated_outputs(model: TinyLLM, prompt: torch.Tensor, max_new: int) -> torch.Tensor:
    """Reference: one request alone, dense full prefill, then decode over a DenseKVCache."""
    if max_new == 0:
        return prompt.new_empty(0, DIM)
    out, k, v = model.forward_prefill_dense(prompt)
    cache = DenseKVCache()
    cache.append(k, v)
    toks = [out[-1]]
    for _ in range(max_new - 1):
        o, k1, v1 = model.forward_decode(toks[-1], cache)
        cache.append(k1, v1)
        toks.append(o[0])
    return torch.stack(toks)


def run_scheduler(sched, requests, arrivals=None, max_steps=500):
    """Add requests at their arrival step (default all at step 0) and run to completion."""
    arrivals = arrivals or [0] * len(requests)
    pending = sorted(zip(arrivals, range(len(requests))))
    stats, step = [], 0
    while pending or sched.active:
        while pending and pending[0][0] <= step:
            sched.add_request(requests[pending.pop(0)[1]])
        stats.append(sched.step())
        step += 1
        assert step < max_steps
    return stats
