"""Scheduling state of one request, shared by cb_lab and the engine.

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

Subclasses may add ``__slots__`` fields (cb_lab's ``Request`` carries its
tensors this way); the planner only touches the fields below.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Hashable, Sequence

from llmds.engine.config import SamplingParams
from llmds.errors import ValidationError

__all__ = ["RequestStatus", "RequestState", "SamplingParams"]


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


def _int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        # numpy integers pass through int(); everything else is rejected
        if type(value).__module__ == "numpy" and hasattr(value, "__index__"):
            value = int(value)
        else:
            raise ValidationError(f"{name} must be an int, got {type(value).__name__}")
    if lo is not None and value < lo:
        raise ValidationError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValidationError(f"{name} must be <= {hi}, got {value}")
    return value


def _float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if not (type(value).__module__ == "numpy" and hasattr(value, "__float__")):
            raise ValidationError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValidationError(f"{name} must not be NaN")
    return value


def _token_ids(name: str, ids) -> tuple[int, ...]:
    try:
        out = tuple(int(t) for t in ids)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a sequence of ints") from None
    if any(t < 0 for t in out):
        raise ValidationError(f"{name} must be non-negative token ids")
    return out


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

    Attributes kept up to date by the planner: ``status``, ``num_computed_tokens``,
    ``num_cached_tokens`` (prefix-cache hit at the last admission),
    ``num_output_tokens``, ``num_tokens``, ``output_token_ids`` (only when the
    caller passes token ids to ``Planner.update``), ``block_table`` (block ids
    from a ``BlockManager``) and ``num_preemptions``.
    """

    __slots__ = (
        "request_id",
        "prompt_token_ids",
        "num_prompt_tokens",
        "output_token_ids",
        "num_cached_tokens",
        "max_new_tokens",
        "priority",
        "arrival_time",
        "deadline",
        "stop_token_ids",
        "sampling_params",
        "status",
        "block_table",
        "num_preemptions",
        # counters: real values, or (while in the planner's decode batch, _clk is not
        # None) value - clock, so one clock tick advances every decoding request
        "_num_computed",
        "_num_output",
        "_num_tokens",
        "_clk",  # the planner's decode clock (a 1-element list) or None
        # planner / block-manager private state
        "_queue_score",  # waiting-queue order (int, smaller first), fixed at add
        "_admit_seq",  # admission counter of the current stay in running
        "_num_hashed_blocks",  # leading full blocks whose chain key is known (prefix caching)
        "_last_key",  # chain key of block _num_hashed_blocks - 1 (or ROOT_KEY)
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
    ) -> None:
        try:
            hash(request_id)
        except TypeError:
            raise ValidationError(f"request_id must be hashable, got {type(request_id).__name__}") from None
        if request_id is None:
            raise ValidationError("request_id must not be None")
        if prompt_token_ids is not None:
            ids = list(_token_ids("prompt_token_ids", prompt_token_ids))
            if num_prompt_tokens is not None and _int("num_prompt_tokens", num_prompt_tokens) != len(ids):
                raise ValidationError(
                    f"num_prompt_tokens={num_prompt_tokens} but prompt_token_ids has {len(ids)} tokens"
                )
            n = len(ids)
        else:
            if num_prompt_tokens is None:
                raise ValidationError("give prompt_token_ids or num_prompt_tokens")
            ids = None
            n = _int("num_prompt_tokens", num_prompt_tokens)
        if n < 1:
            raise ValidationError("a request needs at least one prompt token")
        if sampling_params is not None and not isinstance(sampling_params, SamplingParams):
            raise ValidationError("sampling_params must be a SamplingParams")
        self.request_id = request_id
        self.prompt_token_ids: list[int] | None = ids
        self.num_prompt_tokens = n
        self.output_token_ids: list[int] = []
        self._num_output = 0
        self._num_tokens = n
        self._num_computed = 0
        self._clk: list[int] | None = None
        self.num_cached_tokens = 0
        self.max_new_tokens = _int("max_new_tokens", max_new_tokens, lo=0)
        self.priority = _int("priority", priority, lo=-(2**62), hi=2**62)
        self.arrival_time = _float("arrival_time", arrival_time)
        self.deadline = None if deadline is None else _float("deadline", deadline)
        self.stop_token_ids = frozenset(_token_ids("stop_token_ids", stop_token_ids))
        self.sampling_params = sampling_params
        self.status = RequestStatus.WAITING
        self.block_table: list[int] = []
        self.num_preemptions = 0
        self._queue_score = 0
        self._admit_seq = -1
        self._num_hashed_blocks = 0
        self._last_key = 0

    # ------------------------------------------------------------- counters
    @property
    def num_computed_tokens(self) -> int:
        """Tokens whose KV is in the cache."""
        c = self._clk
        return self._num_computed if c is None else self._num_computed + c[0]

    @num_computed_tokens.setter
    def num_computed_tokens(self, value: int) -> None:
        c = self._clk
        self._num_computed = value if c is None else value - c[0]

    @property
    def num_output_tokens(self) -> int:
        """Tokens generated so far."""
        c = self._clk
        return self._num_output if c is None else self._num_output + c[0]

    @num_output_tokens.setter
    def num_output_tokens(self, value: int) -> None:
        c = self._clk
        self._num_output = value if c is None else value - c[0]

    @property
    def num_tokens(self) -> int:
        """Known tokens: prompt + outputs."""
        c = self._clk
        return self._num_tokens if c is None else self._num_tokens + c[0]

    @num_tokens.setter
    def num_tokens(self, value: int) -> None:
        c = self._clk
        self._num_tokens = value if c is None else value - c[0]

    def _attach_clock(self, clock: list[int]) -> None:
        """Enter a decode batch: counters become offsets against ``clock[0]``."""
        now = clock[0]
        self._num_computed -= now
        self._num_output -= now
        self._num_tokens -= now
        self._clk = clock

    def _detach_clock(self) -> None:
        """Leave the decode batch: counters become plain values again."""
        now = self._clk[0]
        self._num_computed += now
        self._num_output += now
        self._num_tokens += now
        self._clk = None

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
