"""The planner's small data objects: its step budget (``PlannerConfig``) and one step's work (``StepPlan``).

Both are re-exported by :mod:`llmds.engine.sched.planner`, the module that reads them.

Step policy (vLLM v1 style):

1. **Decode first.**  Every running request that has finished its prefill
   decodes one token (``max_num_batched_tokens >= max_num_seqs`` is enforced,
   so decodes always fit the budget).  A decode needs a KV call only when it
   crosses a block boundary (``num_computed_tokens % kv.block_size == 0``),
   i.e. once every ``block_size`` steps; if the pool has fewer free blocks
   than boundary-crossing decodes, requests are served most urgent first and
   the least urgent running request is **preempted**: its blocks are freed,
   ``num_computed_tokens`` is reset to 0 and it goes back to the waiting
   queue at its original position, to be recomputed (never lost).
2. **Running prefills** continue in urgency order, one chunk each of at most
   ``prefill_chunk_size`` tokens, within the remaining token budget (same
   preemption rule when blocks run out).
3. **Admission.**  If nothing was preempted this step, waiting requests are
   admitted in queue order while budget, ``max_num_seqs`` and blocks allow;
   the first one that does not fit blocks the queue (no overtaking).  A
   request with ``n > 1`` takes ``n`` seats (:mod:`~llmds.engine.sched.fork`).

With ``prefill_first`` (the engine's default), a step in which running prefills continue or
waiting requests can be admitted is a prefill-only step (2. and 3. without 1.), and its
admissions keep one free block per decoding request for that request's next block; otherwise
the step is 1. to 3. as above.  The decodes wait one step per prefill chunk, and no decode step
carries a prompt chunk: ITL stays one decode step except while prompts arrive.

Orders (:mod:`llmds.engine.sched.request_queue`): queue order by ``policy``
(``"fcfs"``, ``"priority"``, ``"edf"``); among running requests the same key
with the admission counter in place of arrival, so the preemption victim is
the lowest-priority, most recently admitted request.

Costs: a decode step is one loop over the running requests' counters plus
C-level list operations (see ``decode_batch``), and per-request work only for
requests with an event (a block boundary, finishing, preemption).  Admissions
cost one prefix lookup each; the waiting queue is O(log n) per operation.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmds._checks import check_bool, check_choice, check_int
from llmds.engine.request import RequestState
from llmds.engine.sched.request_queue import POLICIES
from llmds.errors import ValidationError

__all__ = ["PlannerConfig", "StepPlan"]


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    """Step budget and policy (validated once).

    Parameters
    ----------
    max_num_batched_tokens : int
        Tokens computed per step, decode and prefill together (>= max_num_seqs).
    max_num_seqs : int
        Running requests at most.
    prefill_chunk_size : int or None
        Prompt tokens one request may prefill per step; None = the whole budget.
    policy : {"fcfs", "priority", "edf"}
        Waiting-queue order and preemption order (see module docstring).
    prefill_first : bool
        While prompts wait to be prefilled (and may be admitted), run prefill-only steps and
        let the decoding requests wait; admissions then keep one free block per decoding
        request.  False: every step decodes every running request and fills the rest of
        the budget with prefill chunks (vLLM v1's decode-first mixing).
    """

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    prefill_chunk_size: int | None = None
    policy: str = "fcfs"
    prefill_first: bool = False

    def __post_init__(self) -> None:
        budget = check_int("max_num_batched_tokens", self.max_num_batched_tokens, 1)
        seqs = check_int("max_num_seqs", self.max_num_seqs, 1)
        if budget < seqs:
            raise ValidationError(
                f"max_num_batched_tokens ({budget}) must be >= max_num_seqs "
                f"({seqs}) so every running request can decode each step"
            )
        c = self.prefill_chunk_size
        chunk = budget if c is None else check_int("prefill_chunk_size", c, 1)
        check_choice("policy", self.policy, POLICIES)
        check_bool("prefill_first", self.prefill_first)
        for name, value in (("max_num_batched_tokens", budget), ("max_num_seqs", seqs),
                            ("prefill_chunk_size", chunk)):
            object.__setattr__(self, name, value)


class StepPlan:
    """The work of one step (read-only for the caller).

    Attributes
    ----------
    step_id : int
    decode : list[RequestState]
        Requests computing their last sampled token (one token each).
    prefill : list[tuple[RequestState, int]]
        ``(request, num_tokens)``: compute prompt(+output) tokens
        ``[request.num_computed_tokens, + num_tokens)``.  A prefill item may
        read KV written by an *earlier* item of the same plan (same-step
        prefix sharing): run prefills in plan order, or in one pass that
        writes each layer's KV before its attention.
    preempted : list[RequestState]
        Requests preempted this step (already back in the waiting queue).
    num_batched_tokens : int
        ``len(decode) + sum of prefill tokens``.
    copies : list[tuple[int, int]]
        Block copies ``(src, dst)`` that ``Planner.update`` made for forked sequences
        (copy-on-write); the caller applies them to its KV before the next step runs.
    """

    __slots__ = ("step_id", "decode", "prefill", "preempted", "num_batched_tokens", "copies")

    def __init__(self, step_id: int, decode: list, prefill: list, preempted: list, num_batched_tokens: int):
        self.step_id = step_id
        self.decode = decode
        self.prefill = prefill
        self.preempted = preempted
        self.num_batched_tokens = num_batched_tokens
        self.copies: list[tuple[int, int]] = []

    @property
    def num_decode_tokens(self) -> int:
        return len(self.decode)

    @property
    def num_prefill_tokens(self) -> int:
        return self.num_batched_tokens - len(self.decode)

    @property
    def is_empty(self) -> bool:
        return self.num_batched_tokens == 0

    @property
    def sampling(self) -> list[RequestState]:
        """Requests that sample a token this step, in the order ``update`` expects
        their token ids: every decode, then each prefill that completes its prompt
        (read it before ``update``, which advances the counters)."""
        return self.decode + [s for s, n in self.prefill if s.num_computed_tokens + n == s.num_tokens]

    def check_token_ids(self, token_ids) -> list[int]:
        """``token_ids`` (a list, numpy array or tensor) as a list of one id per request of
        :attr:`sampling`; ``ValidationError`` on a count mismatch."""
        toks = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)
        nd = len(self.decode)
        completing = sum(1 for s, n in self.prefill if s.num_computed_tokens + n == s.num_tokens)
        if len(toks) != nd + completing:
            raise ValidationError(
                f"got {len(toks)} token ids; plan.sampling has {nd + completing} requests "
                f"({nd} decodes + {completing} completed prefills)"
            )
        return toks

    def __repr__(self) -> str:
        return (
            f"StepPlan(step={self.step_id}, decode={len(self.decode)}, prefill={len(self.prefill)}, "
            f"tokens={self.num_batched_tokens}, preempted={len(self.preempted)})"
        )
