"""Tool calls on the chat API: tools rendered into the prompt, calls constrained by a grammar and parsed.

SmolLM2's chat template knows no tools, so the server renders them the way the ChatML models of
its family (Qwen2.5, Hermes) were trained to see them:

* the tool list goes at the end of the system message, one JSON function signature per line
  inside ``<tools></tools>``, with the instruction to answer calls as
  ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``;
* an assistant message's ``tool_calls`` are rendered as such blocks after its text;
* ``role: "tool"`` messages become a user turn of ``<tool_response>\\n...\\n</tool_response>``
  blocks (consecutive tool messages share one turn).

``tool_choice`` ``"required"`` or a named function constrains the output to those blocks (a Lark
grammar embedding each tool's parameter schema, so the arguments validate by construction; one
block when ``parallel_tool_calls`` is false or a function is named).  ``"auto"`` leaves the model
free and parses the blocks it writes; ``"none"`` renders no tools.  Responses carry OpenAI
``tool_calls`` (``call_...`` ids, JSON ``arguments``) with ``finish_reason: "tool_calls"``;
streams send each call as one ``tool_calls`` delta once its block closes.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Sequence

from llmds.engine.structured import StructuredOutputs
from llmds.errors import ValidationError
from llmds.server.responses import ChatFormat

__all__ = ["render_messages", "tool_constraint", "parse_tool_calls", "ToolCallStream", "ToolChatFormat"]

OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"
_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
           "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n")
_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
           "<tool_call></tool_call> XML tags:\n<tool_call>\n"
           '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def render_messages(messages: Sequence, tools: Sequence | None, tool_choice: Any) -> list[dict[str, str]]:
    """Plain ``{"role", "content"}`` messages for the chat template (see the module docstring)."""
    out: list[dict[str, str]] = []
    for m in messages:
        if m.role == "tool":
            block = f"<tool_response>\n{m.text}\n</tool_response>"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
            continue
        d = m.as_dict()
        if m.role == "assistant" and m.tool_calls:
            blocks = [OPEN + json.dumps({"name": c.function.name, "arguments": _args(c.function.arguments)},
                                        ensure_ascii=False) + CLOSE for c in m.tool_calls]
            d["content"] = "\n".join(([d["content"]] if d["content"] else []) + blocks)
        out.append(d)
    for d in out:
        d.pop("_tool", None)
    if tools and tool_choice != "none":
        block = _HEADER + "\n".join(json.dumps({"type": "function", "function": t.function.model_dump(
            exclude_none=True, by_alias=True)}, ensure_ascii=False) for t in tools) + _FOOTER
        if out and out[0]["role"] == "system":
            out[0]["content"] = (out[0]["content"] + "\n\n" + block).lstrip()
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def _args(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def tool_constraint(tools: Sequence, tool_choice: Any, parallel: bool) -> StructuredOutputs | None:
    """The grammar of the output that ``tool_choice`` requires (None for ``auto`` / ``none``);
    ``ValidationError`` for a named function that is not among ``tools``."""
    if tool_choice in (None, "none", "auto"):
        return None
    if not tools:
        raise ValidationError(f"tool_choice: {_choice_text(tool_choice)} needs tools")
    if tool_choice == "required":
        chosen = list(tools)
    else:
        name = tool_choice.function.name
        chosen = [t for t in tools if t.function.name == name]
        if not chosen:
            raise ValidationError(f"tool_choice: no tool named {name!r} (tools: {[t.function.name for t in tools]})")
        parallel = False
    calls = [{"type": "object", "properties": {"name": {"const": t.function.name},
                                               "arguments": t.function.parameters or {"type": "object"}},
              "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
    schema = {**(calls[0] if len(calls) == 1 else {"anyOf": calls}), "x-guidance": _COMPACT}
    call = "call: " + json.dumps(OPEN) + " %json " + json.dumps(schema) + " " + json.dumps(CLOSE)
    start = 'start: call ("\\n" call)*' if parallel else "start: call"
    return StructuredOutputs(grammar=start + "\n" + call + "\n")


def _choice_text(choice: Any) -> str:
    return choice if isinstance(choice, str) else f"function {choice.function.name!r}"


def _call(body: str) -> dict[str, Any] | None:
    """An OpenAI tool call from the JSON inside a ``<tool_call>`` block (None if it is not one)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", {})
    if isinstance(args, str):
        args = _args(args)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}}


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """``(content, tool calls)`` of a whole output: the ``<tool_call>`` blocks that parse become
    calls, the rest is content (None when only whitespace remains)."""
    stream = ToolCallStream()
    content, calls = stream.feed(text)
    c2, k2 = stream.finish()
    content = (content + c2).strip()
    return content or None, calls + k2


