"""Text in and out of the engine: the model's tokenizer, its chat template, incremental detokenization.

``TextTokenizer`` wraps a ``tokenizers`` tokenizer (the same backend transformers uses, read from
the ``tokenizer.json`` the loader wrote) and renders the chat template with Jinja2 the way
transformers' ``apply_chat_template`` does (sandboxed, ``trim_blocks`` / ``lstrip_blocks``).

``Detokenizer`` turns one request's output tokens into text deltas as they arrive:

* it never splits a multi-byte character: a delta is released only when the decoded text does
  not end in U+FFFD (an incomplete UTF-8 sequence), using vLLM's prefix/read offsets so each step
  decodes a few tokens, not the whole output;
* stop strings never leak: text that could still be the start of a stop string is held back
  until it cannot be, and on a match the text is cut before the stop string.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Sequence

from llmds._checks import check_token_ids, unpaired_surrogate
from llmds.errors import ValidationError

__all__ = ["TextTokenizer", "Detokenizer", "check_chat_template", "check_unicode"]


class TextTokenizer:
    """Encode, decode and apply the chat template.

    Parameters
    ----------
    tokenizer_json : path of a ``tokenizers`` JSON file
    chat_template : Jinja2 source or None
    special_tokens : ``{"bos_token": ..., "eos_token": ...}`` passed to the template

    ``backend`` is the ``tokenizers.Tokenizer`` itself (``Detokenizer`` decodes with it directly).
    """

    def __init__(self, tokenizer_json: str, chat_template: str | None = None,
                 special_tokens: dict[str, str] | None = None) -> None:
        from tokenizers import Tokenizer  # here: importing this module needs no tokenizers

        self.backend = Tokenizer.from_file(tokenizer_json)
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self._template = None if chat_template is None else _compile(chat_template)  # a bad one fails here
        self.special_ids = frozenset(
            t.get("id") for t in json.loads(self.backend.to_str()).get("added_tokens", []) if t.get("special"))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise ValidationError(f"prompt must be a str, got {type(text).__name__}")
        try:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:  # the backend refuses str that is not valid Unicode
            check_unicode("prompt", text)
            raise

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_str(self, token_id: int) -> str:
        return self.backend.decode([token_id], skip_special_tokens=False)

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (``[{"role": ..., "content": ...}, ...]``)."""
        if self.chat_template is None:
            raise ValidationError("this model has no chat template; send a plain prompt")
        msgs = _check_messages(messages)
        if self._template is None:
            self._template = _compile(self.chat_template)
        return self._template.render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                     **self.special_tokens)

    def encode_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))

    def check_ids(self, ids: Any, name: str = "prompt_token_ids") -> list[int]:
        return check_token_ids(name, ids, self.vocab_size)

    def encode_prompt(self, prompt: Any) -> list[int]:
        """Token ids of a prompt given as text, token ids, or chat messages (``[{"role",
        "content"}, ...]``, rendered with the chat template); ``ValidationError`` when empty."""
        if isinstance(prompt, str):
            ids = self.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
            ids = self.encode_chat(prompt)
        else:
            ids = self.check_ids(prompt)
        if not ids:
            raise ValidationError("the prompt is empty: give at least one token")
        return ids


def check_unicode(name: str, text: str) -> str:
    """``text`` unless it holds an unpaired UTF-16 surrogate (``ValidationError``: no tokenizer takes it)."""
    if (why := unpaired_surrogate(text)) is not None:
        raise ValidationError(f"{name} {why}")
    return text


def check_chat_template(source: Any) -> str:
    """``source`` if it is a Jinja2 chat template that compiles (``ValidationError`` otherwise)."""
    if not isinstance(source, str) or not source.strip():
        raise ValidationError("chat_template must be the non-empty source of a Jinja2 template")
    _compile(source)
    return source


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValidationError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ValidationError(f"messages[{i}] must be a dict with a str 'role' and a 'content'")
        content = m["content"]
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content):
                raise ValidationError(f"messages[{i}].content: only text parts are supported")
            content = "".join(parts)
        if not isinstance(content, str):
            raise ValidationError(f"messages[{i}].content must be a string")
        check_unicode(f"messages[{i}].content", content)
        out.append({**m, "content": content})
    return out


def _compile(source: str):
    from jinja2 import TemplateError, ext  # here: only chat prompts need jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValidationError(f"chat template: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ValidationError(f"the chat template does not compile: {exc}") from None


class Detokenizer:
    """One request's output text, released in safe deltas (see the module docstring).

    ``push(token_id)`` returns the newly releasable text; ``stopped`` is the stop string that
    matched (the text ends before it), ``text`` the full output text so far.
    """

    __slots__ = ("_dec", "_ids", "_prefix", "_read", "text", "_sent", "_stops", "_hold", "stopped", "_skip")

    def __init__(self, tokenizer: TextTokenizer, stop: Sequence[str] = (), skip_special_tokens: bool = True) -> None:
        self._dec = tokenizer.backend.decode
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""
        self._sent = 0
        self._stops = tuple(stop)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self.stopped: str | None = None
        self._skip = skip_special_tokens

    def push(self, token_id: int) -> str:
        """Add one token; return the text that can be released now."""
        if self.stopped is not None:
            return ""
        ids = self._ids
        ids.append(token_id)
        dec = self._dec
        prefix_text = dec(ids[self._prefix:self._read], skip_special_tokens=self._skip)
        new_text = dec(ids[self._prefix:], skip_special_tokens=self._skip)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            added = new_text[len(prefix_text):]
            self._prefix, self._read = self._read, len(ids)
            start = len(self.text)
            self.text += added
            if self._stops:
                lo = max(0, start - self._hold)
                hit, cut = None, len(self.text)
                for s in self._stops:
                    i = self.text.find(s, lo)
                    if i != -1 and i < cut:
                        hit, cut = s, i
                if hit is not None:
                    self.stopped = hit
                    self.text = self.text[:cut]
                    out = self.text[self._sent:]
                    self._sent = len(self.text)
                    return out
        end = len(self.text) - self._hold
        if end <= self._sent:
            return ""
        out = self.text[self._sent:end]
        self._sent = end
        return out

    def flush(self) -> str:
        """The text held back (call when the request finishes), an incomplete last character included."""
        ids = self._ids
        if self.stopped is None and self._read < len(ids):
            dec = self._dec
            prefix_text = dec(ids[self._prefix:self._read], skip_special_tokens=self._skip)
            self.text += dec(ids[self._prefix:], skip_special_tokens=self._skip)[len(prefix_text):]
            self._prefix = self._read = len(ids)
        out = self.text[self._sent:]
        self._sent = len(self.text)
        return out
