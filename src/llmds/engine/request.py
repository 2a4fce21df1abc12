"""The request types: ``RequestState`` (scheduling state, shared by cb_lab and the engine)
and ``RequestOutput`` (what one engine step produced for one request).

A request is a prompt of ``num_prompt_tokens`` tokens followed by up to
``max_new_tokens`` generated ones.  Token accounting follows vLLM v1:

* ``num_tokens = num_prompt_tokens + num_output_tokens`` tokens are known;
* the first ``num_computed_tokens`` of them have their KV in the cache;
* a step computes ``num_tokens - num_computed_tokens`` tokens (or a chunk of
  them); when it reaches ``num_tokens`` the model samples one new token.

So a decoding request has exactly one token to compute (its last sampled
token), and a preempted request (``num_computed_tokens`` reset to 0) is
recomputed as a prefill over prompt + outputs, then samples its next token.

``prompt_token_ids`` is optional: cb_lab prompts are embedding tensors, so the
planner only needs lengths.  Requests without token ids never use prefix
caching and their outputs are counted, not stored.

The counters are plain attributes (a decode step adds one to
``num_computed_tokens`` and ``num_output_tokens`` of every decoding request);
``num_tokens`` is derived from them.  ``SamplingParams`` is defined in
:mod:`llmds.engine.config` and re-exported here.

Subclasses may add ``__slots__`` fields (cb_lab's ``Request`` carries its
tensors this way); the planner only touches the fields below.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Hashable, Sequence

from llmds._checks import check_float, check_int, check_token_ids
from llmds.engine.config import SamplingParams
from llmds.errors import ValidationError

__all__ = ["RequestOutput", "RequestStatus", "RequestState", "SamplingParams"]


class RequestStatus(enum.IntEnum):
    """Life cycle: WAITING → RUNNING ⇄ PREEMPTED(→ waiting again) → FINISHED_*."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # waiting again, to be recomputed from scratch
    FINISHED_STOPPED = 3  # sampled a stop token (or the caller stopped it)
    FINISHED_LENGTH = 4  # reached max_new_tokens
    FINISHED_ABORTED = 5  # aborted by the caller

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        """OpenAI-style reason: ``"stop"``, ``"length"``, ``"abort"`` or ``None``."""
        return _FINISH_REASON.get(self)


