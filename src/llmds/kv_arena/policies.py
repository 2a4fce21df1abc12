"""What to do when the KV arena is out of room: the guide's OOM strategies as one helper.

The guide ("OOM Handling") names three strategies; :class:`AllocationPolicy`
keeps its names:

* ``REJECT``: one attempt ("fastest response, loses request").
* ``REDUCE`` (alias ``SHRINK``): halve ``max_tokens`` until the request fits,
  never below the prompt length ("accepts request with shorter output").  The
  guide halves down to 0; a cap below the prompt cannot hold the prompt, so
  the last attempt is ``max_tokens == prompt_len``.
* ``WAIT``: retry after every ``free_for`` until ``timeout`` has passed on
  ``clock`` ("queues request, increases latency").  Instead of the guide's
  10 ms polling sleep it blocks on the arena's condition variable, which
  ``free_for`` signals; a free between the failed attempt and the wait is not
  lost (the arena's ``free_generation`` counter).  Tests inject ``clock`` and
  ``wait_fn`` and never sleep.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from llmds._checks import check_float
from llmds.errors import ValidationError

__all__ = ["AllocationGrant", "AllocationPolicy", "allocate_with_policy"]


class AllocationPolicy(enum.StrEnum):
    REJECT = "reject"
    REDUCE = "reduce"
    SHRINK = "reduce"  # alias of REDUCE
    WAIT = "wait"

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            v = value.lower()
            if v == "shrink":
                return cls.REDUCE
            for member in cls:
                if member.value == v:
                    return member
        return None


@dataclass(frozen=True, slots=True)
class AllocationGrant:
    """Outcome of :func:`allocate_with_policy`."""

    granted: bool
    policy: AllocationPolicy
    prompt_len: int
    max_tokens: int | None  # the cap granted (REDUCE may lower it); the request's when not granted
    attempts: int  # allocate_for calls made
    waited: float  # clock units spent (WAIT); 0.0 for the other policies

    def __bool__(self) -> bool:
        return self.granted


def allocate_with_policy(
    cache,
    request_id: Hashable,
    prompt_len: int,
    max_tokens: int | None = None,
    policy: AllocationPolicy | str = AllocationPolicy.REJECT,
    *,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    wait_fn: Callable[[float], object] | None = None,
    reserve: bool = True,
) -> AllocationGrant:
    """Allocate ``request_id`` in ``cache`` (a ``TensorKVCache``) under an OOM policy.

    Parameters
    ----------
    policy : AllocationPolicy or its name (``"reject"``, ``"reduce"``/``"shrink"``, ``"wait"``)
    timeout : float
        WAIT only (required, >= 0): give up once ``clock()`` is ``timeout`` past the start.
    clock : callable
        Returns the current time; ``time.monotonic`` by default.
    wait_fn : callable, optional
        WAIT only: ``wait_fn(remaining)`` blocks until it is worth retrying.  The
        default waits (in real seconds, at most ``remaining``) for the next
        ``free_for`` on ``cache``.
    reserve : bool
        Passed to ``cache.allocate_for``.

    Returns
    -------
    AllocationGrant
        Truthy when granted.  Misuse (bad lengths, duplicate id) raises as
        ``allocate_for`` does; running out of room is a refused grant.
    """
    try:
        policy = AllocationPolicy(policy)
    except ValueError:
        raise ValidationError(
            f"policy must be one of reject, reduce (shrink), wait; got {policy!r}"
        ) from None

    def grant(ok: bool, cap: int | None, attempts: int, waited: float = 0.0) -> AllocationGrant:
        return AllocationGrant(ok, policy, prompt_len, cap, attempts, waited)

    if policy is AllocationPolicy.REDUCE:
        cap, attempts = max_tokens, 0
        while True:
            attempts += 1
            if cache.allocate_for(request_id, prompt_len, cap, reserve=reserve):
                return grant(True, cap, attempts)
            if cap is None or cap <= prompt_len:
                return grant(False, max_tokens, attempts)
            cap = max(prompt_len, cap // 2)

    if policy is AllocationPolicy.REJECT:
        ok = cache.allocate_for(request_id, prompt_len, max_tokens, reserve=reserve)
        return grant(ok, max_tokens, 1)

    # WAIT
    if timeout is None:
        raise ValidationError("WAIT needs a finite timeout >= 0 (clock units), got None")
    timeout = check_float("timeout", timeout, 0.0)
    if cache.blocks_needed(prompt_len, max_tokens, reserve) > cache.num_blocks:
        return grant(False, max_tokens, 0)  # larger than the whole arena: waiting cannot help
    start = clock()
    deadline, attempts = start + timeout, 0
    while True:
        generation = cache.free_generation  # read before the attempt: no lost wake-up
        attempts += 1
        if cache.allocate_for(request_id, prompt_len, max_tokens, reserve=reserve):
            return grant(True, max_tokens, attempts, clock() - start)
        remaining = deadline - clock()
        if remaining <= 0:
            return grant(False, max_tokens, attempts, clock() - start)
        if wait_fn is None:
            cache.wait_for_free(generation, remaining)
        else:
            wait_fn(remaining)
