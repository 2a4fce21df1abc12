"""cb_lab's exception hierarchy (defined in :mod:`llmds.engine.lab_errors`).

Every class is a ``CBLabException`` (an ``llmds.errors.LLMDSError``) and also
the ``llmds.errors`` type that names the kind of failure, so callers can catch
either family and the builtins behind them::

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

The reference API called the memory error ``MemoryError``.  That name would
shadow the builtin wherever it is star-imported, so the class is
``KVMemoryError`` and ``MemoryError`` survives only as an alias *in this
module*: ``from cb_lab.exceptions import MemoryError`` works, ``import *``
does not bring it in.
"""

from __future__ import annotations

from llmds.engine import lab_errors as _lab
from llmds.engine.lab_errors import *  # noqa: F403  (the hierarchy itself lives there)
from llmds.engine.lab_errors import KVMemoryError

__all__ = list(_lab.__all__)

#: The documented name of :class:`KVMemoryError` (deliberately not in ``__all__``).
MemoryError = KVMemoryError  # noqa: A001
