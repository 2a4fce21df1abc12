"""The engine's state of one sequence: its request state, sampling row, detokenizer, timings and
grammar matcher (one object per sequence, none per token), and the sequences of a request with
``n > 1``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

__all__ = ["SeqId", "Group", "Live"]


@dataclass(frozen=True, slots=True)
class SeqId:
    """The planner's id of sequence ``index`` >= 1 of a request with ``n > 1`` (never equal to a caller's id)."""

    request_id: Hashable
    index: int


class Group:
    """The sequences of a request with ``n > 1``: their planner ids and how many have not finished."""

    __slots__ = ("ids", "unfinished")

    def __init__(self, request_id: Hashable, n: int) -> None:
        self.ids = [request_id] + [SeqId(request_id, i) for i in range(1, n)]
        self.unfinished = n


class Live:
    """Engine-side state of one sequence (one object per sequence, none per token)."""

    __slots__ = ("seq", "params", "detok", "row", "arrival", "scheduled", "first", "last", "keys", "pinned_checked",
                 "logprobs", "request_id", "index", "group", "guide")

    def __init__(self, seq, params, detok, row, arrival, keys, index: int = 0, group: Group | None = None,
                 guide=None) -> None:
        self.seq, self.params, self.detok, self.row = seq, params, detok, row
        self.arrival = arrival
        self.scheduled: float | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.keys = keys
        self.pinned_checked = False
        self.logprobs: list | None = None if params.logprobs is None else []
        self.request_id = seq.request_id if index == 0 else seq.request_id.request_id  # the caller's id
        self.index, self.group = index, group
        self.guide = guide  # the grammar matcher of a structured-outputs request (llguidance.LLMatcher)
