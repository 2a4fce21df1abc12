"""Errors of the cb_lab teaching API (TinyLLM, ragged batches, cb_lab caches, plugins).

The hierarchy is defined here so that the engine modules behind ``cb_lab`` can
raise it; ``cb_lab.exceptions`` re-exports it under the documented paths.

Every class is a ``CBLabException`` (itself an ``llmds.errors.LLMDSError``)
and also the ``llmds.errors`` type that says what kind of failure it is, so
callers can catch either family (and the builtins behind them)::

    CBLabException(LLMDSError)
    ├── ValidationError      (+ llmds ValidationError → ValueError)   bad argument, shape, dtype
    │   └── ConfigurationError                                        bad knob (budget <= 0, ...)
    ├── RequestError         (+ StateError → RuntimeError)            request in the wrong state
    │   └── RequestNotFoundError (+ NotFoundError → KeyError)         unknown request id
    ├── SchedulerError       (+ StateError → RuntimeError)
    │   └── DuplicateRequestError (+ llmds ValidationError)           id already scheduled
    ├── KVCacheError         (+ StateError → RuntimeError)
    ├── KVMemoryError        (+ CapacityError → ValueError)           out of KV blocks
    ├── ModelError           (+ StateError → RuntimeError)
    └── MonitoringError      (+ StateError → RuntimeError)

The reference API called the memory error ``MemoryError``; that name would
shadow the builtin, so the class is ``KVMemoryError``.  Only
``cb_lab.exceptions`` keeps ``MemoryError`` as an alias (outside ``__all__``).
"""

from __future__ import annotations

from llmds import errors as _e

__all__ = [
    "CBLabException",
    "ValidationError",
    "ConfigurationError",
    "RequestError",
    "RequestNotFoundError",
    "SchedulerError",
    "DuplicateRequestError",
    "KVCacheError",
    "KVMemoryError",
    "ModelError",
    "MonitoringError",
]


class CBLabException(_e.LLMDSError):
    """Base class of every cb_lab error."""


class ValidationError(CBLabException, _e.ValidationError):
    """Invalid input: wrong type, shape, dtype, device or range."""


class ConfigurationError(ValidationError):
    """Invalid configuration (token budget or chunk size <= 0, ...)."""


class RequestError(CBLabException, _e.StateError):
    """An operation a request cannot perform in its current state."""


class RequestNotFoundError(RequestError, _e.NotFoundError):
    """An unknown request id."""


class SchedulerError(CBLabException, _e.StateError):
    """The scheduler cannot perform an operation."""


class DuplicateRequestError(SchedulerError, _e.ValidationError):
    """A request id that is already scheduled."""


class KVCacheError(CBLabException, _e.StateError):
    """A KV cache operation is invalid in the cache's state."""


class KVMemoryError(CBLabException, _e.CapacityError):
    """A fixed KV block pool ran out of blocks; nothing was changed."""


class ModelError(CBLabException, _e.StateError):
    """A model operation failed."""


class MonitoringError(CBLabException, _e.StateError):
    """A monitoring or profiling operation is invalid (e.g. no baseline)."""
