"""Sliding-window admission control: request rate and token rate limits.

The window holds the requests *recorded* (``record_request``) in the last
``window_size`` seconds as a deque of ``(time, tokens)`` with running sums, so
each call costs O(1) amortized (expired entries leave from the left once).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from numbers import Real
from typing import Any

from llmds.errors import ValidationError

__all__ = ["AdmissionController"]


def _check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not (0.0 < value < math.inf):
        raise ValidationError(f"{name} must be a positive finite number, got {value!r}")
    return value  # type: ignore[return-value]


def _check_tokens(tokens: object, name: str) -> int:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValidationError(f"{name} must be a non-negative int, got {tokens!r}")
    return tokens


class AdmissionController:
    """Admit a request iff both rate limits still hold with it included.

    Parameters
    ----------
    qps_target : float
        Maximum requests per second, averaged over the window (> 0).
    token_rate_limit : float
        Maximum tokens per second, averaged over the window (> 0).
    window_size : float
        Window length in seconds (> 0).
    clock : callable
        Returns seconds (monotonic); inject a fake clock in tests.

    Notes
    -----
    ``should_admit`` only decides (and counts the decision in ``stats``); it
    does not enter the request into the window. Call ``record_request`` for
    each request you actually run, as the seed API does. The rule, with the
    window being the recorded requests at times ``t > now - window_size``::

        admit  iff  (requests_in_window + 1) / window_size <= qps_target
               and  (tokens_in_window + estimated_tokens) / window_size <= token_rate_limit
    """

    __slots__ = (
        "qps_target",
        "token_rate_limit",
        "window_size",
        "_clock",
        "_events",
        "_window_tokens",
        "_admitted",
        "_rejected",
    )

    def __init__(
        self,
        qps_target: float = 10.0,
        token_rate_limit: float = 10000,
        window_size: float = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.qps_target = _check_positive(qps_target, "qps_target")
        self.token_rate_limit = _check_positive(token_rate_limit, "token_rate_limit")
        self.window_size = _check_positive(window_size, "window_size")
        if not callable(clock):
            raise ValidationError(f"clock must be callable returning seconds, got {clock!r}")
        self._clock = clock
        self._events: deque[tuple[float, int]] = deque()  # (time, tokens), oldest left
        self._window_tokens = 0  # invariant: == sum of tokens in _events
        self._admitted = 0
        self._rejected = 0

    def _expire(self, now: float) -> None:
        events = self._events
        horizon = now - self.window_size
        while events and events[0][0] <= horizon:
            self._window_tokens -= events.popleft()[1]

    def should_admit(self, estimated_tokens: int = 0) -> tuple[bool, str]:
        """Decide whether a request of ``estimated_tokens`` tokens may run now.

        Returns ``(True, "admitted")`` or ``(False, reason)``; the reason names
        the limit hit and the rate the request would bring it to.
        """
        _check_tokens(estimated_tokens, "estimated_tokens")
        self._expire(self._clock())
        w = self.window_size
        qps = (len(self._events) + 1) / w
        if qps > self.qps_target:
            self._rejected += 1
            return False, (
                f"qps limit: {qps:.1f} req/s over the last {w:g}s "
                f"exceeds qps_target={self.qps_target}"
            )
        token_rate = (self._window_tokens + estimated_tokens) / w
        if token_rate > self.token_rate_limit:
            self._rejected += 1
            return False, (
                f"token rate limit: {token_rate:.1f} tokens/s over the last {w:g}s "
                f"exceeds token_rate_limit={self.token_rate_limit}"
            )
        self._admitted += 1
        return True, "admitted"

    def record_request(self, tokens: int) -> None:
        """Enter a request of ``tokens`` tokens into the window at the current time."""
        _check_tokens(tokens, "tokens")
        now = self._clock()
        self._expire(now)
        self._events.append((now, tokens))
        self._window_tokens += tokens

    def stats(self) -> dict[str, Any]:
        """Decision counters and the current window rates."""
        self._expire(self._clock())
        decided = self._admitted + self._rejected
        return {
            "admitted_requests": self._admitted,
            "rejected_requests": self._rejected,
            "rejection_rate": self._rejected / decided if decided else 0.0,
            "current_qps": len(self._events) / self.window_size,
            "current_token_rate": self._window_tokens / self.window_size,
            "target_qps": self.qps_target,
            "token_rate_limit": self.token_rate_limit,
        }

    def reset(self) -> None:
        """Empty the window and zero the counters."""
        self._events.clear()
        self._window_tokens = 0
        self._admitted = 0
        self._rejected = 0
