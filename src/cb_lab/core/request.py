"""A cb_lab request: an embedding prompt, its KV cache and its generated tokens.

``Request`` is the planner's :class:`~llmds.engine.request.RequestState` (token
counts, status) plus the tensors.  Semantics (as in real LLM serving): the
prefill's output at the last prompt position is the first generated token;
each decode step feeds the last generated token back and produces the next.
So a request with prompt length ``L`` and ``max_new_tokens = M`` computes
``L + M - 1`` positions and generates ``M`` tokens; ``M = 0`` is finished at
once.

Prompt and generated tokens share one preallocated buffer ``[L + M, dim]``
(``generated_tokens`` holds views of its rows), so a preempted request can be
recomputed from any position without concatenating.

Driven by a :class:`~cb_lab.core.scheduler.Scheduler`, a request is read-only
for the caller.  Outside a scheduler the documented manual methods drive it:
``get_prefill_chunk`` hands out prompt rows, ``append_kv`` stores the model's
keys/values, ``append_token`` records an output once the prompt is done.
"""

from __future__ import annotations

import torch

from cb_lab.core.kv_cache import BaseKVCache
from cb_lab.exceptions import RequestError, ValidationError
from llmds._checks import check_int, is_int
from llmds.engine.request import RequestState, RequestStatus

__all__ = ["Request", "check_req_id"]


def check_req_id(name: str, value):
    """A cb_lab request id: a str or an int (not a bool)."""
    if not isinstance(value, str) and not is_int(value):
        raise ValidationError(f"{name} must be a str or int, got {type(value).__name__}")
    return value


