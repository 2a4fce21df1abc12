"""Engine and sampling configuration: slotted, frozen dataclasses validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from llmds._checks import check_bool, check_choice, check_float, check_int, check_token_ids
from llmds.engine.structured import StructuredOutputs
from llmds.errors import ValidationError

__all__ = ["EngineConfig", "SamplingParams"]

_DTYPES = ("float32", "bfloat16")


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample a request's tokens (vLLM's names and defaults; immutable).

    Parameters
    ----------
    max_tokens : int
        Tokens to generate, >= 0 (0 finishes the request at once).
    temperature : float
        >= 0; 0 means greedy (argmax).
    top_p : float
        Nucleus mass in (0, 1]; 1 disables.
    top_k : int
        -1 disables, else >= 1.
    min_p : float
        In [0, 1]: drop tokens whose probability is below ``min_p`` times the top one.
    seed : int or None
        Per-request seed: the request samples the same tokens whatever it is batched with.
    stop : sequence of str
        Stop strings: generation ends before the first occurrence, which is not returned.
    stop_token_ids : sequence of int
        Extra token ids that stop generation (EOS is added unless ``ignore_eos``); not returned as text.
    ignore_eos : bool
    repetition_penalty : float
        > 0; 1 disables.  Logits of tokens seen in the prompt or output are divided by it
        (multiplied when negative), as transformers and vLLM do.
    presence_penalty, frequency_penalty : float
        In [-2, 2] (OpenAI): subtract ``presence * [count > 0] + frequency * count`` over output tokens.
    logprobs : int or None
        Return the sampled token's log-probability and the ``logprobs`` most likely ones (0..20).
    skip_special_tokens : bool
        Leave special tokens out of the text.
    n : int
        Sequences sampled from the prompt (parallel sampling, >= 1): the prompt is computed once and
        its KV blocks are shared by all ``n``; with a ``seed``, sequence ``i`` samples with ``seed + i``.
    logit_bias : mapping of token id to float, or None
        Added to those tokens' logits before sampling (OpenAI's range, -100..100; -100 bans a token).
        Stored as a tuple of ``(token id, bias)`` pairs, ascending ids.
    structured_outputs : StructuredOutputs, mapping or None
        Constrain the output to a JSON schema, regex, choice or grammar (constrained decoding,
        :mod:`llmds.engine.structured`); a mapping is turned into :class:`StructuredOutputs`.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    skip_special_tokens: bool = True
    n: int = 1
    logit_bias: tuple[tuple[int, float], ...] | None = None
    structured_outputs: StructuredOutputs | None = None

    def __post_init__(self) -> None:
        _set(self, "max_tokens", check_int("max_tokens", self.max_tokens, 0))
        _set(self, "temperature", check_float("temperature", self.temperature, 0.0))
        _set(self, "top_p", check_float("top_p", self.top_p, 0.0, 1.0, low_open=True))
        k = check_int("top_k", self.top_k)
        if k != -1 and k < 1:
            raise ValidationError(f"top_k must be -1 (disabled) or >= 1, got {k}")
        _set(self, "top_k", k)
        _set(self, "min_p", check_float("min_p", self.min_p, 0.0, 1.0))
        if self.seed is not None:
            _set(self, "seed", check_int("seed", self.seed, -(2**63), 2**64 - 1))
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise ValidationError(f"stop must be a string or a sequence of non-empty strings, got {self.stop!r}")
        _set(self, "stop", tuple(stop))
        _set(self, "stop_token_ids", tuple(check_token_ids("stop_token_ids", self.stop_token_ids)))
        check_bool("ignore_eos", self.ignore_eos)
        check_bool("skip_special_tokens", self.skip_special_tokens)
        _set(self, "repetition_penalty",
             check_float("repetition_penalty", self.repetition_penalty, 0.0, low_open=True))
        _set(self, "presence_penalty", check_float("presence_penalty", self.presence_penalty, -2.0, 2.0))
        _set(self, "frequency_penalty", check_float("frequency_penalty", self.frequency_penalty, -2.0, 2.0))
        if self.logprobs is not None:
            _set(self, "logprobs", check_int("logprobs", self.logprobs, 0, 20))
        _set(self, "n", check_int("n", self.n, 1))
        _set(self, "logit_bias", _logit_bias(self.logit_bias))
        so = self.structured_outputs
        if so is not None and not isinstance(so, StructuredOutputs):
            if not isinstance(so, dict):
                raise ValidationError(f"structured_outputs must be a StructuredOutputs or a mapping, got {type(so).__name__}")
            names = set(StructuredOutputs.__dataclass_fields__)
            if set(so) - names:
                raise ValidationError(f"unknown structured_outputs field(s) {sorted(set(so) - names)}; valid: {sorted(names)}")
            _set(self, "structured_outputs", StructuredOutputs(**so))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def _logit_bias(bias: Any) -> tuple[tuple[int, float], ...] | None:
    """``bias`` (a mapping or pairs of token id -> float) as ascending ``(id, bias)`` pairs; None if empty."""
    if bias is None:
        return None
    items = bias.items() if hasattr(bias, "items") else bias
    try:
        pairs = [(t, b) for t, b in items]
    except (TypeError, ValueError):
        raise ValidationError(f"logit_bias must map token ids to floats, got {type(bias).__name__}") from None
    ids = check_token_ids("logit_bias token ids", [t for t, _ in pairs])
    if len(set(ids)) != len(ids):
        raise ValidationError("logit_bias names a token id twice")
    out = sorted((t, check_float(f"logit_bias[{t}]", b, -100.0, 100.0)) for t, (_, b) in zip(ids, pairs))
    return tuple(out) or None


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything :class:`~llmds.engine.engine.LLMEngine` needs besides the model file.

    Parameters
    ----------
    model : str or None
        A ``.gguf`` file or a Hugging Face model folder; None = the embedded SmolLM2-135M-Instruct.
    dtype : {"float32", "bfloat16"}
        Weights and activations.  float32 is the exactness reference (token-identical to
        transformers); bfloat16 runs the linear layers about 2x faster on CPUs with AVX512-BF16 / AMX.
    quantization : {None, "gguf"}
        None dequantizes every weight into ``dtype`` at load.  ``"gguf"`` (vLLM's name) serves a
        GGUF's 4-bit linear weights as they are, on torch's int4 kernel (bfloat16 activations:
        ``dtype="bfloat16"``): a quarter of the weight bytes per decoded token; see
        :mod:`llmds.engine.quantized`.
    kv_cache_dtype : {"auto", "float32", "bfloat16"}
        K/V storage; "auto" = ``dtype``.
    block_size : int
        Tokens per KV block.
    num_blocks : int or None
        KV blocks; None = as many as ``kv_cache_memory`` bytes hold.
    kv_cache_memory : int
        Bytes for K and V of all layers (used when ``num_blocks`` is None).
    max_num_seqs : int
        Running requests at most.
    max_num_batched_tokens : int
        Tokens computed per step, decodes and prefill chunks together.
    prefill_chunk_size : int or None
        Prompt tokens one request prefills per step; None = the whole step budget.
    max_model_len : int or None
        Longest prompt + output; None = the model's context length.
    enable_prefix_caching : bool
    policy : {"fcfs", "priority", "edf"}
        Waiting-queue order (``edf``: earliest SLO deadline first).
    prefill_first : bool
        Prefill waiting prompts in steps of their own before decoding the running requests
        again (see :class:`~llmds.engine.sched.step_plan.PlannerConfig`); False mixes every
        decode into every step (chunked prefill riding along).  Default True: on bench_engine's
        32-request workload (AMD EPYC, bfloat16, 512-token budget) both give the same throughput
        (228 vs 225 tok/s) and TTFT p50 (4.8 vs 4.6 s), prefill-first an ITL p99 of 133 ms against
        535 ms and a Poisson TTFT p99 of 0.8 s against 1.2 s (docs/benchmarks.md).
    hot_prefix_threshold : int
        Pin a prompt's prefix blocks once a Count-Min sketch has seen the prefix this often (0 = never).
    max_pinned_fraction : float
        Share of the KV blocks hot prefixes may pin.
    threads : int or None
        torch / numba threads; None = their defaults (all cores).
    seed : int
        Seed of the engine's generator (requests without their own seed).
    grammar_cache_size : int
        Compiled grammars (structured outputs) kept, least recently used dropped first.
    jump_forward : bool
        When a grammar forces a run of tokens, append them without sampling and compute them in
        one forward (structured outputs; off for requests with stop strings or logprobs).
    chat_template : str or None
        A Jinja2 chat template (its source) that replaces the model's own; None = the model's.
    """

    model: str | None = None
    dtype: str = "float32"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_memory: int = 1 << 30
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    prefill_chunk_size: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    policy: str = "fcfs"
    prefill_first: bool = True
    hot_prefix_threshold: int = 4
    max_pinned_fraction: float = 0.25
    threads: int | None = None
    seed: int = 0
    grammar_cache_size: int = 256
    jump_forward: bool = True
    chat_template: str | None = None

    def __post_init__(self) -> None:
        if self.model is not None and not isinstance(self.model, str):
            _set(self, "model", str(self.model))
        check_choice("dtype", self.dtype, _DTYPES)
        check_choice("kv_cache_dtype", self.kv_cache_dtype, ("auto",) + _DTYPES)
        if self.quantization is not None:
            check_choice("quantization", self.quantization, ("gguf",))
            if self.dtype != "bfloat16":
                raise ValidationError("quantization='gguf' runs bfloat16 activations (torch's int4 kernel has no "
                                      "fast float32 path): pass dtype='bfloat16'")
        check_int("block_size", self.block_size, 1, 1024)
        if self.num_blocks is not None:
            check_int("num_blocks", self.num_blocks, 1)
        check_int("kv_cache_memory", self.kv_cache_memory, 1)
        check_int("max_num_seqs", self.max_num_seqs, 1)
        check_int("max_num_batched_tokens", self.max_num_batched_tokens, 1)
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValidationError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}) so every running request can decode each step")
        if self.prefill_chunk_size is not None:
            check_int("prefill_chunk_size", self.prefill_chunk_size, 1, self.max_num_batched_tokens)
        if self.max_model_len is not None:
            check_int("max_model_len", self.max_model_len, 2)
        check_bool("enable_prefix_caching", self.enable_prefix_caching)
        check_choice("policy", self.policy, ("fcfs", "priority", "edf"))
        check_bool("prefill_first", self.prefill_first)
        check_int("hot_prefix_threshold", self.hot_prefix_threshold, 0)
        check_float("max_pinned_fraction", self.max_pinned_fraction, 0.0, 1.0)
        if self.threads is not None:
            check_int("threads", self.threads, 1, 1024)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_int("grammar_cache_size", self.grammar_cache_size, 1)
        check_bool("jump_forward", self.jump_forward)
        if self.chat_template is not None and (not isinstance(self.chat_template, str) or not self.chat_template.strip()):
            raise ValidationError("chat_template must be the non-empty source of a Jinja2 template")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValidationError(f"unknown engine option(s) {unknown}; valid: {sorted(names)}")
        return cls(**kwargs)

    @property
    def torch_dtype(self):
        import torch  # here: the CLI parses an EngineConfig without importing torch

        return torch.float32 if self.dtype == "float32" else torch.bfloat16

    @property
    def kv_torch_dtype(self):
        import torch  # as torch_dtype

        d = self.dtype if self.kv_cache_dtype == "auto" else self.kv_cache_dtype
        return torch.float32 if d == "float32" else torch.bfloat16
