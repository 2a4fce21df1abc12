"""Structured outputs: constrained decoding with llguidance.

A request with :class:`StructuredOutputs` in its ``SamplingParams`` gets a grammar matcher
(``llguidance.LLMatcher``).  Each step, :meth:`GuideBatch.mask` fills the token bitmask of every
constrained request of the step in one batched call (``LLExecutor``, over its own threads, the
GIL released) and sets the logits of the forbidden tokens to ``-inf`` before sampling, so greedy,
sampling, penalties, logit bias and logprobs all see the masked distribution.  The matcher
consumes each sampled token; when its grammar cannot continue (``is_stopped``), the request
finishes with ``finish_reason="stop"``.  EOS is allowed exactly when the grammar accepts.

Grammars are compiled by :class:`GrammarCompiler`: JSON schema, regex, choice, Lark / GBNF
grammar, or any JSON object, keyed by a SHA-256 of the canonical spec in a bounded LRU of
compiled matchers in their start state.  A request's matcher is a ``deep_copy`` of that
(microseconds), so a repeated schema compiles once.  Compilation drops the GIL and is safe from
any thread: the async engine compiles on a worker thread before it queues the request, so a
slow schema never stalls the engine's steps.

Why llguidance rather than xgrammar 0.2.9 (``benchmarks/bench_structured.py`` runs both on the same
token streams; 2-core AMD EPYC): xgrammar fills the masks of 32 matchers faster (0.25 against
1.17 ms a step), but both are under 1% of a decode step of 32 requests; llguidance compiles a
schema 8-13x faster (0.4-1.1 ms against 5-9 ms) and starts a cached one ~20x faster, which is what
requests that each bring their own schema or tool list pay; it gives the tokens a grammar forces
as tokens (jump-forward without re-tokenizing), names the offending part of a bad schema, bounds
the work of one mask (``LLParserLimits``) and has no dependencies (xgrammar needs torch, triton
and transformers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from llmds.errors import ValidationError

log = logging.getLogger(__name__)

__all__ = ["StructuredOutputs", "GrammarCompiler", "GuideBatch", "Guides", "MAX_SPEC_BYTES", "MAX_SCHEMA_DEPTH", "GRAMMAR_ERROR"]

MAX_SPEC_BYTES = 64 * 1024  # a schema, regex or grammar longer than this (as UTF-8 text) is refused
MAX_SCHEMA_DEPTH = 32  # JSON nesting of a schema document
GRAMMAR_ERROR = "structured_outputs: "  # how a compile error's message starts (the server names its field)
_KINDS = ("json", "regex", "choice", "grammar", "json_object")


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True)
class StructuredOutputs:
    """What a request's output must match (vLLM's ``StructuredOutputsParams`` names; set exactly one).

    Parameters
    ----------
    json : dict or str
        A JSON schema (an object, or its JSON text).
    regex : str
        A regular expression the whole output matches (Rust ``regex`` syntax).
    choice : sequence of str
        The output is exactly one of these strings.
    grammar : str
        A Lark grammar (llguidance's dialect) or a GBNF grammar (llama.cpp's).
    json_object : bool
        Any JSON object (OpenAI's ``response_format={"type": "json_object"}``).
    any_whitespace : bool
        Let JSON carry any whitespace between tokens.  Off by default (unlike vLLM): the output is
        compact JSON (``", "`` and ``": "`` separators), because a small model allowed to emit
        whitespace may emit nothing else until ``max_tokens``.

    ``key`` is the canonical SHA-256 of the spec: equal schemas written with keys in another
    order share one compiled grammar.
    """

    json: Any = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    json_object: bool = False
    any_whitespace: bool = False

    def __post_init__(self) -> None:
        given = [k for k in _KINDS if (self.json_object if k == "json_object" else getattr(self, k) is not None)]
        if len(given) != 1:
            raise ValidationError(f"structured outputs take exactly one of {list(_KINDS)}, got {given or 'none'}")
        if not isinstance(self.any_whitespace, bool) or not isinstance(self.json_object, bool):
            raise ValidationError("json_object and any_whitespace must be booleans")
        if self.json is not None:
            schema = self.json
            if isinstance(schema, (str, bytes)):
                if len(schema) > MAX_SPEC_BYTES:
                    raise ValidationError(f"the JSON schema is longer than {MAX_SPEC_BYTES} bytes")
                try:
                    schema = json.loads(schema)
                except ValueError as exc:
                    raise ValidationError(f"the JSON schema is not valid JSON: {exc}") from None
            if not isinstance(schema, (dict, bool)):
                raise ValidationError(f"a JSON schema must be an object (or true/false), got {type(schema).__name__}")
            _check_depth(schema)
            _set(self, "json", schema)
        if self.regex is not None and not isinstance(self.regex, str):
            raise ValidationError(f"regex must be a string, got {type(self.regex).__name__}")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            raise ValidationError("grammar must be a non-empty string (Lark or GBNF)")
        if self.choice is not None:
            c = self.choice
            if isinstance(c, str) or not isinstance(c, (list, tuple)) or not c \
                    or not all(isinstance(x, str) and x for x in c):
                raise ValidationError("choice must be a non-empty list of non-empty strings")
            _set(self, "choice", tuple(c))
        try:
            size = len(self.text.encode())
        except (UnicodeEncodeError, TypeError, ValueError) as exc:
            raise ValidationError(f"the {_NAMES[self.kind]} is not valid JSON text: {exc}") from None
        if size > MAX_SPEC_BYTES:
            raise ValidationError(f"the structured-output spec is longer than {MAX_SPEC_BYTES} bytes")

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if (self.json_object if k == "json_object" else getattr(self, k) is not None))

    @property
    def text(self) -> str:
        """The spec as canonical text (sorted keys, no spaces)."""
        k = self.kind
        if k == "json":
            return json.dumps(self.json, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if k == "choice":
            return json.dumps(list(self.choice), ensure_ascii=False)
        return "" if k == "json_object" else getattr(self, k)

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.kind}\0{int(self.any_whitespace)}\0{self.text}".encode()).hexdigest()


def _check_depth(doc: Any) -> None:
    stack = [(doc, 1)]
    while stack:
        node, d = stack.pop()
        if d > MAX_SCHEMA_DEPTH:
            raise ValidationError(f"the JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)


SAFE_INTEGER = 2**53 - 1  # I-JSON's interoperable integer range (RFC 7493, section 2.2)
NUMBER_STEP = 1e-6  # the finest fraction a generated "number" gets unless its schema says otherwise
_SUB_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUB_ONES = ("additionalProperties", "items", "not", "if", "then", "else", "contains", "unevaluatedProperties")
_SUB_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def bounded_schema(schema: Any) -> Any:
    """A copy of ``schema`` whose every output is valid for ``schema``, with what a small model
    could otherwise repeat until ``max_tokens`` bounded (llguidance generates what the schema
    allows, and a greedy 135M model answers ``0.9999...`` or adds keys forever):

    * an object schema with ``properties`` and no ``additionalProperties`` takes no other keys
      (as vLLM's guidance and xgrammar backends and OpenAI's strict mode do);
    * a ``number`` or ``integer`` without a bound on a side stays within I-JSON's +-(2**53 - 1);
    * a ``number`` without ``multipleOf`` gets at most 6 decimals (``multipleOf`` 1e-6).
    Only schema keywords are walked (a property named ``"type"`` is a name, not a keyword)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for k in _SUB_MAPS:
        if isinstance(out.get(k), dict):
            out[k] = {name: bounded_schema(sub) for name, sub in out[k].items()}
    for k in _SUB_ONES:
        if isinstance(out.get(k), dict):
            out[k] = bounded_schema(out[k])
    for k in _SUB_LISTS + ("items",):
        if isinstance(out.get(k), list):
            out[k] = [bounded_schema(sub) for sub in out[k]]
    if ("properties" in out or "patternProperties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    types = out.get("type")
    types = {types} if isinstance(types, str) else set(types) if isinstance(types, list) else set()
    if types & {"number", "integer"} and "enum" not in out and "const" not in out:
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -SAFE_INTEGER
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = SAFE_INTEGER
        if "number" in types and "multipleOf" not in out:
            out["multipleOf"] = NUMBER_STEP
    return out


class GrammarCompiler:
    """Compile :class:`StructuredOutputs` into llguidance matchers, with a bounded LRU cache.

    Parameters
    ----------
    tokenizer_json : path of the model's ``tokenizer.json``
    vocab_size : int
        Width of the logits (the mask's width).
    eos_token_ids : sequence of int
        Tokens that end the output; allowed when the grammar accepts.
    maxsize : int
        Compiled grammars kept (least recently used dropped first).

    Thread-safe: :meth:`matcher` may run on any thread (the cache is behind a lock; compiling
    runs outside it, with the GIL released).  ``hits``, ``misses`` and ``compile_seconds`` count
    what the cache did.
    """

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: Sequence[int], maxsize: int = 256) -> None:
        self.tokenizer_json, self.vocab_size, self.maxsize = tokenizer_json, vocab_size, maxsize
        self._eos = sorted(eos_token_ids)
        self._tok = None
        self._llg = None
        self._limits = None
        self._cache: OrderedDict[str, Any] = OrderedDict()  # {spec key: matcher in its start state}
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self.compile_seconds = 0.0

    def _init(self) -> None:
        with self._lock:
            if self._tok is not None:
                return
            import llguidance  # here: `import llmds` and unconstrained engines never load it

            with open(self.tokenizer_json, encoding="utf-8") as f:
                text = f.read()
            self._tok = llguidance.LLTokenizer(text, n_vocab=self.vocab_size, eos_token=self._eos)
            # bounded work per mask: a grammar that needs more fails its request, never hangs a step
            self._limits = llguidance.LLParserLimits(step_lexer_fuel=200_000, step_max_items=50_000,
                                                     max_grammar_size=500_000, verbose_errors=False)
            self._llg = llguidance

    def __len__(self) -> int:
        return len(self._cache)

    def matcher(self, spec: StructuredOutputs):
        """A fresh matcher for ``spec`` (compiled once per distinct spec); raises ``ValidationError``
        naming the problem when the spec does not compile."""
        import time

        if self._tok is None:
            self._init()
        key = spec.key
        with self._lock:
            m = self._cache.get(key)
            if m is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return m.deep_copy()
        t0 = time.perf_counter()
        m = self._compile(spec)
        with self._lock:
            self.misses += 1
            self.compile_seconds += time.perf_counter() - t0
            self._cache[key] = m
            while len(self._cache) > self.maxsize:
                self._cache.popitem(last=False)
        return m.deep_copy()

    def _compile(self, spec: StructuredOutputs):
        llg = self._llg
        M = llg.LLMatcher
        kind = spec.kind
        try:
            if kind in ("json", "json_object"):
                schema = {"type": "object"} if kind == "json_object" else bounded_schema(spec.json)
                opts = {"whitespace_flexible": True} if spec.any_whitespace else \
                    {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
                grammar = M.grammar_from_json_schema(schema, defaults=opts)
            elif kind == "regex":
                grammar = M.grammar_from_regex(spec.regex)
            elif kind == "choice":
                grammar = M.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.choice))
            else:
                grammar = llg.grammar_from("grammar", spec.grammar)  # Lark, or GBNF converted to Lark
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"{GRAMMAR_ERROR}the {_NAMES[kind]} does not compile: {exc}") from None
        m = M(self._tok, grammar, log_level=0, limits=self._limits)
        if not m.is_error():  # the first mask builds the lexer: do it here, off the engine's step
            m.compute_bitmask()
        if m.is_error():
            raise ValidationError(f"{GRAMMAR_ERROR}the {_NAMES[kind]} does not compile: {_first_line(m.get_error())}")
        return m

    def stats(self) -> dict[str, Any]:
        return {"grammars_cached": len(self._cache), "grammar_cache_hits": self.hits,
                "grammar_cache_misses": self.misses, "grammar_compile_seconds": self.compile_seconds}


