"""Structured outputs in the engine: specs, the grammar cache, masked sampling, jump-forward, preemption.

Validity is checked exactly: every output parses and validates against its JSON schema
(``jsonschema``), fully matches its regex, or is one of its choices, at temperature 0 and 1.
The schemas bound every string and list, so the grammar bounds the output and ``max_tokens``
covers it: an output can only end by completing its grammar.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Literal, Optional

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")
pydantic = pytest.importorskip("pydantic")

from llmds.engine.config import SamplingParams  # noqa: E402
from llmds.engine.structured import MAX_SCHEMA_DEPTH, MAX_SPEC_BYTES, StructuredOutputs  # noqa: E402
from llmds.errors import ValidationError  # noqa: E402

BaseModel, Field = pydantic.BaseModel, pydantic.Field
Str = lambda n: Field(min_length=1, max_length=n)  # noqa: E731


class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(BaseModel):
    street: str = Str(30)
    zip: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Str(20)
    age: int = Field(ge=0, le=120)
    favorite: Color
    address: Address
    tags: list[str] = Field(min_length=1, max_length=3)
    nickname: Optional[str] = Field(None, max_length=12)


class Event(BaseModel):
    title: str = Str(30)
    priority: Literal["low", "medium", "high"]
    done: bool
    attendees: list[Address] = Field(max_length=2)


def closed(schema: dict) -> dict:
    """The schema with every object closed (``additionalProperties: false``) and its strings bounded."""
    schema = json.loads(json.dumps(schema))
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                node.setdefault("additionalProperties", False)
            if node.get("type") == "array":
                node.setdefault("maxItems", 3)
                if isinstance(node.get("items"), dict) and node["items"].get("type") == "string":
                    node["items"].setdefault("maxLength", 16)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return schema


SCHEMAS = {"person": closed(Person.model_json_schema()), "event": closed(Event.model_json_schema()),
           "point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -99, "maximum": 99},
                                                      "y": {"type": "number", "maximum": 1e6, "minimum": -1e6}},
                     "required": ["x", "y"], "additionalProperties": False}}
ASK = {"person": "Describe a person as JSON.", "event": "Describe a meeting as JSON.",
       "point": "Give a point as JSON."}


def chat(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


def check_valid(kind: str, spec, text: str) -> None:
    if kind == "json":
        jsonschema.validate(json.loads(text), spec)
    elif kind == "regex":
        assert re.fullmatch(spec, text), text
    else:
        assert text in spec, text


# ------------------------------------------------------------------------- specs
def test_a_spec_takes_exactly_one_constraint_and_checks_its_shape():
    with pytest.raises(ValidationError, match="exactly one"):
        StructuredOutputs()
    with pytest.raises(ValidationError, match="exactly one"):
        StructuredOutputs(regex="a", choice=["a"])
    with pytest.raises(ValidationError, match="not valid JSON"):
        StructuredOutputs(json="{nope")
    with pytest.raises(ValidationError, match="must be an object"):
        StructuredOutputs(json=[1, 2])
    with pytest.raises(ValidationError, match="non-empty list"):
        StructuredOutputs(choice="yes")
    deep = {"type": "object"}
    for _ in range(MAX_SCHEMA_DEPTH):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(ValidationError, match="nests deeper"):
        StructuredOutputs(json=deep)
    with pytest.raises(ValidationError, match="longer than"):
        StructuredOutputs(regex="a" * (MAX_SPEC_BYTES + 1))
    with pytest.raises(ValidationError, match="unknown structured_outputs"):
        SamplingParams(structured_outputs={"jsonn": {}})
    assert SamplingParams(structured_outputs={"regex": "a+"}).structured_outputs == StructuredOutputs(regex="a+")


def test_the_cache_key_is_canonical():
    a = StructuredOutputs(json={"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}})
    b = StructuredOutputs(json='{"properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "type": "object"}')
    assert a.key == b.key
    assert a.key != StructuredOutputs(json=a.json, any_whitespace=True).key
    assert StructuredOutputs(regex="a").key != StructuredOutputs(grammar="a").key


@pytest.fixture(scope="module")
def compiler(engine):
    from llmds.engine.structured import GrammarCompiler

    g = engine.grammars
    return GrammarCompiler(g.tokenizer_json, g.vocab_size, engine.eos_token_ids, maxsize=3)


@pytest.mark.parametrize("spec, words", [
    (StructuredOutputs(json={"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}), "missing"),
    (StructuredOutputs(json={"type": "strung"}), "strung"),
    (StructuredOutputs(regex="a(b"), "unclosed group"),
    (StructuredOutputs(grammar="start: foo\n"), "foo"),
])
def test_a_spec_that_does_not_compile_raises_a_validation_error_naming_the_problem(compiler, spec, words):
    with pytest.raises(ValidationError, match=words) as info:
        compiler.matcher(spec)
    assert str(info.value).startswith("structured_outputs: the ")


def test_a_repeated_spec_compiles_once_and_the_cache_is_a_bounded_lru(compiler):
    specs = [StructuredOutputs(regex=f"x{i}+") for i in range(4)]
    before = compiler.misses
    for _ in range(3):
        compiler.matcher(specs[0])
    assert compiler.misses == before + 1
    for s in specs[1:]:
        compiler.matcher(s)
    assert len(compiler) == 3  # maxsize: specs[0] (least recently used) was dropped
    compiler.matcher(specs[3])
    assert compiler.misses == before + 4
    compiler.matcher(specs[0])
    assert compiler.misses == before + 5


# ----------------------------------------------------------------------- engine
CASES = [("json", name) for name in SCHEMAS] + [("regex", r"\(\d{3}\) \d{3}-\d{4}"),
                                                ("choice", ("yes", "no", "maybe"))]


def _params(kind, spec, temperature, seed=7, **kw):
    so = {"json": {"json": spec}, "regex": {"regex": spec}, "choice": {"choice": list(spec)}}[kind]
    return SamplingParams(max_tokens=kw.pop("max_tokens", 400), temperature=temperature, seed=seed,
                          structured_outputs=so, **kw)


def _prompt(kind, spec):
    if kind == "json":
        return chat(ASK[spec])
    return chat("Give me a US phone number." if kind == "regex" else "Is the sea salty? Answer yes, no or maybe.")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_constrained_output_is_valid_and_ends_with_its_grammar(engine, temperature):
    prompts, params, specs = [], [], []
    for kind, spec in CASES:
        real = SCHEMAS[spec] if kind == "json" else spec
        for k in range(2 if temperature else 1):
            prompts.append(_prompt(kind, spec))
            params.append(_params(kind, real, temperature, **({"seed": k} if temperature else {})))
            specs.append((kind, real))
    outs = engine.generate(prompts, params)
    for (kind, spec), out in zip(specs, outs):
        assert out.finish_reason == "stop", out.output_text
        check_valid(kind, spec, out.output_text)


def test_free_requests_are_token_identical_beside_constrained_ones(engine):
    free = [chat("What is the capital of France?"), chat("Name three primary colors.")]
    greedy = SamplingParams(max_tokens=24, temperature=0)
    alone = [o.output_token_ids for o in engine.generate(free, greedy)]
    mixed = engine.generate(free + [chat(ASK["person"]), chat(ASK["point"])],
                            [greedy, greedy, _params("json", SCHEMAS["person"], 0.0),
                             _params("json", SCHEMAS["point"], 1.0)])
    assert [o.output_token_ids for o in mixed[:2]] == alone
    check_valid("json", SCHEMAS["person"], mixed[2].output_text)


def test_sampling_penalties_bias_and_logprobs_see_the_masked_distribution(engine):
    choices = ("yes", "no")
    p = SamplingParams(max_tokens=8, temperature=1.0, seed=3, logprobs=20, repetition_penalty=1.3,
                       logit_bias={engine.tokenizer.encode(" Paris")[0]: 100.0},
                       structured_outputs={"choice": list(choices)})
    out = engine.generate([chat("Is the sea salty?")], p)[0]
    assert out.output_text in choices
    for lp in out.output_logprobs:
        assert lp.top, "every step lists the allowed tokens"
        assert len(lp.top) <= 20 and all(x > float("-inf") for _, x in lp.top)
        for tid, _ in lp.top:  # only tokens the grammar allows can appear
            assert any(c.startswith(engine.tokenizer.token_to_str(tid).lstrip()) or
                       engine.tokenizer.token_to_str(tid) in c for c in choices)


def test_parallel_sampling_gives_each_sequence_its_own_matcher(engine):
    outs = engine.generate([chat(ASK["point"])], SamplingParams(max_tokens=60, temperature=1.0, seed=1, n=3,
                                                              structured_outputs={"json": SCHEMAS["point"]}))
    assert len(outs) == 3
    for o in outs:
        check_valid("json", SCHEMAS["point"], o.output_text)


def test_jump_forward_computes_forced_tokens_in_one_forward():
    from llmds.engine.engine import LLMEngine

    p = _params("json", SCHEMAS["event"], 0.0)
    runs = {}
    for jf in (False, True):
        eng = LLMEngine(jump_forward=jf, hot_prefix_threshold=0)
        out = eng.generate([chat(ASK["event"])], p)[0]
        check_valid("json", SCHEMAS["event"], out.output_text)
        runs[jf] = (eng.metrics.num_steps, eng.metrics.structured_jump_forward_tokens, len(out.output_token_ids))
    (steps_off, ff_off, n_off), (steps_on, ff_on, n_on) = runs[False], runs[True]
    assert ff_off == 0 and ff_on > 0
    assert steps_off == n_off  # one step per output token
    assert steps_on == n_on - ff_on  # a forced run rides with the next sampled token: no step of its own


def test_a_preempted_request_keeps_its_matcher_and_its_output():
    from llmds.engine.engine import LLMEngine

    prompts = [chat(ASK[name]) for name in ("person", "event", "point", "person")]
    params = [_params("json", SCHEMAS[n], 0.0, max_tokens=160) for n in ("person", "event", "point", "person")]
    roomy = LLMEngine(hot_prefix_threshold=0, jump_forward=False)
    want = [o.output_text for o in roomy.generate(prompts, params)]
    # the smallest pool one request fits in (36 + 160 tokens: 13 blocks); the four outgrow it together
    tight = LLMEngine(num_blocks=13, block_size=16, hot_prefix_threshold=0, jump_forward=False,
                      prefill_first=False)
    got = tight.generate(prompts, params)
    assert tight.metrics.num_preemptions > 0  # matchers were in flight when their requests were preempted
    assert [o.output_text for o in got] == want
    for name, o in zip(("person", "event", "point", "person"), got):
        check_valid("json", SCHEMAS[name], o.output_text)


def test_abort_drops_the_matcher_and_a_bad_spec_queues_nothing(engine):
    rid = engine.add_request(chat(ASK["point"]), _params("json", SCHEMAS["point"], 0.0))
    engine.step()
    assert engine.abort(rid)
    assert not engine.has_unfinished_requests()
    with pytest.raises(ValidationError, match="does not compile"):
        engine.add_request(chat("hi"), SamplingParams(structured_outputs={"regex": "(("}))
    assert not engine.has_unfinished_requests()


def test_the_async_engine_compiles_off_its_thread_and_a_slow_compile_stalls_no_step(engine, monkeypatch):
    import asyncio
    import threading

    from llmds.engine.async_engine import AsyncLLMEngine

    compiler, release, threads = engine.grammars, threading.Event(), []
    real = compiler._compile

    def slow(spec):  # a compile that takes as long as the test says
        threads.append(threading.current_thread().name)
        assert release.wait(60)
        return real(spec)

    monkeypatch.setattr(compiler, "_compile", slow)
    spec = {"regex": "[a-z]{3} compiled late"}

    async def body():
        a = AsyncLLMEngine(engine)
        a.start()
        try:
            slow_req = asyncio.ensure_future(_collect(a, chat("hi"), SamplingParams(max_tokens=20, temperature=0,
                                                                                   structured_outputs=spec)))
            free = await _collect(a, chat("What is the capital of France?"), SamplingParams(max_tokens=8, temperature=0))
            assert free.finished and not slow_req.done()  # the free request ran while the grammar compiled
            release.set()
            return await slow_req
        finally:
            release.set()
            a.shutdown()

    out = asyncio.run(body())
    assert re.fullmatch("[a-z]{3} compiled late", out.output_text)
    assert threads and "llmds-engine" not in threads


async def _collect(a, prompt, params):
    final = None
    async for out in a.generate(prompt, params):
        final = out
    return final
