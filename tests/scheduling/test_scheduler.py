"""Scheduler: batch release timing and exact batch contents against a brute-force model."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from llmds.errors import NotFoundError, StateError, ValidationError
from llmds.scheduling.scheduler import Scheduler


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class ModelRequest:
    def __init__(self, rid, tokens, slo_ms, arrival):
        self.rid, self.tokens, self.slo_ms, self.arrival = rid, tokens, slo_ms, arrival
        self.deadline = None if slo_ms is None else arrival + slo_ms / 1000.0


class SchedulerMachine(RuleBasedStateMachine):
    """Model: lists and sorts, recomputed from scratch at every step."""

    @initialize(batch=st.integers(1, 5), wait=st.sampled_from([0.0, 10.0, 50.0]))
    def setup(self, batch, wait):
        self.clock = FakeClock()
        self.sched = Scheduler(max_batch_size=batch, max_wait_ms=wait, clock=self.clock)
        self.batch, self.wait = batch, wait
        self.pending: dict[int, ModelRequest] = {}
        self.in_flight: dict[int, ModelRequest] = {}
        self.next_id = 0
        self.batches = self.released = self.done = self.misses = 0

    def model_batch(self, force):
        if not self.pending:
            return None
        now = self.clock.t
        oldest = min(self.pending.values(), key=lambda r: r.rid)
        due = (
            len(self.pending) >= self.batch or force or (now - oldest.arrival) * 1000.0 >= self.wait
        )
        if not due:
            return None
        window = self.wait / 1000.0
        reqs = list(self.pending.values())
        urgent = sorted(
            (r for r in reqs if r.deadline is not None and r.deadline - now < window),
            key=lambda r: (r.deadline, r.rid),
        )
        rest = sorted(
            (r for r in reqs if r not in urgent), key=lambda r: (-1.0 / (r.tokens + 1.0), r.rid)
        )
        return [r.rid for r in (urgent + rest)[: self.batch]]

    @rule(ms=st.sampled_from([0, 1, 5, 10, 25, 50, 80]))
    def advance(self, ms):
        self.clock.t += ms / 1000.0

    @rule(
        tokens=st.integers(0, 6),
        slo=st.one_of(st.none(), st.sampled_from([5.0, 20.0, 60.0, 200.0])),
    )
    def submit(self, tokens, slo):
        rid = self.sched.submit(tokens, slo_ms=slo)
        assert rid == self.next_id
        self.pending[rid] = ModelRequest(rid, tokens, slo, self.clock.t)
        self.next_id += 1

    @rule(force=st.booleans())
    def get_batch(self, force):
        expected = self.model_batch(force)
        assert self.sched.get_batch(force=force) == expected
        if expected is not None:
            for rid in expected:
                self.in_flight[rid] = self.pending.pop(rid)
            self.batches += 1
            self.released += len(expected)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def complete(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.in_flight)), min_size=1, unique=True))
        self.sched.complete_batch(ids)
        for rid in ids:
            r = self.in_flight.pop(rid)
            if r.deadline is not None and self.clock.t > r.deadline:
                self.misses += 1
        self.done += len(ids)

    @rule(rid=st.integers(0, 30), tokens=st.integers(0, 6))
    def update_priority(self, rid, tokens):
        if rid in self.pending:
            self.sched.update_priority(rid, tokens)
            self.pending[rid].tokens = tokens
        elif rid in self.in_flight:
            with pytest.raises(StateError):
                self.sched.update_priority(rid, tokens)
        else:
            with pytest.raises(NotFoundError):
                self.sched.update_priority(rid, tokens)

    @invariant()
    def stats_match(self):
        if not hasattr(self, "sched"):
            return
        s = self.sched.stats()
        assert s["queue_size"] == len(self.pending)
        assert s["in_flight"] == len(self.in_flight)
        assert s["batch_count"] == self.batches
        assert s["total_processed"] == self.done
        assert s["slo_misses"] == self.misses
        assert s["avg_batch_size"] == (self.released / self.batches if self.batches else 0.0)


TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)


def test_full_batch_is_released_at_once_and_ids_start_at_zero():
    clock = FakeClock()
    s = Scheduler(max_batch_size=3, max_wait_ms=50.0, clock=clock)
    ids = [s.submit(t) for t in (30, 10, 20)]
    assert ids == [0, 1, 2]
    assert s.get_batch() == [1, 2, 0]  # shorter first; no waiting needed
    s.complete_batch([1, 2, 0])
    assert s.stats()["total_processed"] == 3


def test_partial_batch_waits_for_oldest():
    clock = FakeClock(0.0)
    s = Scheduler(max_batch_size=8, max_wait_ms=50.0, clock=clock)
    s.submit(5)
    clock.t = 0.030
    s.submit(1)
    assert s.get_batch() is None
    clock.t = 0.049
    assert s.get_batch() is None
    clock.t = 0.050  # the first request has now waited 50 ms
    assert s.get_batch() == [1, 0]
    assert s.get_batch() is None and s.get_batch(force=True) is None


def test_force_and_fifo_ties():
    s = Scheduler(max_batch_size=2, clock=FakeClock())
    for _ in range(3):
        s.submit(7)
    assert s.get_batch() == [0, 1]
    assert s.get_batch() is None
    assert s.get_batch(force=True) == [2]


def test_urgent_slo_requests_go_first_earliest_deadline_first():
    clock = FakeClock(0.0)
    s = Scheduler(max_batch_size=4, max_wait_ms=50.0, clock=clock)
    a = s.submit(1)  # best priority, no SLO
    b = s.submit(100, slo_ms=500.0)  # slack 0.5 s: not urgent yet
    c = s.submit(100, slo_ms=40.0)  # slack 40 ms < 50 ms window: urgent
    d = s.submit(100, slo_ms=30.0)  # urgent, earlier deadline
    assert s.get_batch() == [d, c, a, b]


def test_slo_miss_counted_on_late_completion():
    clock = FakeClock(0.0)
    s = Scheduler(max_batch_size=2, max_wait_ms=10.0, clock=clock)
    s.submit(5, slo_ms=100.0)
    s.submit(5, slo_ms=300.0)
    batch = s.get_batch()
    clock.t = 0.100  # exactly at the first deadline: not a miss
    s.complete_batch([batch[0]])
    assert s.stats()["slo_misses"] == 0
    s2 = Scheduler(max_batch_size=1, clock=clock)
    rid = s2.submit(5, slo_ms=10.0)
    s2.get_batch()
    clock.t += 0.011
    s2.complete_batch([rid])
    assert s2.stats()["slo_misses"] == 1


def test_custom_priority_and_update_priority():
    clock = FakeClock()
    s = Scheduler(max_batch_size=3, priority_fn=lambda r: r.tokens, clock=clock)  # longest first
    for t in (5, 9, 7):
        s.submit(t)
    s.update_priority(0, 100)
    assert s.get_request(0).tokens == 100
    assert s.get_batch() == [0, 1, 2]


def test_priority_fn_sees_request_fields():
    seen = []

    def fn(req):
        seen.append((req.request_id, req.tokens, req.slo_ms, req.arrival, req.deadline))
        return 0.0

    s = Scheduler(priority_fn=fn, clock=FakeClock(2.0))
    s.submit(4, slo_ms=500.0)
    assert seen == [(0, 4, 500.0, 2.0, 2.5)]


def test_bad_priority_fn_result_queues_nothing():
    s = Scheduler(priority_fn=lambda r: math.nan if r.tokens == 13 else 1.0, clock=FakeClock())
    with pytest.raises(ValidationError):
        s.submit(13)
    assert s.stats()["queue_size"] == 0
    assert s.submit(1) == 0  # the failed submit did not consume an id
    with pytest.raises(ValidationError):
        s.update_priority(0, 13)
    assert s.get_request(0).tokens == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_batch_size": -1},
        {"max_batch_size": True},
        {"max_batch_size": 2.0},
        {"max_wait_ms": -1.0},
        {"max_wait_ms": math.nan},
        {"max_wait_ms": math.inf},
        {"max_wait_ms": "5"},
        {"priority_fn": 3},
        {"clock": 1.0},
    ],
)
def test_bad_constructor_args(kwargs):
    with pytest.raises(ValidationError):
        Scheduler(**kwargs)


@pytest.mark.parametrize(
    "tokens,slo",
    [
        (-1, None),
        (True, None),
        (1.5, None),
        ("3", None),
        (3, 0.0),
        (3, -5.0),
        (3, math.nan),
        (3, math.inf),
        (3, True),
    ],
)
def test_bad_submit_args(tokens, slo):
    s = Scheduler(clock=FakeClock())
    with pytest.raises(ValidationError):
        s.submit(tokens, slo_ms=slo)
    assert s.stats()["queue_size"] == 0


def test_complete_batch_errors_change_nothing():
    s = Scheduler(max_batch_size=2, clock=FakeClock())
    s.submit(1)
    s.submit(2)
    s.submit(3)
    assert s.get_batch() == [0, 1]
    with pytest.raises(NotFoundError):
        s.complete_batch([0, 99])
    with pytest.raises(StateError):
        s.complete_batch([0, 2])  # 2 is still pending
    with pytest.raises(ValidationError):
        s.complete_batch([0, 0])
    with pytest.raises(ValidationError):
        s.complete_batch([True])
    with pytest.raises(ValidationError):
        s.complete_batch(5)
    assert s.stats()["in_flight"] == 2 and s.stats()["total_processed"] == 0
    s.complete_batch([0])
    with pytest.raises(NotFoundError):
        s.complete_batch([0])  # already completed


def test_update_priority_bad_args():
    s = Scheduler(clock=FakeClock())
    s.submit(1)
    for rid, tokens in ((0, -1), (0, True), (0, 2.0), ("0", 1), (None, 1)):
        with pytest.raises(ValidationError):
            s.update_priority(rid, tokens)
    with pytest.raises(NotFoundError):
        s.update_priority(5, 1)
    with pytest.raises(NotFoundError):
        s.get_request(5)