class ToolCallStream:
    """Split a streamed output into content deltas and complete tool calls.

    Text that could be the start of ``<tool_call>`` is held back until it cannot be; a block is
    parsed when its closing tag arrives (a block that does not parse goes out as content).
    """

    __slots__ = ("buf", "in_call", "count")

    def __init__(self) -> None:
        self.buf = ""
        self.in_call = False
        self.count = 0  # calls emitted so far

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        self.buf += text
        content, calls = [], []
        while True:
            if not self.in_call:
                i = self.buf.find(OPEN)
                if i >= 0:
                    content.append(self.buf[:i])
                    self.buf, self.in_call = self.buf[i + len(OPEN):], True
                    continue
                k = _held(self.buf)
                content.append(self.buf[:len(self.buf) - k])
                self.buf = self.buf[len(self.buf) - k:]
                break
            j = self.buf.find(CLOSE)
            if j < 0:
                break
            body, self.buf, self.in_call = self.buf[:j], self.buf[j + len(CLOSE):], False
            call = _call(body)
            if call is None:
                content.append(OPEN + body + CLOSE)
            else:
                calls.append(call)
        self.count += len(calls)
        return "".join(content), calls

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """What is held back at the end of the output (an unclosed block is content)."""
        rest = (OPEN if self.in_call else "") + self.buf
        self.buf, self.in_call = "", False
        return rest, []


def _held(buf: str) -> int:
    """Length of the longest tail of ``buf`` that is a proper prefix of ``OPEN``."""
    for k in range(min(len(buf), len(OPEN) - 1), 0, -1):
        if OPEN.startswith(buf[-k:]):
            return k
    return 0


class ToolChatFormat(ChatFormat):
    """Chat responses of a request with tools: ``tool_calls`` in messages and stream deltas.

    ``constrained``: the output is only tool-call blocks (``required`` / a named function), so
    the whitespace between them is not content.
    """

    def __init__(self, *args, constrained: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.constrained = constrained
        self.streams: dict[int, ToolCallStream] = {}

    def choice(self, i: int, out) -> dict[str, Any]:
        c = super().choice(i, out)
        content, calls = parse_tool_calls(out.output_text or "")
        if calls:
            c["message"] = {"role": "assistant", "content": None if self.constrained else content,
                            "tool_calls": calls}
            if c["finish_reason"] == "stop":
                c["finish_reason"] = "tool_calls"
        return c

    def delta(self, i: int, text: str | None, lps, finish: str | None, role: bool = False) -> dict[str, Any]:
        if role:
            return super().delta(i, text, lps, finish, role)
        st = self.streams.setdefault(i, ToolCallStream())
        before = st.count
        content, calls = st.feed(text or "")
        if finish is not None:
            rest, more = st.finish()
            content, calls = content + rest, calls + more
        c = super().delta(i, None if self.constrained else content, lps, finish)
        if calls:
            c["delta"]["tool_calls"] = [{"index": before + k, **call} for k, call in enumerate(calls)]
        if finish == "stop" and st.count:
            c["finish_reason"] = "tool_calls"
        return c
