"""Greedy generation is token-identical to transformers (same GGUF, float32), in every batching regime."""

from __future__ import annotations

import pytest
import torch

from llmds.engine.config import SamplingParams
from llmds.engine.engine import LLMEngine

N = 24


def greedy(n: int = N, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, **kw)


def check_all(outs, prompts, hf_greedy, n=N):
    for out, ids in zip(outs, prompts):
        assert out.output_token_ids == hf_greedy(ids, n), f"request {out.request_id} diverged"
        assert out.prompt_tokens == len(ids)


def test_logprobs_within_1e4_of_transformers(engine, hf, chat_ids):
    model, _ = hf
    ids = chat_ids[1][5]
    out = engine.generate([ids], greedy(4, logprobs=20))[0]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids + out.output_token_ids[:-1]])).logits[0], -1)
    assert len(out.output_logprobs) == 4
    for i, lp in enumerate(out.output_logprobs):
        row = ref[len(ids) - 1 + i]
        assert lp.token_id == out.output_token_ids[i] == int(row.argmax())
        assert abs(lp.logprob - float(row[lp.token_id])) < 1e-4
        ids_top = [t for t, _ in lp.top]
        assert ids_top[0] == lp.token_id
        ref_top = row[ids_top]
        assert torch.allclose(torch.tensor([v for _, v in lp.top]), ref_top, atol=1e-4)


def test_single_prompts(engine, chat_ids, hf_greedy):
    plain, _ = chat_ids
    for ids in plain[:3]:
        check_all(engine.generate([ids], greedy()), [ids], hf_greedy)


def test_eight_prompts_of_different_lengths_together(engine, chat_ids, hf_greedy):
    plain, _ = chat_ids
    assert len({len(p) for p in plain}) >= 6
    check_all(engine.generate(plain, greedy()), plain, hf_greedy)



@pytest.fixture(scope="module")
def chunked_engine():
    return LLMEngine(max_num_seqs=8, max_num_batched_tokens=24, prefill_chunk_size=7, hot_prefix_threshold=0)


def test_prompts_forced_through_small_chunks(chunked_engine, chat_ids, hf_greedy):
    _, shared = chat_ids
    outs = chunked_engine.generate(shared, greedy())
    check_all(outs, shared, hf_greedy)
    assert chunked_engine.metrics.num_steps > max(len(p) for p in shared) // 24


def test_shared_system_prompt_hits_the_prefix_cache(chat_ids, hf_greedy):
    eng = LLMEngine(hot_prefix_threshold=0)
    _, shared = chat_ids
    first = eng.generate([shared[0]], greedy())[0]
    assert first.cached_tokens == 0
    computed_before = eng.metrics.prompt_tokens
    second = eng.generate([shared[1]], greedy())[0]
    bs = eng.config.block_size
    common = next(i for i, (a, b) in enumerate(zip(shared[0], shared[1])) if a != b)
    assert second.cached_tokens == common // bs * bs > 0
    # only the new tokens were computed for the second prompt
    assert eng.metrics.prompt_tokens - computed_before == len(shared[1]) - second.cached_tokens
    check_all([first, second], shared[:2], hf_greedy)
    # the rest together: half hit the cache; all still match
    mixed = [shared[i] if i % 2 else chat_ids[0][i] for i in range(2, 8)]
    check_all(eng.generate(mixed, greedy()), mixed, hf_greedy)


def test_preemption_when_blocks_run_out(chat_ids, hf_greedy):
    plain, _ = chat_ids
    need = sum(-(-(len(p) + N) // 16) for p in plain)
    eng = LLMEngine(num_blocks=need // 2, enable_prefix_caching=False)
    outs = eng.generate(plain, greedy())
    assert eng.metrics.num_preemptions > 0
    check_all(outs, plain, hf_greedy)
    assert eng.block_manager.num_free_blocks == eng.num_blocks
