"""Parallel sampling (``n > 1``): the prompt is computed once, its blocks are shared through the
block manager's reference counts with the partial last block copied (copy-on-write), every
sequence samples as the same request with ``seed + index`` would alone, and nothing leaks.
Also ``logit_bias`` and ``generate()``'s whole text."""

from __future__ import annotations

import pytest

from llmds.engine.config import SamplingParams
from llmds.engine.engine import LLMEngine
from llmds.errors import ValidationError

MSGS = [{"role": "user", "content": "Write a haiku about caches."}]


@pytest.fixture(scope="module")
def eng():
    return LLMEngine(num_blocks=64, max_num_seqs=8, max_num_batched_tokens=256, hot_prefix_threshold=0)


def assert_idle(eng):
    assert not eng.has_unfinished_requests()
    assert eng.block_manager.num_free_blocks == eng.num_blocks
    alloc = eng.block_manager.allocator
    assert sum(alloc.refcount(p) for p in range(eng.num_blocks)) == 0


def test_each_sequence_samples_as_the_request_with_seed_plus_index_would_alone(eng):
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=12)
    outs = eng.generate([MSGS], params)
    assert [o.index for o in outs] == [0, 1, 2, 3] and [o.request_finished for o in outs].count(True) == 1
    alone = [eng.generate([MSGS], SamplingParams(temperature=1.0, seed=7 + i, max_tokens=12))[0] for i in range(4)]
    # same tokens: the forked KV (shared full blocks, the copied last block) equals a computed one
    assert [o.output_token_ids for o in outs] == [o.output_token_ids for o in alone]
    assert len({tuple(o.output_token_ids) for o in outs}) > 1
    assert [o.text for o in eng.generate([MSGS], params)] == [o.text for o in outs]  # reproducible
    assert_idle(eng)


def test_the_prompt_is_prefilled_once_and_its_blocks_held_once(eng):
    msgs = [{"role": "user", "content": "Name a colour, any colour at all."}]  # not cached yet
    prompt = eng.encode_prompt(msgs)
    assert len(prompt) % 16, "the prompt must end in a partial block for the copy to happen"
    before = eng.metrics.prompt_tokens
    rid = eng.add_request(msgs, SamplingParams(n=8, temperature=1.0, seed=1, max_tokens=2, ignore_eos=True))
    eng.step()  # the prefill, once; then 8 sequences share its full blocks, each with its own last block
    computed = eng.metrics.prompt_tokens - before
    assert computed == len(prompt) - 16  # the chat template's first block was cached already
    seqs = [s for s in eng.planner.running]
    assert len(seqs) == 8
    full = len(prompt) // 16
    shared = seqs[0].block_table[:full]
    assert all(s.block_table[:full] == shared for s in seqs)
    alloc = eng.block_manager.allocator
    assert [alloc.refcount(b) for b in shared] == [8] * full
    assert len({s.block_table[full] for s in seqs}) == 8
    assert eng.num_blocks - eng.block_manager.num_free_blocks == full + 8
    eng.step()
    assert eng.metrics.prompt_tokens - before == computed
    while eng.has_unfinished_requests():
        eng.step()
    assert rid not in eng._groups
    assert_idle(eng)


def test_streaming_outputs_carry_the_index_and_the_last_finishes_the_request(eng):
    rid = eng.add_request(MSGS, SamplingParams(n=3, temperature=1.0, seed=3, max_tokens=4))
    outs = []
    while eng.has_unfinished_requests():
        outs += eng.step()
    assert {o.request_id for o in outs} == {rid} and {o.index for o in outs} == {0, 1, 2}
    finals = [o for o in outs if o.finished]
    assert len(finals) == 3 and [o.request_finished for o in finals] == [False, False, True]
    for i in range(3):
        mine = [o for o in outs if o.index == i]
        assert "".join(o.text for o in mine) == mine[-1].output_text
    assert eng.metrics.requests_finished.get("length", 0) + eng.metrics.requests_finished.get("stop", 0) > 0
    assert_idle(eng)


def test_abort_ends_every_sequence_and_frees_the_blocks(eng):
    rid = eng.add_request(MSGS, SamplingParams(n=4, temperature=1.0, max_tokens=50, ignore_eos=True))
    eng.step()
    eng.step()
    assert len(eng.planner.running) == 4
    assert eng.abort(rid) and not eng.abort(rid)
    assert_idle(eng)


def test_n_needs_seats_and_max_tokens_zero_gives_n_empty_outputs(eng):
    with pytest.raises(ValidationError, match="max_num_seqs=8"):
        eng.add_request(MSGS, SamplingParams(n=9))
    outs = eng.generate(["hi"], SamplingParams(n=3, max_tokens=0))
    assert [(o.index, o.output_text, o.finish_reason) for o in outs] == [(0, "", "length"), (1, "", "length"),
                                                                          (2, "", "length")]
    assert_idle(eng)


def test_sequences_wait_for_blocks_when_the_pool_is_short():
    """A pool too small for every sequence at once: they are preempted and recomputed (through the
    prefix cache), and still sample what they would alone."""
    small = LLMEngine(num_blocks=8, max_num_seqs=4, max_num_batched_tokens=64, hot_prefix_threshold=0)
    params = SamplingParams(n=4, temperature=1.0, seed=11, max_tokens=30, ignore_eos=True)
    outs = small.generate(["Once upon a time"], params)
    assert small.metrics.num_preemptions > 0
    alone = [small.generate(["Once upon a time"], SamplingParams(temperature=1.0, seed=11 + i, max_tokens=30,
                                                                  ignore_eos=True))[0] for i in range(4)]
    assert [o.output_token_ids for o in outs] == [o.output_token_ids for o in alone]
    assert_idle(small)


def test_logit_bias_bans_and_forces_tokens(eng):
    tok = eng.tokenizer
    paris = tok.encode(" Paris")[0]
    greedy = SamplingParams(temperature=0, max_tokens=4)
    plain = eng.generate("The capital of France is", greedy)[0]
    assert plain.output_token_ids[0] == paris
    banned = eng.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=4,
                                                                     logit_bias={paris: -100}))[0]
    assert paris not in banned.output_token_ids
    banana = tok.encode(" banana")[0]
    forced = eng.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=3,
                                                                     logit_bias={banana: 100}))[0]
    assert forced.output_token_ids == [banana] * 3
    assert forced.output_logprobs is None
    with pytest.raises(ValidationError, match="logit_bias"):
        eng.add_request("hi", SamplingParams(logit_bias={tok.vocab_size: 1.0}))
    with pytest.raises(ValidationError, match="logit_bias"):
        SamplingParams(logit_bias={1: 101.0})
    assert SamplingParams(logit_bias={5: 1, 2: -1.5}).logit_bias == ((2, -1.5), (5, 1.0))
    assert_idle(eng)


def test_generate_returns_the_whole_text_in_text(eng):
    out = eng.generate("The three laws of robotics are", SamplingParams(temperature=0, max_tokens=12))[0]
    assert out.text == out.output_text and len(out.output_token_ids) > 1
    assert out.text == eng.tokenizer.decode(out.output_token_ids)
