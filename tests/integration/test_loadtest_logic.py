"""The harness's own logic, deterministically: schedules, coordinated-omission correction,
hard bounds, statistics and the find-max search (no servers; see test_loadtest.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from loadtest import findmax, schedule
from loadtest.clock import ManualClock
from loadtest.runner import Budget, Run
from loadtest.stats import LatencyHistogram, PhaseSpec, Recorder, summarize
from loadtest.targets import TargetError, check_target
from loadtest.workload import LabelledRequest, WorkloadError, parse_mix

POOL = [LabelledRequest("a", "request-a"), LabelledRequest("b", "request-b")]


class SimulatedService:
    """A Sender over the ManualClock: each request takes ``service_s`` of simulated time.

    ``blocking=True`` models a client whose send waits for the answer (the dispatcher is
    stalled for the service time: the coordinated-omission situation); otherwise answers
    are delivered later by ``deliver_until``.
    """

    def __init__(self, clock: ManualClock, service_s: float, blocking: bool) -> None:
        self.clock = clock
        self.service_s = service_s
        self.blocking = blocking
        self.sent_at: list[float] = []
        self.pending: list[tuple[float, Callable[[str], None]]] = []

    def call(self, message: Any, timeout: float) -> str:
        self.sent_at.append(self.clock.now())
        self.clock.advance(self.service_s)
        return "OK"

    def submit(self, message: Any, timeout: float, done: Callable[[str], None]) -> None:
        self.sent_at.append(self.clock.now())
        if self.blocking:
            self.clock.advance(self.service_s)
            done("OK")
        else:
            self.pending.append((self.clock.now() + self.service_s, done))
            self.deliver_until(self.clock.now())

    def deliver_until(self, t: float) -> None:
        due = [p for p in self.pending if p[0] <= t]
        self.pending = [p for p in self.pending if p[0] > t]
        for _, done in due:
            done("OK")


def make_run(
    clock: ManualClock, sender: Any, max_requests: int = 10_000, max_seconds: float = 100.0
) -> Run:
    return Run(sender, POOL, clock, Budget(clock, max_requests, max_seconds), timeout_s=1.0)


# -- schedules ---------------------------------------------------------------------------


def test_constant_schedule_intends_i_over_rate() -> None:
    plan = schedule.constant(200, 2.0)
    times = [s.at for s in plan.sends()]
    assert len(times) == plan.planned() == 400
    assert times == pytest.approx([i / 200 for i in range(400)])


def test_step_schedule_rates_and_boundaries() -> None:
    plan = schedule.parse("step:10,20,40", duration=0, step_seconds=2)
    assert plan.duration == 6
    sends = list(plan.sends())
    per_segment = [sum(1 for s in sends if s.segment == n) for n in range(3)]
    assert per_segment == [20, 40, 80] == plan.planned_per_segment()
    assert [s.at for s in sends if s.segment == 1][:3] == pytest.approx([2.0, 2.05, 2.1])
    assert all(plan.segment_at(s.at) == s.segment for s in sends)


def test_ramp_schedule_follows_the_integral_of_the_rate() -> None:
    plan = schedule.parse("ramp:0-100", duration=10, step_seconds=2.5)
    assert [seg.offered_rps for seg in plan.segments] == [12.5, 37.5, 62.5, 87.5]
    times = [s.at for s in plan.sends()]
    assert times == sorted(times)
    # N(t) = 10 t^2 / 2 for a 0 -> 100/s ramp over 10 s: the k-th send is at sqrt(k / 5).
    assert len(times) == 500
    assert times[:50] == pytest.approx([math.sqrt(k / 5) for k in range(50)])
    assert times[-1] < 10


@pytest.mark.parametrize(
    "spec",
    ["step:", "step:10,-1", "ramp:10", "ramp:0-0", "constant:abc", "wave:1", "constant:1e9"],
)
def test_bad_schedules_are_refused(spec: str) -> None:
    with pytest.raises(schedule.ScheduleError):
        schedule.parse(spec, duration=5, step_seconds=1)


def test_schedule_duration_is_bounded() -> None:
    with pytest.raises(schedule.ScheduleError):
        schedule.constant(10, schedule.MAX_DURATION_S + 1)


# -- open loop: coordinated-omission correction ------------------------------------------


def test_open_loop_sends_on_intended_times_when_the_service_keeps_up() -> None:
    clock = ManualClock(100.0)
    service = SimulatedService(clock, service_s=0.0, blocking=False)
    run = make_run(clock, service)
    run.open(schedule.constant(50, 1.0), max_inflight=8)
    rows = run.recorder.arrays()
    assert len(rows.sent_at) == 50
    assert service.sent_at == pytest.approx([run.origin + i / 50 for i in range(50)])
    assert rows.latency == pytest.approx([0.0] * 50)
    assert rows.lag == pytest.approx([0.0] * 50)


def test_open_loop_latency_counts_from_intended_time_when_sends_are_stalled() -> None:
    # 100/s intended (every 10 ms) but each send stalls the dispatcher for 50 ms.
    clock = ManualClock()
    service = SimulatedService(clock, service_s=0.050, blocking=True)
    run = make_run(clock, service)
    run.open(schedule.constant(100, 0.2), max_inflight=8)
    rows = run.recorder.arrays()
    n = len(rows.sent_at)
    assert n == 20
    assert list(rows.sent_at) == pytest.approx([i * 0.010 for i in range(n)])
    # request i actually leaves at 50i ms and completes at 50(i+1) ms
    assert list(rows.latency) == pytest.approx([0.050 + 0.040 * i for i in range(n)])
    assert list(rows.lag) == pytest.approx([0.040 * i for i in range(n)])
    naive = [
        d - s for d, s in zip(rows.done_at, [t - run.origin for t in service.sent_at], strict=True)
    ]
    assert naive == pytest.approx([0.050] * n)  # what an uncorrected harness would report
    (summary,) = run.summaries()
    assert summary["latency_ms"]["max"] == pytest.approx(50 + 40 * 19, rel=1e-3)
    assert summary["send_lag_ms"]["max"] == pytest.approx(40 * 19, rel=1e-3)


def test_open_loop_phases_follow_schedule_segments() -> None:
    clock = ManualClock()
    service = SimulatedService(clock, service_s=0.001, blocking=False)
    run = make_run(clock, service)
    specs = run.open(schedule.step([10, 20], 1.0), max_inflight=4)
    service.deliver_until(math.inf)
    summaries = run.summaries(specs)
    assert [s["offered_rps"] for s in summaries] == [10, 20]
    assert [s["sent"] for s in summaries] == [10, 20]
    assert all(s["errors"] == {} and s["ok"] == s["sent"] for s in summaries)


def test_request_cap_stops_an_open_loop_run() -> None:
    clock = ManualClock()
    run = make_run(clock, SimulatedService(clock, 0.0, False), max_requests=7)
    run.open(schedule.constant(100, 1.0), max_inflight=4)
    assert len(run.recorder) == 7
    assert run.budget.exhausted == "max_requests"


def test_time_cap_stops_an_open_loop_run() -> None:
    clock = ManualClock()
    run = make_run(clock, SimulatedService(clock, 0.0, False), max_seconds=0.5)
    run.open(schedule.constant(10, 2.0), max_inflight=4)
    assert len(run.recorder) == 5  # intended at 0.0 .. 0.4
    assert run.budget.exhausted == "max_seconds"


def test_closed_loop_measures_from_actual_send() -> None:
    clock = ManualClock()
    service = SimulatedService(clock, service_s=0.010, blocking=True)
    run = make_run(clock, service)
    spec = run.closed(concurrency=1, duration=0.5)
    rows = run.recorder.arrays()
    assert len(rows.sent_at) == 50
    assert rows.latency == pytest.approx([0.010] * 50)
    (summary,) = run.summaries([spec])
    assert summary["achieved_rps"] == pytest.approx(100.0)
    assert summary["by_kind"]["a"]["count"] == summary["by_kind"]["b"]["count"] == 25


def test_client_side_failures_are_counted_not_raised() -> None:
    class Broken:
        def call(self, message: Any, timeout: float) -> str:
            raise RuntimeError("boom")

        def submit(self, message: Any, timeout: float, done: Callable[[str], None]) -> None:
            raise RuntimeError("boom")

    clock = ManualClock()
    run = make_run(clock, Broken())
    run.open(schedule.constant(10, 0.5), max_inflight=2)
    (summary,) = run.summaries()
    assert summary["errors"] == {"CLIENT_ERROR(RuntimeError)": 5}
    assert summary["latency_ms"] == {"count": 0}


# -- statistics --------------------------------------------------------------------------


def test_histogram_percentiles_are_monotone_and_close() -> None:
    hist = LatencyHistogram()
    for ms in range(1, 1001):
        hist.record(ms / 1000)
    s = hist.summary()
    keys = ["min", "p50", "p90", "p99", "p99.9", "max"]
    assert [s[k] for k in keys] == sorted(s[k] for k in keys)
    assert s["p50"] == pytest.approx(500, rel=0.01)
    assert s["p99"] == pytest.approx(990, rel=0.01)
    assert s["count"] == 1000
    assert hist.encode()


def test_summary_counts_errors_by_code_and_keeps_them_out_of_latency() -> None:
    rec = Recorder(["a"])
    for i in range(10):
        rec.add(i * 0.1, i * 0.1 + 0.005, "a", "OK", 0.0)
    rec.add(0.95, 1.95, "a", "DEADLINE_EXCEEDED", 0.0)
    rec.add(0.96, 0.97, "a", "UNAVAILABLE", 0.0)
    spec = PhaseSpec("p", "open", 0.0, 1.0, offered_rps=12, throughput_end=1.95)
    s = summarize(rec.arrays(), spec, window=0.5)
    assert s["errors"] == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 1}
    assert s["error_rate"] == pytest.approx(2 / 12)
    assert s["latency_ms"]["max"] == pytest.approx(5.0, rel=1e-2)
    assert s["achieved_rps"] == pytest.approx(10 / 1.95)
    assert [w["sent"] for w in s["timeline"]] == [5, 7]


# -- find-max ----------------------------------------------------------------------------


def queueing_model(
    capacity: float, base_ms: float, error_rate: float = 0.0, client_limit: float = math.inf
) -> Callable[[float], findmax.ProbeResult]:
    """p99 grows like base / (1 - utilisation); overload answers no faster than capacity."""

    def probe(rate: float) -> findmax.ProbeResult:
        achieved = min(rate, capacity, client_limit)
        p99 = base_ms / (1 - rate / capacity) if rate < capacity else 60_000.0
        return findmax.ProbeResult(rate, achieved, p99, error_rate)

    return probe


def test_find_max_converges_below_the_objective_knee() -> None:
    # p99 = 4 / (1 - r/1000) <= 50 ms  <=>  r <= 920
    found = findmax.find_max(queueing_model(1000, 4.0), findmax.Objective(50.0))
    assert found.stopped_by == "converged"
    assert found.max_rate is not None
    assert 920 * (1 - 0.05) <= found.max_rate <= 920
    rates = [p.rate for p in found.probes]
    assert rates[:6] == [50, 100, 200, 400, 800, 1600]  # exponential, then bisection
    assert all(p.sustainable == (p.rate <= 920) for p in found.probes)
    assert found.lowest_failing is not None and found.lowest_failing > found.max_rate


def test_find_max_respects_throughput_ratio() -> None:
    # latency is fine everywhere, but the client only manages 300/s
    found = findmax.find_max(queueing_model(1e9, 1.0, client_limit=300), findmax.Objective(50.0))
    assert found.max_rate is not None
    assert 300 * 0.95 * 0.95 <= found.max_rate <= 300 / 0.95
    failing = [p for p in found.probes if not p.sustainable]
    assert failing and all("of offered" in p.reason for p in failing)


def test_find_max_reports_none_when_errors_exceed_threshold() -> None:
    found = findmax.find_max(
        queueing_model(1000, 1.0, error_rate=0.01),
        findmax.Objective(50.0),
        findmax.SearchParams(start_rate=50, max_probes=8),
    )
    assert found.max_rate is None
    assert all(not p.sustainable and "error rate" in p.reason for p in found.probes)
    assert [p.rate for p in found.probes][:3] == [50, 25, 12.5]  # searches downwards
    assert found.stopped_by in ("max_probes", "min_rate")


def test_find_max_stops_at_max_rate_and_probe_budget() -> None:
    capped = findmax.find_max(
        queueing_model(1e9, 1.0),
        findmax.Objective(50.0),
        findmax.SearchParams(start_rate=100, max_rate=700),
    )
    assert capped.max_rate == 700 and capped.stopped_by == "max_rate"
    assert [p.rate for p in capped.probes] == [100, 200, 400, 700]
    limited = findmax.find_max(
        queueing_model(1000, 5.0),
        findmax.Objective(50.0),
        findmax.SearchParams(max_probes=3),
    )
    assert len(limited.probes) == 3 and limited.stopped_by == "max_probes"


def test_find_max_stops_when_the_budget_runs_out() -> None:
    calls = []

    def probe(rate: float) -> findmax.ProbeResult:
        calls.append(rate)
        if len(calls) > 2:
            raise findmax.SearchAborted
        return findmax.ProbeResult(rate, rate, 1.0, 0.0)

    found = findmax.find_max(probe, findmax.Objective(50.0))
    assert found.stopped_by == "budget" and found.max_rate == 100


# -- arguments ---------------------------------------------------------------------------


def test_only_loopback_or_allowed_hosts_are_loaded() -> None:
    check_target("127.0.0.1:50051", allow_remote=False)
    check_target("[::1]:50051", allow_remote=False)
    check_target("localhost:50051", allow_remote=False)
    with pytest.raises(TargetError, match="allow-host 10.1.2.3"):
        check_target("10.1.2.3:50051", allow_remote=False)
    check_target("10.1.2.3:50051", allow_remote=False, allowed_hosts=["10.1.2.3"])
    check_target("10.1.2.3:50051", allow_remote=True)
    with pytest.raises(TargetError):
        check_target("127.0.0.1", allow_remote=False)


def test_mix_parsing() -> None:
    assert parse_mix("recall", "") == {"history": 0.5, "text": 0.3, "vector": 0.2}
    assert parse_mix("recommend", "user=3,text=1,history=0") == {"user": 3.0, "text": 1.0}
    for bad in ("nope=1", "text=x", "text=0", "text=-1"):
        with pytest.raises(WorkloadError):
            parse_mix("recall", bad)