_FINISH_REASON = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class RequestState:
    """One request's scheduling state (per-request object, no per-token objects).

    Parameters
    ----------
    request_id : hashable
        Unique among the planner's live requests (``0`` is a valid id).
    prompt_token_ids : sequence of int, optional
        Prompt token ids; enables prefix caching.  Stored as a list.
    num_prompt_tokens : int, optional
        Prompt length (>= 1); required when ``prompt_token_ids`` is None,
        must match it otherwise.
    max_new_tokens : int
        Tokens to generate (>= 0; 0 finishes the request when added).
    priority : int
        Lower value = more urgent (as vLLM); used by ``policy="priority"``.
    arrival_time : float
        Caller's clock; informational (queue order is the order of ``add``).
    deadline : float, optional
        SLO deadline on the caller's clock; used by ``policy="edf"``.
    stop_token_ids : sequence of int
        Sampling any of these finishes the request (FINISHED_STOPPED).
    sampling_params : SamplingParams, optional
        Carried for the engine; the planner does not read it.
    n : int
        Sequences the request becomes when its prompt is computed (parallel sampling, >= 1):
        the planner admits it only with ``n`` free seats of ``max_num_seqs`` and, given the other
        sequences' first tokens (``Planner.update(..., forks=...)``), forks them off it sharing its
        KV blocks; from then on each is a request of its own with ``n == 1``.

    Attributes kept up to date by the planner: ``status``, ``num_computed_tokens``,
    ``num_cached_tokens`` (prefix-cache hit at the last admission),
    ``num_output_tokens``, ``num_tokens``, ``output_token_ids`` (only when the
    caller passes token ids to ``Planner.update``), ``block_table`` (block ids
    from a ``BlockManager``) and ``num_preemptions``; bookkeeping the planner and the block
    manager keep on the request (so a step stays O(batch)): ``queue_order``,
    ``admit_order``, ``num_hashed_blocks``, ``last_block_key``.
    """

    __slots__ = (
        "request_id",
        "prompt_token_ids",
        "num_prompt_tokens",
        "output_token_ids",
        "num_computed_tokens",
        "num_output_tokens",
        "num_cached_tokens",
        "max_new_tokens",
        "priority",
        "arrival_time",
        "deadline",
        "stop_token_ids",
        "sampling_params",
        "n",
        "status",
        "block_table",
        "num_preemptions",
        # bookkeeping of the planner and the block manager (callers leave it alone)
        "queue_order",  # waiting-queue order (int, smaller first), fixed at add
        "admit_order",  # admission counter of the current stay in running
        "num_hashed_blocks",  # leading full blocks whose chain key is known (prefix caching)
        "last_block_key",  # chain key of block num_hashed_blocks - 1 (or ROOT_KEY)
    )

    def __init__(
        self,
        request_id: Hashable,
        prompt_token_ids: Sequence[int] | None = None,
        *,
        num_prompt_tokens: int | None = None,
        max_new_tokens: int = 16,
        priority: int = 0,
        arrival_time: float = 0.0,
        deadline: float | None = None,
        stop_token_ids: Sequence[int] = (),
        sampling_params: SamplingParams | None = None,
        n: int = 1,
    ) -> None:
        num_seqs = check_int("n", n, 1)  # before ``n`` is reused for the prompt's length below
        try:
            hash(request_id)
        except TypeError:
            raise ValidationError(f"request_id must be hashable, got {type(request_id).__name__}") from None
        if request_id is None:
            raise ValidationError("request_id must not be None")
        if prompt_token_ids is not None:
            ids = check_token_ids("prompt_token_ids", prompt_token_ids)
            if num_prompt_tokens is not None and check_int("num_prompt_tokens", num_prompt_tokens) != len(ids):
                raise ValidationError(
                    f"num_prompt_tokens={num_prompt_tokens} but prompt_token_ids has {len(ids)} tokens"
                )
            n = len(ids)
            if n < 1:
                raise ValidationError("a request needs at least one prompt token")
        elif num_prompt_tokens is None:
            raise ValidationError("give prompt_token_ids or num_prompt_tokens")
        else:
            ids = None
            n = check_int("num_prompt_tokens", num_prompt_tokens, 1)
        if sampling_params is not None and not isinstance(sampling_params, SamplingParams):
            raise ValidationError("sampling_params must be a SamplingParams")
        self.request_id = request_id
        self.prompt_token_ids: list[int] | None = ids
        self.num_prompt_tokens = n
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.num_cached_tokens = 0
        self.max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)
        self.priority = check_int("priority", priority, -(2**62), 2**62)
        self.arrival_time = check_float("arrival_time", arrival_time)
        self.deadline = None if deadline is None else check_float("deadline", deadline)
        self.stop_token_ids = frozenset(check_token_ids("stop_token_ids", stop_token_ids))
        self.sampling_params = sampling_params
        self.n = num_seqs
        self.status = RequestStatus.WAITING
        self.block_table: list[int] = []
        self.num_preemptions = 0
        self.queue_order = 0
        self.admit_order = -1
        self.num_hashed_blocks = 0
        self.last_block_key = 0

    # ------------------------------------------------------------- counters
    @property
    def num_tokens(self) -> int:
        """Known tokens: prompt + outputs."""
        return self.num_prompt_tokens + self.num_output_tokens

    # ------------------------------------------------------------- queries
    @property
    def is_finished(self) -> bool:
        return self.status >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASON.get(self.status)

    @property
    def num_uncomputed_tokens(self) -> int:
        """Known tokens whose KV is not computed yet (1 for a decoding request)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """True when the next step computes just the last sampled token."""
        return self.num_output_tokens > 0 and self.num_tokens - self.num_computed_tokens == 1

    @property
    def has_token_ids(self) -> bool:
        return self.prompt_token_ids is not None

    @property
    def all_token_ids(self) -> list[int]:
        """Prompt + output token ids (a new list; requires token ids)."""
        if self.prompt_token_ids is None:
            raise ValidationError(f"request {self.request_id!r} has no token ids (lengths only)")
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, stop: int) -> tuple[int, ...]:
        """Token ids ``[start, stop)`` of prompt + outputs without building the whole list."""
        p = self.prompt_token_ids
        n = self.num_prompt_tokens
        if stop <= n:
            return tuple(p[start:stop])
        if start >= n:
            return tuple(self.output_token_ids[start - n : stop - n])
        return tuple(p[start:]) + tuple(self.output_token_ids[: stop - n])

    def __repr__(self) -> str:
        return (
            f"RequestState(id={self.request_id!r}, status={self.status.name}, "
            f"prompt={self.num_prompt_tokens}, computed={self.num_computed_tokens}, "
            f"output={self.num_output_tokens}/{self.max_new_tokens}, priority={self.priority})"
        )


@dataclass(slots=True)
class RequestOutput:
    """What one step produced for one sequence of a request.

    ``new_token_ids`` / ``text`` are this step's delta (text held back by stop-string matching
    or an incomplete character comes later).  When ``finished``, ``output_text`` and
    ``output_token_ids`` hold the whole output and ``finish_reason`` is ``"stop"``, ``"length"``
    or ``"abort"``.  ``LLMEngine.generate`` returns final outputs whose ``text`` is the whole
    text too (as vLLM's ``generate`` does).  Times are on the engine's clock (seconds).

    With parallel sampling (``SamplingParams.n > 1``) every sequence reports under the
    request's id with its ``index`` (0..n-1); ``request_finished`` is True on the output that
    finishes the last of them (for ``n == 1`` it equals ``finished``).
    """

    request_id: Hashable
    new_token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: list | None = None
    output_text: str | None = None
    output_token_ids: list[int] | None = None
    stop_reason: str | int | None = None
    output_logprobs: list | None = None
    arrival_time: float = 0.0
    first_token_time: float | None = None
    finished_time: float | None = None
    index: int = 0
    request_finished: bool | None = None  # None: the same as ``finished``

    def __post_init__(self) -> None:
        if self.request_finished is None:
            self.request_finished = self.finished

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time
