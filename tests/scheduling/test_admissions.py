"""AdmissionController: decisions and rates against a brute-force list model with a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from llmds.scheduling.admissions import AdmissionController
from llmds.errors import ValidationError


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class AdmissionMachine(RuleBasedStateMachine):
    """Against a list model: every counted request kept forever, unreported admissions as a FIFO."""

    @initialize(
        qps=st.sampled_from([0.5, 1.0, 2.0]),
        tok=st.sampled_from([5.0, 20.0]),
        window=st.sampled_from([1, 2.5, 4]),
    )
    def setup(self, qps, tok, window):
        self.clock = FakeClock()
        self.ctl = AdmissionController(
            qps_target=qps, token_rate_limit=tok, window_size=window, clock=self.clock
        )
        self.qps, self.tok, self.window = qps, tok, window
        self.events: list[list] = []  # [time, tokens] of every counted request, never pruned
        self.unreported: list[int] = []  # indices into events of admitted, unreported requests
        self.admitted = self.rejected = 0

    def in_window(self):
        now = self.clock.t
        return [e for e in self.events if e[0] > now - self.window]

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5]))
    def advance(self, dt):
        self.clock.t += dt

    @rule(est=st.integers(0, 60))
    def should_admit(self, est):
        live = self.in_window()
        qps_ok = (len(live) + 1) / self.window <= self.qps
        tok_ok = (sum(t for _, t in live) + est) / self.window <= self.tok
        ok, reason = self.ctl.should_admit(est)
        assert ok == (qps_ok and tok_ok)
        if ok:
            assert reason == "admitted"
            self.admitted += 1
            self.unreported.append(len(self.events))
            self.events.append([self.clock.t, est])
        else:
            assert reason.startswith("qps limit" if not qps_ok else "token rate limit")
            self.rejected += 1

    @rule(tokens=st.integers(0, 30))
    def record(self, tokens):
        self.ctl.record_request(tokens)
        if self.unreported:  # corrects the oldest unreported admission (a no-op once expired)
            self.events[self.unreported.pop(0)][1] = tokens
        else:
            self.events.append([self.clock.t, tokens])

    @rule()
    def reset_rarely(self):
        if (self.admitted + self.rejected) % 11 == 10:
            self.ctl.reset()
            self.events.clear()
            self.unreported.clear()
            self.admitted = self.rejected = 0

    @invariant()
    def stats_match(self):
        if not hasattr(self, "ctl"):
            return
        s = self.ctl.stats()
        live = self.in_window()
        decided = self.admitted + self.rejected
        assert s["admitted_requests"] == self.admitted
        assert s["rejected_requests"] == self.rejected
        assert s["rejection_rate"] == (self.rejected / decided if decided else 0.0)
        assert s["current_qps"] == len(live) / self.window
        assert s["current_token_rate"] == sum(t for _, t in live) / self.window
        assert s["target_qps"] == self.qps and s["token_rate_limit"] == self.tok
        assert s["unreported_admissions"] == len(self.unreported)


TestAdmission = AdmissionMachine.TestCase
TestAdmission.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)


def test_qps_reason_names_limit_and_rate():
    clock = FakeClock(0.0)
    ctl = AdmissionController(qps_target=1.0, token_rate_limit=1000, window_size=2, clock=clock)
    for _ in range(2):
        assert ctl.should_admit(1) == (True, "admitted")
        ctl.record_request(1)
    ok, reason = ctl.should_admit(1)
    assert not ok
    assert reason == "qps limit: 1.5 req/s over the last 2s exceeds qps_target=1"


def test_token_reason_and_window_expiry_is_exclusive():
    clock = FakeClock(0.0)
    ctl = AdmissionController(qps_target=100.0, token_rate_limit=10, window_size=10, clock=clock)
    ctl.record_request(90)  # no admission before it: counts a request of 90 tokens
    ok, reason = ctl.should_admit(11)
    assert not ok
    assert reason == "token rate limit: 10.1 tokens/s over the last 10s exceeds token_rate_limit=10"
    clock.t = 5.0
    assert ctl.should_admit(10) == (True, "admitted")  # exactly at the limit; now counted
    clock.t = 9.999
    assert ctl.stats()["current_token_rate"] == 10.0
    clock.t = 10.0  # the record made at t=0 leaves the window at exactly t=10
    assert ctl.stats()["current_token_rate"] == 1.0
    clock.t = 15.0
    assert ctl.stats()["current_token_rate"] == 0.0
    assert ctl.should_admit(100)[0]


def test_should_admit_alone_is_limited():
    """The issue's case: five checks in a row at 2 req/s over 1 s admit two, reject three."""
    clock = FakeClock(0.0)
    ctl = AdmissionController(qps_target=2.0, window_size=1, clock=clock)
    decisions = [ctl.should_admit()[0] for _ in range(5)]
    assert decisions == [True, True, False, False, False]
    s = ctl.stats()
    assert s["admitted_requests"] == 2 and s["rejected_requests"] == 3
    assert s["rejection_rate"] == pytest.approx(3 / 5)
    assert s["current_qps"] == 2.0 and s["unreported_admissions"] == 2
    clock.t = 1.0  # both admissions leave the window
    assert ctl.should_admit()[0] and ctl.stats()["current_qps"] == 1.0


