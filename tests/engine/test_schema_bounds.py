"""bounded_schema: what a JSON schema leaves unbounded (extra keys, a number's digits) is bounded
for generation, without admitting anything the schema refuses, and only schema keywords are read."""

from __future__ import annotations

import json

import pytest

from llmds.engine.structured import NUMBER_STEP, SAFE_INTEGER, bounded_schema

import jsonschema  # noqa: E402  (ray, in the test install, depends on it)


def test_objects_take_no_other_keys_unless_the_schema_says_so():
    s = {"type": "object", "properties": {"a": {"type": "string"}},
         "$defs": {"B": {"type": "object", "properties": {"b": {"type": "boolean"}}}},
         "items": {"properties": {}}}
    b = bounded_schema(s)
    assert b["additionalProperties"] is False and b["$defs"]["B"]["additionalProperties"] is False
    assert b["items"]["additionalProperties"] is False
    assert bounded_schema({"properties": {}, "additionalProperties": True})["additionalProperties"] is True
    assert bounded_schema({"type": "object"}) == {"type": "object"}  # no listed keys: any object stays
    assert "additionalProperties" not in s  # the caller's schema is not changed


def test_numbers_get_bounds_and_six_decimals_integers_bounds_only():
    n = bounded_schema({"type": "number"})
    assert n == {"type": "number", "minimum": -SAFE_INTEGER, "maximum": SAFE_INTEGER, "multipleOf": NUMBER_STEP}
    assert bounded_schema({"type": "integer", "minimum": 1}) == {"type": "integer", "minimum": 1, "maximum": SAFE_INTEGER}
    kept = {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1, "multipleOf": 0.5}
    assert bounded_schema(kept) == kept
    assert bounded_schema({"type": "number", "enum": [0.123456789]}) == {"type": "number", "enum": [0.123456789]}


def test_only_keywords_are_read():
    """Properties named like keywords are names: their schemas are walked, the names left alone."""
    s = {"type": "object", "properties": {"type": {"type": "number"}, "properties": {"type": "string"},
                                          "additionalProperties": {"type": "integer"}}}
    b = bounded_schema(s)
    assert set(b["properties"]) == {"type", "properties", "additionalProperties"}
    assert b["properties"]["type"]["multipleOf"] == NUMBER_STEP
    assert b["properties"]["additionalProperties"]["maximum"] == SAFE_INTEGER
    assert b["additionalProperties"] is False


@pytest.mark.parametrize("doc", [
    {"x": 0.5, "n": 3, "tags": ["a"], "inner": {"k": -2.25}},
    {"x": 1e-6, "n": -SAFE_INTEGER, "tags": [], "inner": {"k": 0}},
])
def test_what_the_bounded_schema_accepts_the_original_accepts(doc):
    s = {"type": "object", "properties": {
        "x": {"type": "number"}, "n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
        "inner": {"anyOf": [{"type": "object", "properties": {"k": {"type": "number"}}}, {"type": "null"}]}}}
    b = bounded_schema(s)
    jsonschema.validate(doc, b)  # these documents are inside the bounds ...
    jsonschema.validate(doc, s)  # ... and valid for the original
    for bad in ({**doc, "extra": 1}, {**doc, "x": 0.1234567}, {**doc, "n": SAFE_INTEGER + 1}):
        jsonschema.validate(bad, s)  # the original takes them
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(json.loads(json.dumps(bad)), b)  # generation never emits them
