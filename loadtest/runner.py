"""Closed-loop and open-loop runners over a ``Sender`` (no gRPC here; see ``targets``).

- **Closed loop** (``Run.closed``): ``concurrency`` threads each send a request, wait for
  its answer and send the next, for a fixed duration. Latency = done - actual send. The
  offered load adapts to the server, so this measures capacity at a concurrency, not the
  latency a user sees at a given arrival rate.
- **Open loop** (``Run.open``): one dispatcher sends on the schedule's intended times and
  never waits for answers (``Sender.submit`` is asynchronous); at most ``max_inflight``
  requests are outstanding. When the dispatcher is late (the in-flight bound is reached,
  or it was descheduled), the request goes out late but its latency is still measured
  from the *intended* time, so a stall shows up in the latency of every request it
  delayed (coordinated-omission correction). ``send_lag`` records how late each went out.

Every run is bounded by a ``Budget``: a request count and an absolute deadline.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from loadtest.clock import Clock
from loadtest.schedule import Schedule
from loadtest.stats import OK, PhaseSpec, Recorder, Rows, summarize, timeline_window
from loadtest.workload import LabelledRequest

Done = Callable[[str], None]
Progress = Callable[[float], None]
PROGRESS_EVERY_S = 0.25


class Sender(Protocol):
    """Sends one request; an outcome is ``OK`` or an error label (e.g. a status name)."""

    def call(self, message: Any, timeout: float) -> str:
        """Send and wait for the answer; return its outcome."""
        ...

    def submit(self, message: Any, timeout: float, done: Done) -> None:
        """Send without waiting; ``done(outcome)`` is called once, from any thread."""
        ...


class Budget:
    """Hard limits shared by every phase of a run: request count and wall time."""

    def __init__(self, clock: Clock, max_requests: int, max_seconds: float) -> None:
        if max_requests <= 0 or max_seconds <= 0:
            raise ValueError("max requests and max seconds must be positive")
        self.clock = clock
        self.deadline = clock.now() + max_seconds
        self._left = max_requests
        self._lock = threading.Lock()
        self.exhausted: str | None = None

    def take(self) -> bool:
        """Reserve one request; False once the count or the time is used up."""
        if self.clock.now() >= self.deadline:
            self.exhausted = self.exhausted or "max_seconds"
            return False
        with self._lock:
            if self._left <= 0:
                self.exhausted = self.exhausted or "max_requests"
                return False
            self._left -= 1
            return True

    def time_left(self) -> float:
        return self.deadline - self.clock.now()


@dataclass
class _InFlight:
    count: int = 0
    cond: threading.Condition = dataclasses.field(default_factory=threading.Condition)


class Run:
    """One load-test run: a recorder, a budget, and the phases executed so far."""

    def __init__(
        self,
        sender: Sender,
        pool: Sequence[LabelledRequest],
        clock: Clock,
        budget: Budget,
        *,
        timeout_s: float,
        progress: Progress | None = None,
    ) -> None:
        if not pool:
            raise ValueError("empty request pool")
        self.sender = sender
        self.pool = pool
        self.clock = clock
        self.budget = budget
        self.timeout_s = timeout_s
        self.progress = progress
        self.recorder = Recorder(dict.fromkeys(r.kind for r in pool))
        self.origin = clock.now()
        self.phases: list[PhaseSpec] = []
        self._next = itertools.count()
        self._last_progress = -1.0

    def elapsed(self) -> float:
        return self.clock.now() - self.origin

    def _tick(self) -> None:
        if self.progress is not None:
            now = self.elapsed()
            if now - self._last_progress >= PROGRESS_EVERY_S:
                self._last_progress = now
                self.progress(now)

    def _draw(self) -> LabelledRequest:
        return self.pool[next(self._next) % len(self.pool)]

    def _call(self, message: Any) -> str:
        try:
            return self.sender.call(message, self.timeout_s)
        except Exception as exc:  # a client-side failure must not kill the worker
            return f"CLIENT_ERROR({type(exc).__name__})"

    # -- warm-up -------------------------------------------------------------------------

    def warmup(self, requests: int) -> dict[str, int]:
        """Send ``requests`` sequential requests, unrecorded; outcome counts.

        Run before any phase: report times then count from the end of the warm-up.
        """
        outcomes: dict[str, int] = {}
        for _ in range(requests):
            if self.budget.time_left() <= 0:
                break
            outcome = self._call(self._draw().message)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if not len(self.recorder):
            self.origin = self.clock.now()
        return outcomes

    # -- closed loop ---------------------------------------------------------------------

    def closed(self, concurrency: int, duration: float) -> PhaseSpec:
        """``concurrency`` workers back to back for ``duration`` seconds."""
        if concurrency <= 0 or duration <= 0:
            raise ValueError("concurrency and duration must be positive")
        start = self.clock.now()
        end = min(start + duration, self.budget.deadline)

        def worker() -> None:
            while self.clock.now() < end and self.budget.take():
                item = self._draw()
                sent = self.clock.now()
                outcome = self._call(item.message)
                done = self.clock.now()
                self.recorder.add(sent - self.origin, done - self.origin, item.kind, outcome, 0.0)

        threads = [
            threading.Thread(target=worker, name=f"closed-{i}", daemon=True)
            for i in range(concurrency)
        ]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(PROGRESS_EVERY_S)
                self._tick()
        rows = self._rows_between(start, end)
        last = float(rows.done_at.max()) + self.origin if len(rows.done_at) else end
        spec = PhaseSpec(
            label=f"concurrency {concurrency}",
            mode="closed",
            start=start - self.origin,
            end=end - self.origin,
            concurrency=concurrency,
            throughput_end=last - self.origin,
        )
        self.phases.append(spec)
        return spec

    # -- open loop -----------------------------------------------------------------------

    def open(self, schedule: Schedule, max_inflight: int, label: str = "") -> list[PhaseSpec]:
        """Send on ``schedule``'s intended times; one phase per schedule segment."""
        if max_inflight <= 0:
            raise ValueError("max in-flight must be positive")
        t0 = self.clock.now()
        slots = threading.BoundedSemaphore(max_inflight)
        inflight = _InFlight()

        def complete(intended: float, actual: float, kind: str, outcome: str) -> None:
            finished = self.clock.now()
            self.recorder.add(
                intended - self.origin, finished - self.origin, kind, outcome, actual - intended
            )
            slots.release()
            with inflight.cond:
                inflight.count -= 1
                inflight.cond.notify_all()

        for send in schedule.sends():
            intended = t0 + send.at
            if intended >= self.budget.deadline or not self.budget.take():
                self.budget.exhausted = self.budget.exhausted or "max_seconds"
                break
            self.clock.sleep_until(intended)
            if not self._acquire(slots):
                break
            item = self._draw()
            actual = self.clock.now()
            with inflight.cond:
                inflight.count += 1
            done = functools.partial(complete, intended, actual, item.kind)
            try:
                self.sender.submit(item.message, self.timeout_s, done)
            except Exception as exc:
                done(f"CLIENT_ERROR({type(exc).__name__})")
            self._tick()
        with inflight.cond:
            inflight.cond.wait_for(
                lambda: inflight.count == 0, timeout=max(0.0, self.timeout_s + 1.0)
            )
            abandoned = inflight.count
        rows = self._rows_between(t0, t0 + schedule.duration)
        last = float(rows.done_at.max()) + self.origin if len(rows.done_at) else t0
        specs = []
        planned = schedule.planned_per_segment()
        prefix = f"{label} " if label else ""
        for n, seg in enumerate(schedule.segments):
            is_last = n == len(schedule.segments) - 1
            seg_end = t0 + seg.end
            specs.append(
                PhaseSpec(
                    label=prefix + seg.label,
                    mode="open",
                    start=t0 + seg.start - self.origin,
                    end=seg_end - self.origin,
                    offered_rps=seg.offered_rps,
                    offered_range=(seg.rate_from, seg.rate_to),
                    planned=planned[n],
                    throughput_end=(max(last, seg_end) if is_last else seg_end) - self.origin,
                    abandoned=abandoned if is_last else 0,
                )
            )
        self.phases.extend(specs)
        return specs

    def _acquire(self, slots: threading.BoundedSemaphore) -> bool:
        """Wait for an in-flight slot (real time), giving up at the run's deadline."""
        while not slots.acquire(timeout=0.05):
            self._tick()
            if self.budget.time_left() <= 0:
                self.budget.exhausted = self.budget.exhausted or "max_seconds"
                return False
        return True

    # -- results -------------------------------------------------------------------------

    def _rows_between(self, start: float, end: float) -> Rows:
        rows = self.recorder.arrays()
        lo, hi = start - self.origin, end - self.origin
        return rows.select((rows.sent_at >= lo) & (rows.sent_at < hi))

    def summaries(self, phases: Sequence[PhaseSpec] | None = None) -> list[dict[str, Any]]:
        """Report entries of ``phases`` (default: all, in order)."""
        rows = self.recorder.arrays()
        out = []
        for spec in self.phases if phases is None else phases:
            mine = rows.select((rows.sent_at >= spec.start) & (rows.sent_at < spec.end))
            window = timeline_window(spec.end - spec.start)
            out.append(summarize(mine, spec, window=window, everything=rows))
        return out


def error_count(summary: dict[str, Any], expected: Sequence[str] = ()) -> int:
    """Errors in a phase summary other than the ``expected`` outcome labels."""
    return sum(n for code, n in summary["errors"].items() if code not in expected and code != OK)