_NAMES = {"json": "JSON schema", "json_object": "JSON object grammar", "regex": "regex", "choice": "choice list",
          "grammar": "grammar"}


def _first_line(msg: str) -> str:
    msg = msg.strip()
    return msg if len(msg) <= 500 else msg[:500] + "..."


class GuideBatch:
    """The token bitmask of a step's constrained rows, filled in one batched call and applied to logits.

    ``bits`` is a preallocated ``[rows, ceil(vocab / 32)]`` int32 buffer (bit ``t % 32`` of word
    ``t // 32`` set = token ``t`` allowed), grown when a step has more constrained rows.
    """

    def __init__(self, vocab_size: int, threads: int | None = None) -> None:
        import llguidance
        import torch  # here: SamplingParams (this module) is imported by the CLI without torch

        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self.executor = llguidance.LLExecutor(num_threads=threads)
        self.bits = torch.empty((0, self.words), dtype=torch.int32)

    def mask(self, logits: torch.Tensor, rows: Sequence[int], matchers: Sequence[Any]) -> None:
        """Set ``logits[rows[j], t] = -inf`` for every token ``t`` that ``matchers[j]`` forbids (in place;
        ``logits`` is a contiguous float32 CPU tensor)."""
        import torch

        n = len(rows)
        if self.bits.shape[0] < n:
            self.bits = torch.empty((max(n, 2 * self.bits.shape[0]), self.words), dtype=torch.int32)
        bits = self.bits
        self.executor.unsafe_compute_mask_ptr([(m, j) for j, m in enumerate(matchers)], bits.data_ptr(),
                                              self.words * 4, bits.shape[0])
        from llmds.engine._mask_kernel import apply_token_bitmask

        with torch.inference_mode():  # the logits are the forward's inference tensor
            x = logits.numpy()  # a view: the kernel writes the tensor
            apply_token_bitmask(x, np.asarray(rows, dtype=np.int64), bits.numpy(), self.vocab_size)


