"""LLMEngine behaviour: inputs, outputs, stop handling, aborts, seeds, and no leaked block ever."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.engine.config import EngineConfig, SamplingParams
from llmds.engine.engine import LLMEngine
from llmds.errors import CapacityError, ValidationError

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def small():
    """Few blocks and seqs, so preemption and queueing happen; no hot-prefix pins."""
    return LLMEngine(num_blocks=48, max_num_seqs=4, max_num_batched_tokens=64, hot_prefix_threshold=0)


def held_refs(eng):
    """References held on blocks, and the refs the live requests' tables account for."""
    alloc = eng.block_manager.allocator
    refs = sum(alloc.refcount(p) for p in range(eng.num_blocks))
    tables = sum(len(s.block_table) for s in eng.planner.running)
    return refs, tables


def assert_idle(eng):
    assert not eng.has_unfinished_requests()
    assert eng.block_manager.num_free_blocks == eng.num_blocks
    assert held_refs(eng) == (0, 0)


def test_outputs_stream_and_finish(small):
    rid = small.add_request("The three laws of robotics are", GREEDY)
    outs = []
    while small.has_unfinished_requests():
        outs += [o for o in small.step() if o.request_id == rid]
    assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
    final = outs[-1]
    assert final.finish_reason in ("stop", "length") and final.completion_tokens == len(final.output_token_ids)
    assert sum((o.new_token_ids for o in outs), []) == final.output_token_ids
    assert "".join(o.text for o in outs) == final.output_text
    assert final.ttft is not None and final.finished_time >= final.first_token_time >= final.arrival_time
    assert_idle(small)


def test_max_tokens_and_zero(small):
    out = small.generate(["Count: one, two,"], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0]
    assert out.completion_tokens == 5 and out.finish_reason == "length"
    zero = small.generate(["hello"], SamplingParams(max_tokens=0))[0]
    assert zero.finished and zero.output_token_ids == [] and zero.output_text == "" and zero.finish_reason == "length"
    assert_idle(small)


def test_stop_string_cuts_the_text_and_never_leaks(small):
    prompt = "Repeat after me: alpha beta gamma delta. alpha beta gamma delta. alpha beta"
    full = small.generate([prompt], SamplingParams(temperature=0, max_tokens=16))[0].output_text
    assert "gamma" in full, full
    rid = small.add_request(prompt, SamplingParams(temperature=0, max_tokens=16, stop=["gamma"]))
    deltas, final = [], None
    while final is None:
        for o in small.step():
            deltas.append(o.text)
            final = o if o.finished else None
    assert final.finish_reason == "stop" and final.stop_reason == "gamma"
    assert final.output_text == full[: full.index("gamma")] == "".join(deltas)
    assert all("gamma" not in "".join(deltas[: i + 1]) for i in range(len(deltas)))
    assert_idle(small)


def test_stop_token_ids_finish_with_stop(small):
    base = small.generate(["Once upon a time"], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    tok = base.output_token_ids[3]
    out = small.generate(["Once upon a time"], SamplingParams(temperature=0, max_tokens=8, stop_token_ids=[tok]))[0]
    assert out.output_token_ids == base.output_token_ids[: base.output_token_ids.index(tok) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == tok


def test_abort_mid_generation_frees_every_block(small):
    rids = [small.add_request(f"Story number {i}: once upon a time", SamplingParams(temperature=0, max_tokens=40))
            for i in range(3)]
    for _ in range(4):
        small.step()
    assert small.block_manager.num_free_blocks < small.num_blocks
    assert small.abort(rids[0]) and not small.abort(rids[0]) and not small.abort("nope")
    assert small.abort(rids[1]) and small.abort(rids[2])
    assert_idle(small)
    assert small.step() == []


def test_bad_inputs_raise_and_queue_nothing(small):
    vocab = small.tokenizer.vocab_size
    for prompt in ("", [], [vocab], [-1], [1.5], None, 42, [{"role": "user"}]):
        with pytest.raises(ValidationError):
            small.add_request(prompt, GREEDY)
    with pytest.raises(ValidationError):
        small.add_request([5] * small.max_model_len, GREEDY)
    with pytest.raises(CapacityError):  # 48 blocks of 16 tokens cannot hold 900 tokens
        small.add_request([5] * 900, GREEDY)
    with pytest.raises(ValidationError):
        small.add_request("hi", {"temperature": 0})
    small.add_request("hi", GREEDY, request_id="dup")
    with pytest.raises(ValidationError):
        small.add_request("hi", GREEDY, request_id="dup")
    small.abort("dup")
    assert_idle(small)
    for kw in ({"max_num_seqs": 0}, {"dtype": "float16"}, {"block_size": 0}, {"nope": 1},
               {"max_num_batched_tokens": 4, "max_num_seqs": 8}):
        with pytest.raises(ValidationError):
            EngineConfig.from_kwargs(**kw)


def test_seeded_request_samples_the_same_tokens_in_any_batch(small):
    seeded = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=10, seed=1234)
    alone = small.generate(["Tell me about cats."], seeded)[0].output_token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=6), GREEDY, seeded]
    mixed = small.generate(["Hello there", "Why is the sea salty?", "Tell me about cats."], others)
    assert mixed[2].output_token_ids == alone
    assert_idle(small)


def test_chat_messages_and_token_ids_are_the_same_request(small):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    a = small.generate([msgs], GREEDY)[0]
    b = small.generate([small.encode_prompt(msgs)], GREEDY)[0]
    assert a.output_token_ids == b.output_token_ids and "Paris" in a.output_text


@settings(max_examples=8, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "abort", "step", "step", "step"]), st.integers(0, 5)),
                min_size=1, max_size=14))
def test_random_add_abort_step_never_leaks_a_block(small, ops):
    live = []
    for op, k in ops:
        if op == "add":
            n = 10 + 37 * k
            live.append(small.add_request([7 + (i * 13 + k) % 500 for i in range(n)],
                                          SamplingParams(temperature=0, max_tokens=2 + k)))
        elif op == "abort" and live:
            small.abort(live.pop(k % len(live)))
        else:
            for o in small.step():
                if o.finished and o.request_id in live:
                    live.remove(o.request_id)
        refs, tables = held_refs(small)
        assert refs == tables  # every reference is a table entry of a running request
        assert small.block_manager.num_free_blocks == small.num_blocks - len(
            {b for s in small.planner.running for b in s.block_table})
    for rid in live:
        small.abort(rid)
    assert_idle(small)


@pytest.mark.parametrize("threshold", [3, 0])
def test_a_hot_prefix_survives_eviction_only_when_pinning_is_on(threshold):
    eng = LLMEngine(num_blocks=20, block_size=16, max_num_seqs=2, max_num_batched_tokens=128,
                    hot_prefix_threshold=threshold, max_pinned_fraction=0.5)
    hot = [11 + i % 97 for i in range(64)]  # 4 full blocks
    one = SamplingParams(temperature=0, max_tokens=1)
    for k in range(4):
        eng.generate([hot + [500 + k]], one)
    assert (eng.hot.num_pinned_blocks == 4) if threshold else eng.hot is None
    for k in range(6):  # cold prompts that need every unpinned block: evict whatever is not pinned
        eng.generate([[300 + 7 * k + i % 50 for i in range(240)]], one)
    again = eng.generate([hot + [999]], one)[0]
    assert again.cached_tokens == (64 if threshold else 0)
    pinned = eng.hot.num_pinned_blocks if threshold else 0
    assert eng.block_manager.num_free_blocks == eng.num_blocks - pinned  # pinned blocks are not reclaimable
