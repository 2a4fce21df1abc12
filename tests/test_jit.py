"""The numba compile notice: one WARNING per process once compiling llmds kernels takes long."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from numba.core.event import Event, EventStatus

from llmds._jit import NOTICE, CompileNotice

SRC = str(Path(__file__).resolve().parents[1] / "src")


def compile_event(module: str, start: bool) -> Event:
    dispatcher = SimpleNamespace(py_func=SimpleNamespace(__module__=module))
    status = EventStatus.START if start else EventStatus.END
    return Event("numba:compile", status, data={"dispatcher": dispatcher})


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeTimer:
    """Records each timer the notice starts; the test fires or inspects them."""

    made: list[FakeTimer] = []

    def __init__(self, delay, fn) -> None:
        self.delay, self.fn = delay, fn
        self.started = self.cancelled = False
        FakeTimer.made.append(self)

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True


@pytest.fixture
def notice():
    FakeTimer.made = []
    clock = FakeClock()
    return CompileNotice(after_s=2.0, clock=clock, timer=FakeTimer), clock


def compile_for(n: CompileNotice, clock: FakeClock, seconds: float, module="llmds._k") -> None:
    n.notify(compile_event(module, True))
    clock.t += seconds
    n.notify(compile_event(module, False))


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmds.jit"]


def test_long_compile_announced_once_while_running(notice, caplog):
    n, clock = notice
    caplog.set_level(logging.WARNING, logger="llmds.jit")
    n.notify(compile_event("llmds.retrieval._hnsw_kernels", True))
    (timer,) = FakeTimer.made
    assert timer.started and timer.delay == 2.0
    timer.fn()  # the timer fires while the compile still runs
    assert n.announced
    (msg,) = warnings_of(caplog)
    assert "llmds.retrieval._hnsw_kernels" in msg and "first use" in msg and "cache" in msg
    clock.t += 5.0
    n.notify(compile_event("llmds.retrieval._hnsw_kernels", False))
    assert timer.cancelled
    compile_for(n, clock, 10.0)  # later compiles: no timer, no second warning
    assert len(FakeTimer.made) == 1 and len(warnings_of(caplog)) == 1


def test_compile_time_adds_up_across_kernels(notice, caplog):
    n, clock = notice
    caplog.set_level(logging.WARNING, logger="llmds.jit")
    compile_for(n, clock, 1.5)
    assert FakeTimer.made[0].cancelled and not warnings_of(caplog)
    n.notify(compile_event("llmds._k", True))
    assert FakeTimer.made[1].delay == pytest.approx(0.5)  # what is left of the 2 s
    clock.t += 0.6
    n.notify(compile_event("llmds._k", False))  # 2.1 s in total: announced at the end
    assert len(warnings_of(caplog)) == 1 and n.compiled_s == pytest.approx(2.1)


def test_fast_foreign_and_nested_compiles(notice, caplog):
    n, clock = notice
    caplog.set_level(logging.WARNING, logger="llmds.jit")
    compile_for(n, clock, 30.0, module="someone_else")  # not ours: ignored
    compile_for(n, clock, 30.0, module="llmdsx.kernels")
    assert not FakeTimer.made and n.compiled_s == 0.0
    n.notify(compile_event("llmds._a", True))
    compile_for(n, clock, 0.5, module="llmds._b")  # nested in _a: counted as part of _a
    clock.t += 0.5
    n.notify(compile_event("llmds._a", False))
    assert len(FakeTimer.made) == 1 and n.compiled_s == pytest.approx(1.0)
    assert not warnings_of(caplog) and not n.announced
    n.notify(compile_event("llmds._a", False))  # an unmatched end changes nothing
    assert n.compiled_s == pytest.approx(1.0)


def test_the_process_notice_is_registered_with_numba():
    from numba.core import event

    assert NOTICE in event._registered["numba:compile"]
    for mod in ("sketches/_cms_kernels", "retrieval/_hnsw_kernels", "retrieval/_bm25_kernels",
                "retrieval/_postings", "retrieval/_topk_kernels", "retrieval/_wordtable"):
        text = (Path(SRC) / "llmds" / f"{mod}.py").read_text()
        assert "from llmds._jit import njit" in text, mod
        assert "from numba import njit" not in text, mod


def test_real_compile_says_so_on_stderr_once_and_a_cache_load_says_nothing(tmp_path):
    code = (
        "import llmds._jit as j; j.NOTICE.after_s = 0.0\n"
        "from llmds.sketches.cmsketch import CountMinSketch\n"
        "c = CountMinSketch(); c.add_many([1, 2]); c.add_many(['a']); c.estimate_many([1])\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=SRC)

    def stderr_lines() -> list[str]:
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return [line for line in run.stderr.splitlines() if "compiling numba kernels" in line]

    cold = stderr_lines()  # empty cache directory: numba compiles
    assert len(cold) == 1 and "llmds.sketches._cms_kernels" in cold[0]
    assert stderr_lines() == []  # the kernels now load from the cache: no compile, no notice
