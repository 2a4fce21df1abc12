"""Lazy top-level names (PEP 562), shared by ``llmds`` and ``cb_lab``.

Importing a package then costs only the standard library; a name's module is
imported the first time the name is read, and the value is cached in the
package's globals so later reads are plain attribute lookups.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(
    package: str, exports: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` exporting ``{name: module}``."""
    names = sorted(exports) + (["__version__"] if "__version__" in namespace else [])

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__
