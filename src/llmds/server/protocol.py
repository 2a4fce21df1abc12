"""Request bodies of the OpenAI API (pydantic), and their translation to :class:`SamplingParams`.

Fields follow OpenAI's names, types and ranges; extensions follow vLLM's names (``top_k``,
``min_p``, ``repetition_penalty``, ``ignore_eos``, ``stop_token_ids``, ``priority``, and the
``/tokenize`` / ``/detokenize`` bodies) plus ``rag`` on chat completions.  Models are strict
(``"0.5"`` is not a number, ``true`` is not an int) and ignore unknown fields, as OpenAI's server
does.  Every string is checked to be valid Unicode (JSON can carry an unpaired UTF-16 surrogate,
``"\\ud800"``, which no tokenizer accepts).  A field that takes several shapes (a string or a list
of strings, text or token ids) picks its shape from the value, so an error names the limit of the
shape that was sent.  The engine's own checks (:class:`SamplingParams`) run after these and give
the same typed errors for anything the schema lets through.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag

from llmds._checks import unpaired_surrogate
from llmds.engine.config import SamplingParams
from llmds.engine.structured import StructuredOutputs
from llmds.errors import ValidationError

__all__ = ["ChatCompletionRequest", "ChatMessage", "Tool", "NamedToolChoice", "ResponseFormat", "CompletionRequest", "EmbeddingRequest", "RetrieveRequest",
           "TokenizeRequest", "DetokenizeRequest", "RagOptions", "MAX_STOP", "MAX_PROMPTS", "MAX_N"]

MAX_STOP = 16  # stop strings per request
MAX_PROMPTS = 64  # prompts in one /v1/completions call
MAX_EMBED_INPUTS = 2048
MAX_N = 128  # choices per request (OpenAI's limit; the engine also needs n <= max_num_seqs)
MAX_LOGIT_BIAS = 1024  # tokens one logit_bias names
MAX_TOOLS = 128  # tools of one request (OpenAI's limit), tool calls of one message
MAX_CHOICES = 1024  # strings of one guided_choice

_U64 = 2**64 - 1
_I64 = 2**63


def _valid_unicode(s: str) -> str:
    if (why := unpaired_surrogate(s)) is not None:
        raise ValueError(why)
    return s


Text = Annotated[str, AfterValidator(_valid_unicode)]
_NonEmpty = Annotated[str, Field(min_length=1), AfterValidator(_valid_unicode)]
_TokenId = Annotated[int, Field(ge=0)]
_TokenIds = Annotated[list[_TokenId], Field(min_length=1)]


def _shape(value: Any) -> str | None:
    """The shape tag of a string-or-list field: ``str``, ``list[str]``, ``list[int]``, ``list[list[int]]``."""
    if isinstance(value, str):
        return "str"
    if not isinstance(value, list):
        return None
    first = value[0] if value else ""
    if isinstance(first, str):
        return "list[str]"
    return "list[list[int]]" if isinstance(first, list) else "list[int]"


def _str_or_list(value: Any) -> str | None:
    return "str" if isinstance(value, str) else "list" if isinstance(value, list) else None


def _one_of(*shapes: tuple[str, Any], what: str, shape=_shape) -> Any:
    """A union whose member is chosen by ``shape`` (errors then come from that member only)."""
    return Annotated[Union[tuple(Annotated[t, Tag(tag)] for tag, t in shapes)],
                     Discriminator(shape, custom_error_type="invalid_shape", custom_error_message=f"must be {what}")]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


_FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
_Schema = Annotated[dict[str, Any], Field(description="a JSON schema")]


class FunctionCall(_Strict):
    name: _FunctionName
    arguments: Text = Field(description="the arguments as JSON text")


class ToolCall(_Strict):
    id: Text
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: _one_of(("str", Text), ("list", list[TextPart]), what="a string or a list of text parts",
                     shape=_str_or_list) | None = None
    name: Text | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None  # an assistant's calls
    tool_call_id: Text | None = None  # a tool message: the call it answers

    @property
    def text(self) -> str:
        c = self.content
        return "" if c is None else c if isinstance(c, str) else "".join(p.text for p in c)

    def as_dict(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text}


class FunctionDefinition(_Strict):
    name: _FunctionName
    description: Text | None = None
    parameters: _Schema | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class _ChoiceName(_Strict):
    name: _FunctionName


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: _ChoiceName


class JsonSchemaFormat(_Strict):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: Text | None = None
    json_schema: _Schema | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's ``response_format``: ``text``, ``json_object`` or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsField(_Strict):
    """vLLM's ``structured_outputs`` object (give one of json, regex, choice, grammar, json_object)."""

    json_: _Schema | Text | None = Field(None, alias="json")
    regex: Text | None = None
    choice: Annotated[list[_NonEmpty], Field(min_length=1, max_length=MAX_CHOICES)] | None = None
    grammar: Text | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = Field(True, description="compact JSON (the default here; vLLM's is false)")


class RagOptions(_Strict):
    """Retrieval-augmented generation: the ``top_k`` best chunks for ``query`` (default: the last
    user message) go first in the prompt, in a fixed order, so their KV blocks are shared."""

    top_k: int = Field(4, ge=1, le=32)
    query: _NonEmpty | None = None


_Stop = _one_of(("str", Text), ("list[str]", Annotated[list[_NonEmpty], Field(max_length=MAX_STOP)]),
                what=f"a string or a list of at most {MAX_STOP} non-empty strings")
_BiasKey = Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]


