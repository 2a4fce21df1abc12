"""Tests of llmds.retrieval.tokenizer.Tokenizer and the bulk WordTable that must agree with it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.retrieval._wordtable import WordTable
from llmds.errors import ValidationError
from llmds.retrieval.tokenizer import ENGLISH_STOP_WORDS, Tokenizer

# Text that mixes ASCII, accented Latin, Greek (final sigma), CJK, digits,
# underscores, punctuation and several kinds of whitespace.
ALPHABET = "abcXYZ019_ -.,'’\n\t\u00a0éÉßΣσςİı日本\u0301"
texts = st.text(alphabet=ALPHABET, max_size=40) | st.text(max_size=20)


def test_examples():
    tok = Tokenizer()
    assert tok.encode("Don't stop-me_now!") == ["don", "t", "stop", "me_now"]
    assert tok.encode("Héllo, WORLD 42x") == ["héllo", "world", "42x"]
    assert tok.encode("日本語 テキスト") == ["日本語", "テキスト"]
    assert tok.encode("") == []
    assert tok.encode(" \t\n ") == []
    assert tok.encode("...!?") == []
    assert tok.count_tokens("a b  c") == 3


@settings(max_examples=150, deadline=None)
@given(texts)
def test_tokens_are_lowercased_word_runs(text):
    tok = Tokenizer()
    assert tok.encode(text) == re.findall(r"\w+", text.lower())
    assert tok.count_tokens(text) == len(tok.encode(text))


@settings(max_examples=150, deadline=None)
@given(texts)
def test_query_tokens_are_concatenation_of_whitespace_pieces(text):
    for tok in (Tokenizer(), Tokenizer(stopwords="english")):
        pieces = [t for p in text.split() for t in tok.encode(p)]
        assert tok.encode(text) == pieces


def test_stopwords():
    assert Tokenizer(stopwords="english").encode("The cat AND the hat") == ["cat", "hat"]
    assert Tokenizer(stopwords="ENGLISH").encode("the") == []
    custom = Tokenizer(stopwords=["Cat", "HAT"])
    assert custom.encode("the cat and the hat") == ["the", "and", "the"]
    assert Tokenizer(stopwords="english").count_tokens("the cat and the hat") == 2
    assert "the" in ENGLISH_STOP_WORDS and "cat" not in ENGLISH_STOP_WORDS


def test_stemming_after_stopwords():
    tok = Tokenizer(stopwords="english", stemmer="english")
    assert tok.encode("The running cats were jumping") == ["run", "cat", "jump"]
    assert Tokenizer(stemmer="porter").encode("ponies") == ["poni"]
    # stop words match the unstemmed word: "was" is dropped, "wa" would not be
    assert tok.encode("was") == []


def test_stemmer_is_imported_lazily():
    code = (
        "import sys; from llmds.retrieval.tokenizer import Tokenizer;"
        "from llmds.retrieval.inverted_index import InvertedIndex;"
        "Tokenizer().encode('x y'); InvertedIndex().add_document(1, 'x');"
        "assert 'Stemmer' not in sys.modules, 'PyStemmer imported without stemming'"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": src, "PATH": ""})


def test_config_round_trip_and_equality():
    for tok in (
        Tokenizer(),
        Tokenizer(stopwords="english"),
        Tokenizer(stopwords=["b", "a"], stemmer="english"),
    ):
        again = Tokenizer.from_config(tok.config())
        assert again == tok and hash(again) == hash(tok)
        assert again.encode("A b running") == tok.encode("A b running")
    assert Tokenizer() != Tokenizer(stopwords="english")
    assert "english" in repr(Tokenizer(stemmer="english"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stopwords": "french"},
        {"stopwords": [1, 2]},
        {"stopwords": 5},
        {"stemmer": "klingon"},
        {"stemmer": 3},
    ],
)
def test_bad_configuration(kwargs):
    with pytest.raises(ValidationError):
        Tokenizer(**kwargs)


def test_bad_text():
    tok = Tokenizer()
    for bad in (None, b"bytes", 3):
        with pytest.raises(ValidationError):
            tok.encode(bad)
        with pytest.raises(ValidationError):
            tok.count_tokens(bad)
    with pytest.raises(ValidationError):
        Tokenizer.from_config("nope")


# ---------------------------------------------------------------- WordTable
@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(texts, max_size=6), min_size=1, max_size=4))
def test_word_table_agrees_with_tokenizer(batches):
    """The numba bulk path must give exactly Tokenizer.words, ids stable across calls."""
    tok = Tokenizer()
    table = WordTable()
    seen: dict[str, int] = {}
    for batch in batches:
        ids, lengths = table.add_texts(batch)
        words = table.words(0, len(table))
        assert len(set(words)) == len(words)
        assert lengths.tolist() == [len(tok.words(t)) for t in batch]
        flat = [w for t in batch for w in tok.words(t)]
        assert [words[i] for i in ids.tolist()] == flat
        for w, i in zip(flat, ids.tolist()):
            assert seen.setdefault(w, i) == i  # a word keeps its id
        # ids are assigned in first-seen order
        assert sorted(seen.values()) == list(range(len(seen)))


def test_word_table_long_words_and_growth():
    """Words longer than the 8-byte inline key, sharing it, and enough words to rehash."""
    table = WordTable()
    long_a, long_b = "abcdefgh" + "x" * 30, "abcdefgh" + "x" * 29 + "y"
    many = [f"w{i}" for i in range(5000)]
    ids, lengths = table.add_texts([f"{long_a} {long_b} {long_a}", " ".join(many), long_b])
    words = table.words(0, len(table))
    assert lengths.tolist() == [3, 5000, 1]
    assert [words[i] for i in ids.tolist()] == [long_a, long_b, long_a, *many, long_b]
    ids2, _ = table.add_texts([" ".join(reversed(many))])
    assert ids2.tolist() == ids[3:5003][::-1].tolist()
