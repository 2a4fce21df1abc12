"""Request bodies of the OpenAI API (pydantic), and their translation to :class:`SamplingParams`.

Fields follow OpenAI's names, types and ranges; extensions follow vLLM's names (``top_k``,
``min_p``, ``repetition_penalty``, ``ignore_eos``, ``stop_token_ids``, ``priority``) plus
``rag`` on chat completions.  Models are strict (``"0.5"`` is not a number, ``true`` is not an
int) and ignore unknown fields, as OpenAI's server does.  The engine's own checks
(:class:`SamplingParams`) run after these and give the same typed errors for anything the
schema lets through.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmds.engine.config import SamplingParams

__all__ = ["ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "RetrieveRequest",
           "RagOptions", "MAX_STOP", "MAX_PROMPTS"]

MAX_STOP = 16  # stop strings per request
MAX_PROMPTS = 64  # prompts in one /v1/completions call
MAX_EMBED_INPUTS = 2048

_U64 = 2**64 - 1
_I64 = 2**63


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def as_dict(self) -> dict[str, str]:
        c = self.content
        text = "" if c is None else c if isinstance(c, str) else "".join(p.text for p in c)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": text}


class RagOptions(_Strict):
    """Retrieval-augmented generation: the ``top_k`` best chunks for ``query`` (default: the last
    user message) go first in the prompt, in a fixed order, so their KV blocks are shared."""

    top_k: int = Field(4, ge=1, le=32)
    query: str | None = Field(None, min_length=1)


class _Sampling(_Strict):
    """Sampling fields shared by completions and chat completions."""

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="only n=1 is served")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(None, ge=-_I64, le=_U64)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's extensions
    top_k: int = Field(-1, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    stop_token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_STOP)] | None = None
    skip_special_tokens: bool = True
    priority: int = Field(0, ge=-(2**31), le=2**31 - 1)

    def sampling_params(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        """The engine's parameters (raises ``ValidationError`` naming the bad one)."""
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            min_p=self.min_p, seed=self.seed, stop=stop, stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos, repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logprobs=logprobs, skip_special_tokens=self.skip_special_tokens)

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

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


_TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_Sampling):
    prompt: (str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)] | _TokenIds
             | Annotated[list[_TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)])
    max_tokens: int = Field(16, ge=0, description="OpenAI's default for completions: 16")
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=1)

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class EmbeddingRequest(_Strict):
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_EMBED_INPUTS)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class RetrieveRequest(_Strict):
    query: str = Field(min_length=1)
    top_k: int = Field(4, ge=1, le=100)
