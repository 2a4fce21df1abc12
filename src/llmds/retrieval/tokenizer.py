"""Word tokenizer shared by documents and queries of the lexical index.

What counts as a token
----------------------
The text is lowercased with ``str.lower()`` and every maximal run of Unicode
word characters is one token: regex ``\\w+`` with ``re.UNICODE`` semantics, i.e.
letters and digits of any script (``str.isalnum()``) plus ``_``.  Everything
else — whitespace, punctuation, symbols, combining marks — separates tokens, so
``"Don't stop-me_now"`` gives ``["don", "t", "stop", "me_now"]``.  Because
whitespace never belongs to a token, the tokens of a text are exactly the
concatenation of the tokens of its whitespace-separated pieces.

Optional steps, applied to each token in this order:

1. stop-word removal (``stopwords="english"`` or any iterable of words; the
   words are lowercased and matched against the lowercased token *before*
   stemming);
2. stemming (``stemmer="english"`` or any PyStemmer algorithm name; PyStemmer
   is imported only when stemming is on).

Normalisation of each distinct word is cached per tokenizer, so a corpus costs
one ``findall`` per text plus a dictionary lookup per token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from llmds.errors import ValidationError

__all__ = ["ENGLISH_STOP_WORDS", "Tokenizer"]

WORD_RE = re.compile(r"\w+", re.UNICODE)  # a word (before lowercasing, stop words, stemming)
_findall = WORD_RE.findall

# Common English function words (articles, pronouns, auxiliaries,
# prepositions, conjunctions).  Deliberately short: content words stay.
ENGLISH_STOP_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all am an and any are as at be because been
    before being below between both but by can could did do does doing down during
    each few for from further had has have having he her here hers herself him
    himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same
    she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when
    where which while who whom why will with would you your yours yourself
    yourselves
    """.split()  # noqa: SIM905 - a word list reads better as text
)

# Bound on the per-tokenizer normalisation cache: query words of a long-running
# server must not grow it forever.  Corpus vocabularies rarely come close.
_MAX_CACHE = 2_000_000


class _NormCache(dict):
    """``{lowercased word: normalised term or None (stop word)}``; fills itself on a miss."""

    __slots__ = ("_stem", "_stop")

    def __init__(self, stop: frozenset[str], stem) -> None:
        super().__init__()
        self._stop = stop
        self._stem = stem

    def __missing__(self, word: str) -> str | None:
        if word in self._stop:
            term = None
        elif self._stem is not None:
            term = self._stem(word)
        else:
            term = word
        if len(self) >= _MAX_CACHE:
            self.clear()
        self[word] = term
        return term


class Tokenizer:
    """Lowercasing ``\\w+`` tokenizer with optional stop words and stemming.

    Parameters
    ----------
    stopwords : None, "english" or iterable of str
        Words to drop (matched after lowercasing, before stemming).  ``None``
        (default) keeps every token.
    stemmer : None or str
        PyStemmer algorithm (``"english"``, ``"porter"``, ``"german"``, ...).
        ``None`` (default) disables stemming.

    Examples
    --------
    >>> Tokenizer().encode("Hello, World! hello")
    ['hello', 'world', 'hello']
    >>> Tokenizer(stopwords="english").count_tokens("the cat and the hat")
    2
    """

    __slots__ = ("_cache", "_plain", "_stemmer_name", "_stop", "_stop_spec")

    def __init__(
        self, stopwords: str | Iterable[str] | None = None, stemmer: str | None = None
    ) -> None:
        if stopwords is None:
            stop: frozenset[str] = frozenset()
            spec: Any = None
        elif isinstance(stopwords, str):
            if stopwords.lower() != "english":
                raise ValidationError(
                    f"stopwords={stopwords!r}: use None, 'english' or an iterable of words"
                )
            stop, spec = ENGLISH_STOP_WORDS, "english"
        else:
            try:
                words = list(stopwords)
            except TypeError as exc:
                raise ValidationError(
                    "stopwords must be None, 'english' or an iterable of str"
                ) from exc
            if not all(isinstance(w, str) for w in words):
                raise ValidationError("every stop word must be a str")
            stop = frozenset(w.lower() for w in words)
            spec = sorted(stop)
        stem_fn = None
        if stemmer is not None:
            if not isinstance(stemmer, str):
                raise ValidationError(f"stemmer must be None or an algorithm name, got {stemmer!r}")
            try:
                import Stemmer  # PyStemmer; optional dependency
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ValidationError(
                    "stemming needs PyStemmer: pip install PyStemmer (or pass stemmer=None)"
                ) from exc
            if stemmer not in Stemmer.algorithms():
                raise ValidationError(
                    f"unknown stemmer {stemmer!r}; choose one of {sorted(Stemmer.algorithms())}"
                )
            stem_fn = Stemmer.Stemmer(stemmer).stemWord
        self._stop = stop
        self._stop_spec = spec
        self._stemmer_name = stemmer
        self._plain = not stop and stem_fn is None  # fast path: tokens are terms
        self._cache = _NormCache(stop, stem_fn)

    # -- configuration -------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings; ``Tokenizer.from_config(t.config())`` rebuilds ``t``."""
        return {"stopwords": self._stop_spec, "stemmer": self._stemmer_name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Tokenizer:
        """Inverse of :meth:`config`."""
        if not isinstance(config, dict):
            raise ValidationError("tokenizer config must be a dict")
        return cls(stopwords=config.get("stopwords"), stemmer=config.get("stemmer"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash((repr(self._stop_spec), self._stemmer_name))

    def __repr__(self) -> str:
        stop = (
            self._stop_spec
            if not isinstance(self._stop_spec, list)
            else f"<{len(self._stop)} words>"
        )
        return f"Tokenizer(stopwords={stop!r}, stemmer={self._stemmer_name!r})"

    @property
    def stop_words(self) -> frozenset[str]:
        """The words dropped (lowercased; empty when none are)."""
        return self._stop

    @property
    def plain(self) -> bool:
        """True when tokens are the lowercased words themselves (no stop words, no stemming)."""
        return self._plain

    # -- tokenizing ----------------------------------------------------
    def words(self, text: str) -> list[str]:
        """Lowercased ``\\w+`` tokens of ``text`` before stop words / stemming."""
        if not isinstance(text, str):
            raise ValidationError(f"text must be str, got {type(text).__name__}")
        return _findall(text.lower())

    def normalize(self, word: str) -> str | None:
        """Term for one lowercased word: its stem, itself, or None if it is a stop word."""
        return self._cache[word]

    def encode(self, text: str) -> list[str]:
        """Tokens of ``text`` (see the module docstring for what a token is).

        Parameters
        ----------
        text : str
            Any Unicode text; empty or whitespace-only text gives ``[]``.

        Returns
        -------
        list of str
        """
        words = self.words(text)
        if self._plain:
            return words
        return [t for t in map(self._cache.__getitem__, words) if t is not None]

    def encode_batch(self, texts: Iterable[str]) -> list[list[str]]:
        """:meth:`encode` of every text."""
        return [self.encode(t) for t in texts]

    def count_tokens(self, text: str) -> int:
        """``len(self.encode(text))`` without building the stemmed list."""
        words = self.words(text)
        if not self._stop:
            return len(words)
        stop = self._stop
        return sum(1 for w in words if w not in stop)
