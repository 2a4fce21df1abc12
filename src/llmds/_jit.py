"""numba entry point of every llmds kernel module: ``from llmds._jit import njit``.

Kernels are compiled on their first call in a new environment (``cache=True``
then loads them from numba's on-disk cache in later processes).  Compiling is
slow and otherwise silent, so importing this module registers, once per
process, a listener on numba's ``numba:compile`` event (fired only on a real
compile, never on a cache load).  When compiling llmds kernels has taken
``NOTICE.after_s`` seconds in total, one WARNING on the ``llmds.jit`` logger says
so on stderr (Python's default handler prints warnings), once per process:
while the compile is still running (a timer), or at its end.  Silence it with
``logging.getLogger("llmds.jit").setLevel(logging.ERROR)``.

Only compiles of functions defined in ``llmds`` modules count; nested compiles
(a kernel calling another) count once, as the outermost one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from numba import njit  # re-exported: the kernel modules import it from here
from numba.core import event as _event

__all__ = ["njit", "CompileNotice", "NOTICE"]

log = logging.getLogger("llmds.jit")

NOTICE_AFTER_S = 2.0


def _llmds_module(ev: Any) -> str | None:
    """The llmds module whose function this compile event is for, else None."""
    data = ev.data if isinstance(ev.data, dict) else {}
    func = getattr(data.get("dispatcher"), "py_func", None)
    module = getattr(func, "__module__", None) or ""
    return module if module == "llmds" or module.startswith("llmds.") else None


class CompileNotice(_event.Listener):
    """Announce slow kernel compilation once (see the module docstring).

    ``clock`` (seconds) and ``timer`` (``threading.Timer``-like: ``timer(delay,
    fn)`` with ``start``/``cancel``) are injectable for tests.
    """

    def __init__(
        self,
        after_s: float = NOTICE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[float, Callable[[], None]], Any] = threading.Timer,
    ) -> None:
        self.after_s = after_s
        self.announced = False
        self.compiled_s = 0.0  # total time spent in outermost llmds compiles, finished ones
        self._clock = clock
        self._timer = timer
        self._depth = 0
        self._t0 = 0.0
        self._module = ""
        self._pending: Any = None
        self._lock = threading.Lock()  # the timer thread and on_end may race to announce

    def on_start(self, ev: Any) -> None:
        module = _llmds_module(ev)
        if module is None:
            return
        self._depth += 1
        if self._depth > 1:
            return
        self._t0 = self._clock()
        self._module = module
        if not self.announced:
            self._pending = self._timer(max(0.0, self.after_s - self.compiled_s), self._announce)
            if hasattr(self._pending, "daemon"):
                self._pending.daemon = True
            self._pending.start()

    def on_end(self, ev: Any) -> None:
        if _llmds_module(ev) is None or self._depth == 0:
            return
        self._depth -= 1
        if self._depth:
            return
        self.compiled_s += self._clock() - self._t0
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.compiled_s >= self.after_s:
            self._announce()

    def _announce(self) -> None:
        with self._lock:
            if self.announced:
                return
            self.announced = True
        log.warning(
            "llmds: compiling numba kernels (%s) on first use in this environment; this takes "
            "up to a minute once, later processes load them from numba's on-disk cache",
            self._module,
        )


NOTICE = CompileNotice()
_event.register("numba:compile", NOTICE)
