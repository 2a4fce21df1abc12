"""One exception hierarchy for llmds.

Misuse raises; running out of room raises ``CapacityError`` where the API has
no return value to report it with (``alloc``), and returns ``None``/``False``
where it does (``append_slots``, ``allocate_for``).  No class shadows a builtin.
"""

from __future__ import annotations

__all__ = [
    "LLMDSError",
    "ValidationError",
    "CapacityError",
    "NotFoundError",
    "StateError",
    "CorruptFileError",
    "EmptyHeapError",
]


class LLMDSError(Exception):
    """Base class of every error raised by llmds."""


class ValidationError(LLMDSError, ValueError):
    """A bad argument: wrong type, range, shape or a duplicate id."""


class CapacityError(LLMDSError, ValueError):
    """Pages, budget or slots ran out; nothing was changed."""


class NotFoundError(LLMDSError, KeyError):
    """An unknown id where the API does not define a no-op."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class StateError(LLMDSError, RuntimeError):
    """An operation that is invalid in the object's current state (double free, ...)."""


class CorruptFileError(LLMDSError, ValueError):
    """A saved file is truncated, corrupt, or of an unknown format version."""


class EmptyHeapError(StateError, IndexError):
    """``pop`` on an empty heap (also an ``IndexError``, like ``heapq.heappop``)."""
