"""cb_lab's exceptions: the names of its reference, on llmds's one hierarchy.

``CBLabException`` *is* :class:`llmds.errors.LLMDSError` and ``ValidationError``
*is* :class:`llmds.errors.ValidationError` (aliases, not copies), so an argument
check anywhere in llmds raises the class cb_lab users catch.  The other names
are subclasses that say what kind of failure it was; each is also the llmds
type (and builtin) of that kind::

    CBLabException = LLMDSError
    ├── ValidationError = llmds ValidationError (ValueError)      bad argument, shape, dtype
    │   └── ConfigurationError                                    bad knob (budget <= 0, ...)
    ├── RequestError            (StateError → RuntimeError)       request in the wrong state
    │   └── RequestNotFoundError (+ NotFoundError → KeyError)     unknown request id
    ├── SchedulerError          (StateError → RuntimeError)
    │   └── DuplicateRequestError (+ ValidationError)             id already active
    ├── KVCacheError            (StateError → RuntimeError)
    ├── KVMemoryError           (CapacityError → ValueError)      out of KV blocks
    ├── ModelError              (StateError → RuntimeError)
    └── MonitoringError         (StateError → RuntimeError)

The reference calls the memory error ``MemoryError``.  That name would shadow
the builtin wherever it is star-imported, so the class is ``KVMemoryError``
and ``MemoryError`` is an alias *in this module only*: ``from
cb_lab.exceptions import MemoryError`` works, ``import *`` does not bring it in.
"""

from __future__ import annotations

from llmds.errors import CapacityError, LLMDSError, NotFoundError, StateError
from llmds.errors import ValidationError as ValidationError

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

CBLabException = LLMDSError


class ConfigurationError(ValidationError):
    """Invalid configuration (token budget or chunk size <= 0, chunk above the budget, ...)."""


class RequestError(StateError):
    """An operation a request cannot perform in its current state."""


class RequestNotFoundError(RequestError, NotFoundError):
    """An unknown request id."""


class SchedulerError(StateError):
    """The scheduler cannot perform an operation."""


class DuplicateRequestError(SchedulerError, ValidationError):
    """A request id that is already active."""


class KVCacheError(StateError):
    """A KV cache operation is invalid in the cache's state."""


class KVMemoryError(CapacityError):
    """A fixed KV block pool ran out of blocks; nothing was changed."""


class ModelError(StateError):
    """A model operation failed."""


class MonitoringError(StateError):
    """A monitoring or profiling operation is invalid (e.g. no baseline)."""


#: The documented name of :class:`KVMemoryError` (deliberately not in ``__all__``).
MemoryError = KVMemoryError  # noqa: A001
