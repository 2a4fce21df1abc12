"""Returning freed memory: the idle trimmer trims once per idle period and never while busy;
glibc's settings named in the environment are left alone."""

from __future__ import annotations

import sys

import pytest

from llmds.server import memory
from llmds.server.memory import IdleTrimmer


class Later:
    """A fake ``call_later``: callbacks run when the test says so."""

    def __init__(self) -> None:
        self.pending: list = []

    def __call__(self, delay, callback) -> None:
        self.pending.append((delay, callback))

    def run(self) -> None:
        pending, self.pending = self.pending, []
        for _, callback in pending:
            callback()


def test_trims_once_per_idle_period_after_the_delay():
    trims, later = [], Later()
    t = IdleTrimmer(delay=2.5, trim=lambda: trims.append(1))
    t.busy()
    t.idle(later)
    assert [d for d, _ in later.pending] == [2.5] and trims == []
    later.run()
    assert trims == [1] and t.num_trims == 1
    t.idle(later)  # a second idle signal of the same period (e.g. retrieval finished loading)
    later.run()
    assert trims == [1]


def test_a_request_in_the_delay_cancels_the_trim():
    trims, later = [], Later()
    t = IdleTrimmer(delay=1.0, trim=lambda: trims.append(1))
    t.idle(later)
    t.busy()  # a request came in before the check
    later.run()
    assert trims == []
    t.idle(later)  # it left: the next idle period trims
    later.run()
    assert trims == [1]


def test_the_trim_runs_through_run():
    ran, later = [], Later()
    t = IdleTrimmer(delay=0.0, trim=lambda: "trimmed", run=lambda f: ran.append(f()))
    t.idle(later)
    later.run()
    assert ran == ["trimmed"]


@pytest.mark.skipif(memory._glibc() is None, reason="glibc only")
def test_tune_allocator_leaves_settings_the_environment_names(monkeypatch):
    set_calls = []
    monkeypatch.setattr(memory, "_glibc", lambda: type("Libc", (), {
        "mallopt": staticmethod(lambda p, v: set_calls.append((p, v)) or 1)})())
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert memory.tune_allocator(arena_max=2, mmap_threshold=1 << 20) == {"MALLOC_MMAP_THRESHOLD_": 1 << 20}
    assert set_calls == [(memory.M_MMAP_THRESHOLD, 1 << 20)]


def test_off_glibc_both_are_no_ops(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.tune_allocator() == {} and memory.trim() is False


@pytest.mark.skipif(memory._glibc() is None, reason="glibc only")
def test_trim_calls_malloc_trim():
    assert isinstance(memory.trim(), bool)


def test_the_server_trims_once_its_last_request_left(live, http):
    import threading

    from server_helpers import chat_body

    trimmed = threading.Event()
    old = live.state.trimmer
    live.state.trimmer = IdleTrimmer(delay=0.0, trim=trimmed.set, run=live.state._in_executor)
    try:
        assert http.post("/v1/chat/completions", json=chat_body(max_tokens=2)).status_code == 200
        assert trimmed.wait(60)
        assert live.state.trimmer.num_trims == 1
    finally:
        live.state.trimmer = old
