"""Tokenizer, chat template and incremental detokenization against transformers' tokenizer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.engine.text import Detokenizer
from llmds.errors import ValidationError

TEXTS = ["Hello, world!", "  leading spaces and\ttabs\n\nnew lines", "naïve café — 東京 🚀🚀 ẞ",
         "def f(x):\n    return x**2  # 12345678901", "<|im_start|>user\nhi<|im_end|>"]

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
]


@pytest.fixture(scope="module")
def tok(engine):
    return engine.tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(tok, hf, text):
    _, ref = hf
    assert tok.encode(text) == ref(text, add_special_tokens=False).input_ids
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_matches_transformers(tok, hf, conv, gen):
    _, ref = hf
    assert tok.apply_chat_template(conv, gen) == ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)


def test_bad_messages_are_rejected(tok):
    for bad in ([], "hi", [{"content": "x"}], [{"role": "user"}], [{"role": "user", "content": 3}],
                [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]):
        with pytest.raises(ValidationError):
            tok.apply_chat_template(bad)
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert tok.apply_chat_template(parts) == tok.apply_chat_template([{"role": "user", "content": "ab"}])


@settings(max_examples=60)
@given(st.text(min_size=1, max_size=40))
def test_deltas_concatenate_to_the_decoded_text_and_never_split_a_character(tok, text):
    ids = tok.encode(text)
    d = Detokenizer(tok)
    deltas = [d.push(t) for t in ids]
    deltas.append(d.flush())
    assert "".join(deltas) == tok.decode(ids)
    if "\ufffd" not in tok.decode(ids):  # text the tokenizer round-trips: no delta splits a character
        assert all("\ufffd" not in x for x in deltas)


def test_multibyte_emoji_split_over_tokens(tok):
    ids = tok.encode("🚀")
    assert len(ids) > 1  # byte-level BPE splits it
    d = Detokenizer(tok)
    assert [d.push(t) for t in ids][:-1] == [""] * (len(ids) - 1)
    assert d.text == "🚀"


@settings(max_examples=60)
@given(st.text(alphabet="abc xyz.", min_size=0, max_size=30), st.sampled_from(["xyz", "c.", "a", "zz z"]),
       st.text(alphabet="abc xyz.", max_size=10))
def test_stop_strings_never_leak(tok, before, stop, after):
    text = before + stop + after
    ids = tok.encode(text)
    d = Detokenizer(tok, stop=[stop])
    out = []
    for t in ids:
        out.append(d.push(t))
        if d.stopped:
            break
    out.append(d.flush())
    released = "".join(out)
    full = tok.decode(ids)
    cut = full.find(stop)
    assert cut != -1
    assert released == full[:cut] == d.text and d.stopped == stop
    assert all(stop not in "".join(out[:i + 1]) for i in range(len(out)))
