"""Structured outputs and tool calls over HTTP, with the official ``openai`` client.

``chat.completions.parse(response_format=PydanticModel)`` returns validated objects;
``json_object``, vLLM's ``guided_*`` and ``structured_outputs`` fields; required and named tool
calls, whole and streamed, whose arguments validate against the tool's schema; tool messages in
the history; and a 400 naming the field for every schema, regex or grammar that does not compile.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Literal, Optional

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")
from pydantic import BaseModel, Field  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"


class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)


class Trip(BaseModel):
    traveller: str = Field(max_length=20)
    favorite: Color
    stops: list[City] = Field(min_length=1, max_length=2)
    nights: int = Field(ge=1, le=30)
    note: Optional[str] = Field(max_length=20)


class Answer(BaseModel):
    answer: Literal["yes", "no"]
    confidence: float = Field(ge=0, le=1)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 24}},
                   "required": ["zone"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
SCHEMA = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
DEEP: dict = {"type": "object"}
for _ in range(40):
    DEEP = {"type": "object", "properties": {"a": DEEP}}


@pytest.mark.parametrize("model, prompt", [
    (Trip, "Plan a short trip as JSON."),
    (Answer, "Is the Earth round?"),
    (City, "Name a city."),
])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_parse_returns_a_validated_pydantic_object(openai_client, model, prompt, temperature):
    r = openai_client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                             response_format=model, max_tokens=1000, temperature=temperature, seed=3)
    # every output these schemas allow is finite (strings have maxLength; numbers, extra keys: bounded_schema),
    # at most ~140 characters of strings: 1000 tokens hold the longest (greedy writes Trip's strings in emoji)
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(choice.message.parsed, model)
    assert model.model_validate_json(choice.message.content) == choice.message.parsed


def test_json_object_and_vllm_fields(http):
    def ask(**kw):
        body = {"model": MODEL, "messages": ASK, "max_tokens": 200, "temperature": 0, **kw}
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]

    c = ask(response_format={"type": "json_object"}, max_tokens=400)
    assert c["finish_reason"] in ("stop", "length")
    if c["finish_reason"] == "stop":
        assert isinstance(json.loads(c["message"]["content"]), dict)
    assert ask(response_format={"type": "text"}, max_tokens=4)["message"]["content"]
    assert ask(guided_choice=["sunny", "rainy"])["message"]["content"] in ("sunny", "rainy")
    assert re.fullmatch(r"[0-9]{2} degrees", ask(guided_regex=r"[0-9]{2} degrees")["message"]["content"])
    point = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
             "additionalProperties": False}
    assert set(json.loads(ask(guided_json=point)["message"]["content"])) == {"x"}
    assert json.loads(ask(structured_outputs={"json": point})["message"]["content"])["x"] is not None
    grammar = 'start: "temp=" /[0-9]{1,2}/ "C"'
    assert re.fullmatch(r"temp=[0-9]{1,2}C", ask(guided_grammar=grammar)["message"]["content"])
    gbnf = 'root ::= "temp=" [0-9] [0-9] "C"'
    assert re.fullmatch(r"temp=[0-9]{2}C", ask(structured_outputs={"grammar": gbnf})["message"]["content"])
    # and on /v1/completions
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "The weather today is", "max_tokens": 8,
                                           "temperature": 0, "guided_choice": ["sunny", "rainy"]}).json()
    assert r["choices"][0]["text"] in ("sunny", "rainy") and r["choices"][0]["finish_reason"] == "stop"


def _check_call(call, names=("get_weather", "get_time")):
    assert call.id.startswith("call_") and call.type == "function" and call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMA[call.function.name])


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_required_and_named_tool_calls_whole_and_streamed(openai_client, tool_choice):
    kw = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=150, temperature=0)
    r = openai_client.chat.completions.create(**kw)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None and c.message.tool_calls
    names = ("get_time",) if isinstance(tool_choice, dict) else ("get_weather", "get_time")
    for call in c.message.tool_calls:
        _check_call(call, names)
    if isinstance(tool_choice, dict):
        assert len(c.message.tool_calls) == 1
    calls, finish = {}, None
    for chunk in openai_client.chat.completions.create(**kw, stream=True):
        for ch in chunk.choices:
            assert not ch.delta.content
            for d in ch.delta.tool_calls or []:
                calls.setdefault(d.index, {"id": d.id, "name": d.function.name, "arguments": ""})
                calls[d.index]["arguments"] += d.function.arguments or ""
            finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert [(v["name"], json.loads(v["arguments"])) for _, v in sorted(calls.items())] == \
           [(t.function.name, json.loads(t.function.arguments)) for t in c.message.tool_calls]


def test_one_call_without_parallel_tool_calls_and_at_temperature_one(openai_client):
    for seed in range(3):
        r = openai_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                                  parallel_tool_calls=False, max_tokens=150, temperature=1.0,
                                                  seed=seed)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
        _check_call(c.message.tool_calls[0])


def test_tool_messages_and_assistant_calls_are_rendered_into_the_prompt(openai_client, live):
    from llmds.server.protocol import ChatMessage, Tool
    from llmds.server.tools import render_messages

    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]
    msgs = render_messages([ChatMessage.model_validate(m) for m in history],
                           [Tool.model_validate(t) for t in TOOLS], "auto")
    assert msgs[0]["role"] == "system" and '"name": "get_weather"' in msgs[0]["content"]
    assert msgs[2]["content"] == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
                                  '"unit": "celsius"}}\n</tool_call>')
    assert msgs[3] == {"role": "user", "content": '<tool_response>\n{"temperature": 21}\n</tool_response>'}
    r = openai_client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=30,
                                              temperature=0)
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length", "tool_calls")
    assert c.message.content or c.message.tool_calls
    none = openai_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none",
                                                 max_tokens=8, temperature=0)
    assert none.choices[0].message.tool_calls is None


def test_auto_parses_the_blocks_the_model_writes():
    from llmds.server.tools import ToolCallStream, parse_tool_calls

    text = 'Let me check.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Let me check." and [c["function"]["name"] for c in calls] == ["get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"zone": "UTC"}
    assert parse_tool_calls("<tool_call>\nnot json\n</tool_call>") == ("<tool_call>\nnot json\n</tool_call>", [])
    st, got, out = ToolCallStream(), "", []
    for ch in text:  # one character at a time: nothing of the tags leaks into the content
        c, k = st.feed(ch)
        got += c
        out += k
    c, k = st.finish()
    assert got + c == "Let me check.\n" and len(out + k) == 1


@pytest.mark.parametrize("body, param, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strung"}}}},
     "response_format", "strung"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema",
     "needs json_schema"),
    ({"guided_json": {"properties": {"a": {"$ref": "#/nope"}}}}, "guided_json", "nope"),
    ({"guided_regex": "a(b"}, "guided_regex", "unclosed group"),
    ({"guided_grammar": "start: missing_rule"}, "guided_grammar", "missing_rule"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "only one of"),
    ({"guided_json": DEEP}, "guided_json", "nests deeper"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "no tool"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": TOOLS, "tool_choice": "required", "guided_regex": "a"}, "guided_regex", "both constrain"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strung"}}}],
      "tool_choice": "required"}, "tools", "strung"),
])
def test_bad_schemas_regexes_and_grammars_are_a_400_naming_the_field(http, body, param, words):
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": 8, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err