class Request(RequestState):
    """One inference request.

    Parameters
    ----------
    req_id : str or int
        Unique among a scheduler's live requests.
    prompt : torch.Tensor
        ``[seq_len, dim]`` floating point, ``seq_len >= 1``.
    max_new_tokens : int
        Tokens to generate (>= 0).
    kv_cache : BaseKVCache
        This request's (empty) KV cache.
    prefill_pos, generated_tokens, finished, decode_seed
        Accepted for signature compatibility with the reference dataclass; a
        new request must leave them at their defaults (progress is tracked,
        not set).
    """

    __slots__ = ("prompt", "kv_cache", "generated_tokens", "_tokens", "owner")

    def __init__(
        self,
        req_id: str | int,
        prompt: torch.Tensor,
        max_new_tokens: int,
        kv_cache: BaseKVCache,
        prefill_pos: int = 0,
        generated_tokens: list | None = None,
        finished: bool = False,
        decode_seed: torch.Tensor | None = None,
    ) -> None:
        check_req_id("req_id", req_id)
        if not isinstance(prompt, torch.Tensor):
            raise ValidationError(f"prompt must be a torch.Tensor, got {type(prompt).__name__}")
        if prompt.dim() != 2 or prompt.size(0) == 0 or prompt.size(1) == 0:
            raise ValidationError(
                f"prompt must be a non-empty 2-D tensor [seq_len, dim], got "
                f"shape {tuple(prompt.shape)}"
            )
        if not prompt.is_floating_point():
            raise ValidationError(f"prompt must be floating point, got {prompt.dtype}")
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)
        if not isinstance(kv_cache, BaseKVCache):
            raise ValidationError(
                f"kv_cache must be a BaseKVCache (DenseKVCache, PagedKVCache), "
                f"got {type(kv_cache).__name__}"
            )
        if prefill_pos != 0 or generated_tokens or finished or decode_seed is not None:
            raise ValidationError(
                "a new Request starts with prefill_pos=0, no generated tokens, "
                "finished=False and decode_seed=None; progress is tracked for you"
            )
        super().__init__(req_id, num_prompt_tokens=prompt.size(0), max_new_tokens=max_new_tokens)
        self.prompt = prompt
        self.kv_cache = kv_cache
        self.generated_tokens: list[torch.Tensor] = []
        L, d = prompt.shape
        self._tokens = torch.empty(L + max_new_tokens, d, dtype=prompt.dtype, device=prompt.device)
        self._tokens[:L] = prompt  # rows [0, L) prompt, [L, L + M) generated
        self.owner = None  # the Scheduler driving this request, if any (set by the Scheduler)

    # ------------------------------------------------------------ documented view
    @property
    def req_id(self):
        return self.request_id

    @property
    def dim(self) -> int:
        return self.prompt.size(1)

    @property
    def finished(self) -> bool:
        return self.status.is_finished or self.num_output_tokens >= self.max_new_tokens

    @property
    def prefill_pos(self) -> int:
        """Prompt rows already handed to the model (its KV computed or being computed)."""
        return min(self.num_computed_tokens, self.num_prompt_tokens)

    @property
    def in_prefill(self) -> bool:
        """True while the next computation is a prefill (prompt, or recompute after preemption)."""
        if self.finished:
            return False
        end = self.num_tokens - 1 if self.num_output_tokens else self.num_prompt_tokens
        return self.num_computed_tokens < end

    @property
    def in_decode(self) -> bool:
        """True when the next computation is one decode step."""
        return not self.finished and not self.in_prefill

    @property
    def decode_seed(self) -> torch.Tensor | None:
        """The token the next decode step feeds in: the last generated one (or None)."""
        return self.generated_tokens[-1] if self.generated_tokens else None

    def token_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of prompt + generated tokens (a view)."""
        return self._tokens[start:stop]

    # ------------------------------------------------------------ manual driving
    def _check_manual(self, what: str) -> None:
        if self.owner is not None:
            raise RequestError(
                f"request {self.req_id!r} is driven by a Scheduler; {what} is not "
                "available until it finishes"
            )

    def get_prefill_chunk(self, chunk_size: int) -> torch.Tensor:
        """Hand out the next ``<= chunk_size`` prompt rows ``[n, dim]`` (empty when done)."""
        chunk_size = check_int("chunk_size", chunk_size, 1)
        self._check_manual("get_prefill_chunk")
        start = self.prefill_pos
        end = min(start + chunk_size, self.num_prompt_tokens)
        if self.num_computed_tokens < end:
            self.num_computed_tokens = end
        return self.prompt[start:end]

    def append_kv(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Append ``[n, dim]`` keys/values to this request's cache."""
        self._check_manual("append_kv")
        if isinstance(k_new, torch.Tensor) and k_new.dim() == 2 and k_new.size(1) != self.dim:
            raise ValidationError(f"KV rows must be [n, {self.dim}], got {tuple(k_new.shape)}")
        self.kv_cache.append(k_new, v_new)

    def append_token(self, tok: torch.Tensor) -> None:
        """Record a generated token (``[dim]`` or ``[1, dim]``) once the prompt is prefilled."""
        self._check_manual("append_token")
        if self.finished:
            raise RequestError(
                f"request {self.req_id!r} is finished ({self.max_new_tokens} tokens)"
            )
        if self.num_computed_tokens < self.num_prompt_tokens:
            raise RequestError(
                f"request {self.req_id!r}: prefill the whole prompt "
                f"({self.prefill_pos}/{self.num_prompt_tokens} rows) before appending tokens"
            )
        self.record_output(tok)
        self.num_computed_tokens = self.num_tokens  # the fed token's KV is now computed
        self.num_output_tokens += 1
        if self.num_output_tokens >= self.max_new_tokens:
            self.status = RequestStatus.FINISHED_LENGTH

    def maybe_finish(self) -> bool:
        """Whether the request is finished (kept for the reference API)."""
        return self.finished

    def record_output(self, tok: torch.Tensor) -> None:
        """Store output number ``num_output_tokens`` (the caller advances the counts: the
        Scheduler, or :meth:`append_token`)."""
        if not isinstance(tok, torch.Tensor):
            raise ValidationError(f"token must be a torch.Tensor, got {type(tok).__name__}")
        if tok.dim() == 2 and tok.size(0) == 1:
            tok = tok[0]
        if tok.dim() != 1 or tok.size(0) != self.dim or not tok.is_floating_point():
            raise ValidationError(
                f"token must be a float tensor [{self.dim}] or [1, {self.dim}], "
                f"got {tuple(tok.shape)} {tok.dtype}"
            )
        row = self.num_prompt_tokens + self.num_output_tokens
        self._tokens[row] = tok
        self.generated_tokens.append(self._tokens[row])

    def __repr__(self) -> str:
        return (
            f"Request(req_id={self.req_id!r}, prompt={tuple(self.prompt.shape)}, "
            f"generated={len(self.generated_tokens)}/{self.max_new_tokens}, "
            f"status={self.status.name})"
        )
