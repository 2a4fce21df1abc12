"""Sliding-window admission control: request rate and token rate limits.

The window holds the requests counted in the last ``window_size`` seconds as a
deque of ``[time, tokens]`` entries with a running token sum, so each call
costs O(1) amortized (expired entries leave from the left once).

Counting rule (what enters the window):

* an **admitted** ``should_admit(estimated_tokens)`` counts the request at once,
  with its estimated tokens, so a caller that only checks is still limited;
* ``record_request(tokens)`` reports the actual tokens of the oldest admitted
  request not yet reported (first in, first out): its entry's token count is
  replaced by ``tokens``; the request is not counted twice. If that admission
  has already left the window, there is nothing left to correct;
* a ``record_request`` when every admission has been reported (the caller did
  not check first) counts a new request at the current time.

So both call patterns work: ``should_admit`` alone, and the seed's
``should_admit`` then ``record_request`` for each admitted request.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from llmds._checks import check_float, check_int
from llmds.errors import ValidationError

__all__ = ["AdmissionController"]


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
    With the window being the requests counted at times ``t > now - window_size``
    (see the module docstring for what counts)::

        admit  iff  (requests_in_window + 1) / window_size <= qps_target
               and  (tokens_in_window + estimated_tokens) / window_size <= token_rate_limit

    A rejected ``should_admit`` counts nothing. ``stats()["unreported_admissions"]``
    is the number of admitted requests still waiting for their ``record_request``.
    """

    __slots__ = (
        "qps_target",
        "token_rate_limit",
        "window_size",
        "_clock",
        "_events",
        "_pending",
        "_unreported",
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
        self.qps_target = check_float("qps_target", qps_target, 0.0, low_open=True)
        self.token_rate_limit = check_float("token_rate_limit", token_rate_limit, 0.0, low_open=True)
        self.window_size = check_float("window_size", window_size, 0.0, low_open=True)
        if not callable(clock):
            raise ValidationError(f"clock must be callable returning seconds, got {clock!r}")
        self._clock = clock
        self._events: deque[list] = deque()  # [time, tokens] per counted request, oldest left
        # admitted entries still in the window and not yet reported: a subsequence of _events
        self._pending: deque[list] = deque()
        self._unreported = 0  # admitted, not yet reported (>= len(_pending); the rest expired)
        self._window_tokens = 0  # invariant: == sum of tokens in _events
        self._admitted = 0
        self._rejected = 0

    def _expire(self, now: float) -> None:
        events, pending = self._events, self._pending
        horizon = now - self.window_size
        while events and events[0][0] <= horizon:
            entry = events.popleft()
            self._window_tokens -= entry[1]
            if pending and pending[0] is entry:
                pending.popleft()

    def should_admit(self, estimated_tokens: int = 0) -> tuple[bool, str]:
        """Decide whether a request of ``estimated_tokens`` tokens may run now.

        Returns ``(True, "admitted")``, having counted the request in the window
        with ``estimated_tokens``, or ``(False, reason)``, counting nothing; the
        reason names the limit hit and the rate the request would bring it to.
        """
        estimated_tokens = check_int("estimated_tokens", estimated_tokens, 0)
        now = self._clock()
        self._expire(now)
        w = self.window_size
        qps = (len(self._events) + 1) / w
        if qps > self.qps_target:
            self._rejected += 1
            return False, (
                f"qps limit: {qps:.1f} req/s over the last {w:g}s "
                f"exceeds qps_target={self.qps_target:g}"
            )
        token_rate = (self._window_tokens + estimated_tokens) / w
        if token_rate > self.token_rate_limit:
            self._rejected += 1
            return False, (
                f"token rate limit: {token_rate:.1f} tokens/s over the last {w:g}s "
                f"exceeds token_rate_limit={self.token_rate_limit:g}"
            )
        self._admitted += 1
        entry = [now, estimated_tokens]
        self._events.append(entry)
        self._pending.append(entry)
        self._unreported += 1
        self._window_tokens += estimated_tokens
        return True, "admitted"

    def record_request(self, tokens: int) -> None:
        """Report a request's actual ``tokens``.

        Corrects the oldest unreported admission (its estimate becomes
        ``tokens``); with no unreported admission, counts a new request now.
        """
        tokens = check_int("tokens", tokens, 0)
        now = self._clock()
        self._expire(now)
        if self._unreported:
            # FIFO: admissions that already left the window are the oldest unreported ones
            if self._unreported == len(self._pending):
                entry = self._pending.popleft()
                self._window_tokens += tokens - entry[1]
                entry[1] = tokens
            self._unreported -= 1
            return
        self._events.append([now, tokens])
        self._window_tokens += tokens

    def retry_after(self, estimated_tokens: int = 0) -> float:
        """Seconds until ``should_admit(estimated_tokens)`` would admit if nothing else arrives.

        0.0 when it would admit now; ``math.inf`` when the request alone exceeds the token
        budget of a whole window.  What an HTTP server puts in ``Retry-After`` on a rejection.
        """
        estimated_tokens = check_int("estimated_tokens", estimated_tokens, 0)
        now = self._clock()
        self._expire(now)
        w, events = self.window_size, self._events
        budget = self.token_rate_limit * w
        if estimated_tokens > budget:
            return math.inf
        # requests: the most that may stay in the window, by should_admit's own comparison
        keep = math.floor(self.qps_target * w)
        while keep >= 0 and (keep + 1) / w > self.qps_target:
            keep -= 1
        if keep < 0:
            return math.inf
        k = len(events) - keep  # the k oldest entries must leave first
        wait = events[k - 1][0] + w - now if k > 0 else 0.0
        # tokens: the oldest entries leave until the rest plus this request fit the budget
        tokens = self._window_tokens + estimated_tokens
        for t, n in events:
            if tokens <= budget:
                break
            tokens -= n
            wait = max(wait, t + w - now)
        return max(wait, 0.0)

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
            "unreported_admissions": self._unreported,
        }

    def reset(self) -> None:
        """Empty the window and zero the counters."""
        self._events.clear()
        self._pending.clear()
        self._unreported = 0
        self._window_tokens = 0
        self._admitted = 0
        self._rejected = 0
