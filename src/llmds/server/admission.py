"""The server's front door: rate limits and bounded waiting, in front of the engine.

A request is admitted only if all of these hold, checked in this order (the first that fails
names the rejection, which is counted in ``rejections[reason]``):

* ``waiting_requests`` — admitted requests that have not produced their first token yet stay
  below ``max_waiting_requests``;
* ``waiting_tokens`` — their prompt tokens plus this one's stay within ``max_waiting_tokens``;
* ``requests_per_second`` / ``tokens_per_second`` — :class:`~llmds.scheduling.admissions.AdmissionController`
  (sliding window) with the request's prompt + ``max_tokens`` as its token estimate.

Running requests are bounded by the engine's ``max_num_seqs``, so nothing queues without bound:
at most ``max_num_seqs + max_waiting_requests`` requests are in flight.  A rejection carries the
seconds to wait (``Retry-After``): exact for the rate limits, 1 s for the waiting bounds (they
drain as the engine admits requests).  All calls happen on the event loop thread.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from llmds._checks import check_float, check_int

__all__ = ["AdmissionGate", "Rejection", "Ticket", "REASONS"]

# the gate's own reasons, then those of the HTTP layer in front of it (counted here for /metrics)
REASONS = ("waiting_requests", "waiting_tokens", "requests_per_second", "tokens_per_second", "body_too_large",
           "body_timeout", "header_timeout", "send_timeout", "connections")


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # one of REASONS
    message: str
    retry_after: float  # seconds


class Ticket:
    """One admitted request: waiting until ``started()`` (its first token), released by ``close()``."""

    __slots__ = ("_gate", "prompt_tokens", "waiting", "open")

    def __init__(self, gate: AdmissionGate, prompt_tokens: int) -> None:
        self._gate, self.prompt_tokens = gate, prompt_tokens
        self.waiting = self.open = True

    def started(self) -> None:
        if self.waiting:
            self.waiting = False
            self._gate.leave_waiting(self)

    def close(self) -> None:
        if self.open:
            self.started()
            self.open = False
            self._gate.in_flight -= 1


class AdmissionGate:
    """Admission control for the HTTP server (see the module docstring)."""

    def __init__(self, max_qps: float = 50.0, max_token_rate: float = 200_000.0, window: float = 10.0,
                 max_waiting_requests: int = 256, max_waiting_tokens: int = 262_144,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from llmds.scheduling.admissions import AdmissionController

        self.max_waiting_requests = check_int("max_waiting_requests", max_waiting_requests, 1)
        self.max_waiting_tokens = check_int("max_waiting_tokens", max_waiting_tokens, 1)
        check_float("max_qps", max_qps, 0.0, low_open=True)
        self.rates = AdmissionController(qps_target=max_qps, token_rate_limit=max_token_rate,
                                         window_size=window, clock=clock)
        self.waiting_requests = 0
        self.waiting_tokens = 0
        self.in_flight = 0
        self.rejections: dict[str, int] = dict.fromkeys(REASONS, 0)

    def admit(self, prompt_tokens: int, max_new_tokens: int) -> Ticket | Rejection:
        """A :class:`Ticket` for an admitted request, else the :class:`Rejection` (counted)."""
        if self.waiting_requests + 1 > self.max_waiting_requests:
            return self.reject("waiting_requests", f"{self.waiting_requests} requests are waiting for the "
                               f"engine (max_waiting_requests={self.max_waiting_requests})", 1.0)
        if prompt_tokens > self.max_waiting_tokens:  # never admissible: not a rate problem
            return self.reject("waiting_tokens", f"the prompt has {prompt_tokens} tokens, more than "
                               f"max_waiting_tokens={self.max_waiting_tokens}", math.inf)
        if self.waiting_tokens + prompt_tokens > self.max_waiting_tokens:
            return self.reject("waiting_tokens", f"{self.waiting_tokens} prompt tokens are waiting for the "
                               f"engine and this request adds {prompt_tokens} "
                               f"(max_waiting_tokens={self.max_waiting_tokens})", 1.0)
        estimate = prompt_tokens + max_new_tokens
        ok, why = self.rates.should_admit(estimate)
        if not ok:
            reason = "requests_per_second" if why.startswith("qps") else "tokens_per_second"
            return self.reject(reason, why, self.rates.retry_after(estimate))
        self.waiting_requests += 1
        self.waiting_tokens += prompt_tokens
        self.in_flight += 1
        return Ticket(self, prompt_tokens)

    def reject(self, reason: str, message: str, retry_after: float) -> Rejection:
        self.rejections[reason] += 1
        return Rejection(reason, message, retry_after if math.isfinite(retry_after) else math.inf)

    def leave_waiting(self, ticket: Ticket) -> None:
        """``ticket``'s request got its first token: it no longer counts as waiting."""
        self.waiting_requests -= 1
        self.waiting_tokens -= ticket.prompt_tokens