class _Sampling(_Strict):
    """Sampling fields shared by completions and chat completions."""

    model: Text | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N, description="choices sampled from one prefill of the prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: _Stop | None = None
    seed: int | None = Field(None, ge=-_I64, le=_U64)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: Annotated[dict[_BiasKey, Annotated[float, Field(ge=-100.0, le=100.0)]],
                          Field(max_length=MAX_LOGIT_BIAS)] | None = None
    user: Text | None = None
    # vLLM's extensions
    top_k: int = Field(-1, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    stop_token_ids: Annotated[list[_TokenId], Field(max_length=MAX_STOP)] | None = None
    skip_special_tokens: bool = True
    priority: int = Field(0, ge=-(2**31), le=2**31 - 1)
    # structured outputs: OpenAI's response_format; vLLM's guided_* fields and structured_outputs object
    response_format: ResponseFormat | None = None
    guided_json: _Schema | Text | None = None
    guided_regex: Text | None = None
    guided_choice: Annotated[list[_NonEmpty], Field(min_length=1, max_length=MAX_CHOICES)] | None = None
    guided_grammar: Text | None = None
    structured_outputs: StructuredOutputsField | None = None

    def structured(self) -> tuple[StructuredOutputs | None, str | None]:
        """The output constraint this body asks for and the field that asked (``ValidationError``
        when several fields constrain the output or the one given is malformed)."""
        given = []
        rf = self.response_format
        if rf is not None and rf.type != "text":
            if rf.type == "json_object":
                given.append(("response_format", {"json_object": True}))
            else:
                if rf.json_schema is None or rf.json_schema.json_schema is None:
                    raise ValidationError("response_format.json_schema.schema: a json_schema response format "
                                          "needs json_schema: {name, schema}")
                given.append(("response_format", {"json": rf.json_schema.json_schema}))
        for name, key in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                          ("guided_grammar", "grammar")):
            if getattr(self, name) is not None:
                given.append((name, {key: getattr(self, name)}))
        so = self.structured_outputs
        if so is not None:
            spec = {k: v for k, v in (("json", so.json_), ("regex", so.regex), ("choice", so.choice),
                                      ("grammar", so.grammar), ("json_object", so.json_object)) if v}
            spec["any_whitespace"] = not so.disable_any_whitespace
            given.append(("structured_outputs", spec))
        if not given:
            return None, None
        if len(given) > 1:
            raise ValidationError(f"{given[1][0]}: only one of response_format, guided_json, guided_regex, "
                                  f"guided_choice, guided_grammar and structured_outputs may constrain the output; "
                                  f"got {[g[0] for g in given]}")
        param, spec = given[0]
        try:
            return StructuredOutputs(**spec), param
        except ValidationError as exc:
            raise ValidationError(f"{param}: {exc}") from None

    def sampling_params(self, max_tokens: int, logprobs: int | None,
                        structured: StructuredOutputs | None = None) -> SamplingParams:
        """The engine's parameters (raises ``ValidationError`` naming the bad one)."""
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        bias = {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            min_p=self.min_p, seed=self.seed, stop=stop, stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos, repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logprobs=logprobs, skip_special_tokens=self.skip_special_tokens, n=self.n, logit_bias=bias,
            structured_outputs=structured)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1, description="default: the rest of the context")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    rag: RagOptions | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprobs_k(self) -> int | None:
        """``top_logprobs`` when ``logprobs`` is on (``ValidationError`` for one without the other)."""
        if self.top_logprobs is not None and not self.logprobs:
            raise ValidationError("top_logprobs needs logprobs: true (it sets how many of the most likely "
                                  "tokens each logprobs entry lists)")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: _one_of(("str", Text), ("list[str]", Annotated[list[Text], Field(min_length=1, max_length=MAX_PROMPTS)]),
                    ("list[int]", _TokenIds),
                    ("list[list[int]]", Annotated[list[_TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]),
                    what=f"a string, a list of at most {MAX_PROMPTS} strings, token ids, or a list of at "
                         f"most {MAX_PROMPTS} token-id lists")
    max_tokens: int = Field(16, ge=0, description="OpenAI's default for completions: 16")
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: Text | None = None
    best_of: int | None = Field(None, ge=1, le=1)

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class EmbeddingRequest(_Strict):
    input: _one_of(("str", Text),
                   ("list[str]", Annotated[list[Text], Field(min_length=1, max_length=MAX_EMBED_INPUTS)]),
                   ("list[int]", _TokenIds),
                   ("list[list[int]]", Annotated[list[_TokenIds], Field(min_length=1, max_length=MAX_EMBED_INPUTS)]),
                   what=f"a string, a list of at most {MAX_EMBED_INPUTS} strings, token ids, or a list of "
                        f"at most {MAX_EMBED_INPUTS} token-id lists")
    model: Text | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: Text | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        """The texts, or the token-id lists (of the embedding model's tokenizer)."""
        x = self.input
        if isinstance(x, str):
            return [x]
        if isinstance(x[0], int):
            return [list(x)]
        return list(x)


class DocumentRequest(_Strict):
    text: str = Field(min_length=1)
    source: str | None = None


class RetrieveRequest(_Strict):
    query: _NonEmpty
    top_k: int = Field(4, ge=1, le=100)


class TokenizeRequest(_Strict):
    """vLLM's ``/tokenize``: ``prompt`` (a text) or ``messages`` (rendered with the chat template)."""

    model: Text | None = None
    prompt: Text | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValidationError("prompt or messages: give exactly one of them")


class DetokenizeRequest(_Strict):
    model: Text | None = None
    tokens: Annotated[list[_TokenId], Field(max_length=1 << 20)]