class Guides:
    """The engine's structured-outputs side: the grammar compiler, the batched mask of each step,
    advancing the matchers on sampled tokens and the tokens a grammar forces (jump-forward)."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: Sequence[int], cache_size: int,
                 threads: int | None = None) -> None:
        self.compiler = GrammarCompiler(tokenizer_json, vocab_size, eos_token_ids, cache_size)
        self.vocab_size, self.threads, self.eos = vocab_size, threads, min(eos_token_ids)
        self._batch: GuideBatch | None = None  # made at the first constrained step

    def matcher(self, spec: StructuredOutputs):
        return self.compiler.matcher(spec)

    def mask(self, logits, rows: Sequence[int], matchers: Sequence[Any]) -> None:
        """Forbid, in ``logits`` rows ``rows``, every token their matchers do not allow now."""
        if self._batch is None:
            self._batch = GuideBatch(self.vocab_size, self.threads)
        self._batch.mask(logits, rows, matchers)
        for i, g in zip(rows, matchers):
            if g.is_error():  # past its resource limits: end the output (EOS is always a token)
                log.warning("grammar error, ending the output: %s", _first_line(g.get_error()))
                logits[i] = float("-inf")
                logits[i, self.eos] = 0.0

    @staticmethod
    def advance(items: Sequence[tuple[Any, int, Any]], stopped: list) -> list:
        """Consume each ``(matcher, token, request state)``; a request whose grammar is complete
        (``is_stopped``) joins ``stopped``.  Returns the matchers that advanced (for ``rollback``)."""
        consumed = []
        for g, tok, s in items:
            if g.is_error():
                continue
            if g.consume_token(tok):
                consumed.append(g)
            if g.is_stopped() and s.request_id not in stopped and tok not in s.stop_token_ids:
                stopped.append(s.request_id)
        return consumed

    @staticmethod
    def rollback(consumed: Sequence[Any]) -> None:
        for g in consumed:
            g.rollback(1)

    @staticmethod
    def forced(g, room: int, stop_token_ids) -> list[int]:
        """The tokens ``g`` forces next, at most ``room``, consumed (empty when none or a stop id)."""
        if room < 1 or g.is_stopped() or g.is_error():
            return []
        ff = g.compute_ff_tokens()[:room]
        if not ff or not stop_token_ids.isdisjoint(ff) or not g.consume_tokens(ff):
            return []
        return ff