def test_admit_then_record_counts_once_with_the_actual_tokens():
    clock = FakeClock(0.0)
    ctl = AdmissionController(qps_target=2.0, token_rate_limit=100, window_size=1, clock=clock)
    assert ctl.should_admit(estimated_tokens=80)[0]
    assert ctl.stats()["current_token_rate"] == 80.0  # the estimate is charged at admission
    assert not ctl.should_admit(estimated_tokens=30)[0]  # 80 + 30 > 100
    ctl.record_request(tokens=20)  # the actual count replaces the estimate
    s = ctl.stats()
    assert s["current_qps"] == 1.0 and s["current_token_rate"] == 20.0
    assert s["unreported_admissions"] == 0
    assert ctl.should_admit(estimated_tokens=30)[0]  # 20 + 30 fits now
    ctl.record_request(tokens=30)
    assert ctl.stats()["current_qps"] == 2.0  # two requests, each counted once
    assert not ctl.should_admit()[0]


def test_reports_match_admissions_first_in_first_out():
    clock = FakeClock(0.0)
    ctl = AdmissionController(qps_target=10.0, token_rate_limit=1000, window_size=2, clock=clock)
    assert ctl.should_admit(100)[0]  # A at t=0
    clock.t = 1.0
    assert ctl.should_admit(200)[0]  # B at t=1
    ctl.record_request(5)  # reports A: its entry (t=0) now holds 5 tokens
    assert ctl.stats()["current_token_rate"] == (5 + 200) / 2
    clock.t = 2.0  # A leaves the window, B stays
    assert ctl.stats()["current_token_rate"] == 200 / 2
    clock.t = 3.5  # B leaves the window unreported
    assert ctl.should_admit(50)[0]  # C at t=3.5
    ctl.record_request(7)  # reports B (the older): already expired, nothing to correct
    s = ctl.stats()
    assert s["current_qps"] == 0.5 and s["current_token_rate"] == 50 / 2  # C keeps its estimate
    assert s["unreported_admissions"] == 1
    ctl.record_request(9)  # reports C
    assert ctl.stats()["current_token_rate"] == 9 / 2
    ctl.record_request(11)  # every admission reported: a new request
    s = ctl.stats()
    assert s["current_qps"] == 1.0 and s["current_token_rate"] == (9 + 11) / 2
    assert s["admitted_requests"] == 3  # decisions only; unchecked records are not decisions


def test_rejected_check_counts_nothing_and_reset_clears_everything():
    ctl = AdmissionController(qps_target=0.1, window_size=10, clock=FakeClock())
    assert ctl.should_admit()[0]
    assert not ctl.should_admit()[0]
    ctl.record_request(0)  # reports the one admission; the rejection left nothing to report
    s = ctl.stats()
    assert s["current_qps"] == 0.1 and s["unreported_admissions"] == 0
    assert s["admitted_requests"] == 1 and s["rejected_requests"] == 1
    ctl.reset()
    s = ctl.stats()
    assert s["admitted_requests"] == 0 and s["current_qps"] == 0.0 and s["rejection_rate"] == 0.0
    assert s["unreported_admissions"] == 0


@pytest.mark.parametrize("name", ["qps_target", "token_rate_limit", "window_size"])
@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "10", None])
def test_bad_constructor_args(name, bad):
    with pytest.raises(ValidationError):
        AdmissionController(**{name: bad})


def test_bad_clock_and_token_args():
    with pytest.raises(ValidationError):
        AdmissionController(clock="now")
    ctl = AdmissionController(clock=FakeClock())
    for bad in (-1, 1.5, True, "3", None):
        with pytest.raises(ValidationError):
            ctl.should_admit(bad)
        with pytest.raises(ValidationError):
            ctl.record_request(bad)
    s = ctl.stats()
    assert s["admitted_requests"] == 0 and s["rejected_requests"] == 0 and s["current_qps"] == 0.0


@settings(max_examples=200, deadline=None)
@given(
    qps=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    tok=st.sampled_from([5.0, 20.0]),
    window=st.sampled_from([1, 2.5, 4]),
    history=st.lists(st.tuples(st.floats(0, 3), st.integers(0, 30)), max_size=12),
    ask=st.integers(0, 30),
)
def test_retry_after_is_the_exact_wait(qps, tok, window, history, ask):
    """After ``retry_after(n)`` seconds the request is admitted; a moment earlier it is not."""

    def replay():
        clock = FakeClock()
        ctl = AdmissionController(qps_target=qps, token_rate_limit=tok, window_size=window, clock=clock)
        for dt, n in history:
            clock.t += dt
            ctl.should_admit(n)
        return clock, ctl

    clock, ctl = replay()
    wait = ctl.retry_after(ask)
    if ask > tok * window or 1 / window > qps:  # never admitted, however long it waits
        assert wait == math.inf
        clock.t += 1e6
        assert not ctl.should_admit(ask)[0]
        return
    assert wait >= 0.0
    clock.t += wait + 1e-9
    assert ctl.should_admit(ask)[0]
    if wait > 1e-6:
        clock, ctl = replay()
        clock.t += wait - 1e-6
        assert not ctl.should_admit(ask)[0]


def test_retry_after_rejects_bad_tokens():
    with pytest.raises(ValidationError):
        AdmissionController().retry_after(-1)
