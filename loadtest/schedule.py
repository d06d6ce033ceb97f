"""Open-loop send plans: when each request is *intended* to be sent.

A schedule is a list of contiguous segments, each with a rate that is constant or changes
linearly (``rate_from`` to ``rate_to``). Send number g (g = 0, 1, ...) is intended at the
time the cumulative expected count reaches g. Inside a segment that already carries C
expected requests from earlier segments, with k = g - C:

    N(t) = a*t + s*t**2/2 = k,  a = rate_from, s = (rate_to - rate_from) / duration
    t_k  = 2k / (a + sqrt(a**2 + 2*s*k))        (k/a when the rate is constant)

Intended times depend only on the schedule, never on how fast the target answers: that is
what makes the load open-loop, and latency is measured from these times (coordinated
omission correction). Segments double as the report's phases (one per offered rate).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

MAX_RATE = 100_000.0
MAX_DURATION_S = 3600.0


class ScheduleError(ValueError):
    """A schedule specification that cannot be run."""


@dataclass(frozen=True)
class Segment:
    """A stretch of the run with a constant or linearly changing rate."""

    start: float
    duration: float
    rate_from: float
    rate_to: float

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def offered_rps(self) -> float:
        """Mean offered rate over the segment."""
        return (self.rate_from + self.rate_to) / 2

    @property
    def label(self) -> str:
        if self.rate_from == self.rate_to:
            return f"{self.rate_from:g} rps"
        return f"{self.rate_from:g}-{self.rate_to:g} rps"

    @property
    def expected(self) -> float:
        """Requests the rate integrates to over the segment (not rounded)."""
        return self.offered_rps * self.duration

    def offset(self, k: float) -> float:
        """Seconds into the segment at which the cumulative count reaches ``k`` (>= 0)."""
        a = self.rate_from
        s = (self.rate_to - self.rate_from) / self.duration
        disc = max(0.0, a * a + 2.0 * s * k)
        denom = a + math.sqrt(disc)
        if denom <= 0:
            return 0.0 if k <= 0 else math.inf
        return min(2.0 * k / denom, math.nextafter(self.duration, 0.0))


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


@dataclass(frozen=True)
class Send:
    """One intended send: its sequence number, time from run start and segment index."""

    index: int
    at: float
    segment: int


@dataclass(frozen=True)
class Schedule:
    """Contiguous segments from time 0 to ``duration``."""

    segments: tuple[Segment, ...]

    @property
    def duration(self) -> float:
        return self.segments[-1].end if self.segments else 0.0

    def planned_per_segment(self) -> list[int]:
        """Sends intended in each segment.

        Counts carry across segments: send number g (from 0) is intended when the
        cumulative expected count reaches g, so rounding never adds a send per segment.
        """
        out = []
        carried = 0.0
        for seg in self.segments:
            out.append(_ceil(carried + seg.expected) - _ceil(carried))
            carried += seg.expected
        return out

    def planned(self) -> int:
        return sum(self.planned_per_segment())

    def sends(self) -> Iterator[Send]:
        carried = 0.0
        for n, seg in enumerate(self.segments):
            for g in range(_ceil(carried), _ceil(carried + seg.expected)):
                yield Send(g, seg.start + seg.offset(g - carried), n)
            carried += seg.expected

    def segment_at(self, t: float) -> int:
        """Index of the segment holding time ``t`` (clamped to the first/last)."""
        for n, seg in enumerate(self.segments):
            if t < seg.end:
                return n
        return len(self.segments) - 1


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise ScheduleError(f"{text!r} is not a rate (requests per second)") from exc
    if not 0 <= value <= MAX_RATE or math.isnan(value):
        raise ScheduleError(f"rate {text} must be within 0..{MAX_RATE:g} requests/s")
    return value


def _check_duration(seconds: float, what: str) -> None:
    if not 0 < seconds <= MAX_DURATION_S:
        raise ScheduleError(f"{what} {seconds:g}s must be within (0, {MAX_DURATION_S:g}]")


def constant(rate: float, duration: float) -> Schedule:
    """One segment at ``rate`` requests/s for ``duration`` seconds."""
    _check_duration(duration, "duration")
    if not 0 < rate <= MAX_RATE:
        raise ScheduleError(f"rate {rate:g} must be within (0, {MAX_RATE:g}] requests/s")
    return Schedule((Segment(0.0, duration, rate, rate),))


def step(rates: list[float], step_seconds: float) -> Schedule:
    """Constant-rate steps of ``step_seconds`` each, in the given order."""
    _check_duration(step_seconds * max(1, len(rates)), "total duration")
    if not rates or any(r <= 0 for r in rates):
        raise ScheduleError("step needs one or more positive rates, e.g. step:50,100,200")
    return Schedule(
        tuple(Segment(i * step_seconds, step_seconds, r, r) for i, r in enumerate(rates))
    )


def ramp(rate_from: float, rate_to: float, duration: float, window: float) -> Schedule:
    """A linear ramp over ``duration``, cut into report windows of ``window`` seconds."""
    _check_duration(duration, "duration")
    if rate_from == rate_to == 0:
        raise ScheduleError("a ramp needs a positive rate at one end at least")
    if window <= 0:
        raise ScheduleError("the ramp window (--step-seconds) must be positive")
    slope = (rate_to - rate_from) / duration
    segments = []
    start = 0.0
    while start < duration - 1e-9:
        length = min(window, duration - start)
        r0 = rate_from + slope * start
        r1 = rate_from + slope * (start + length)
        segments.append(Segment(start, length, r0, r1))
        start += length
    return Schedule(tuple(segments))


def parse(spec: str, duration: float, step_seconds: float) -> Schedule:
    """``constant:R``, ``step:R1,R2,...`` (each ``step_seconds``) or ``ramp:A-B``."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "constant":
        return constant(_rate(arg), duration)
    if kind == "step":
        return step([_rate(x) for x in arg.split(",") if x.strip()], step_seconds)
    if kind == "ramp":
        a, sep, b = arg.partition("-")
        if not sep:
            raise ScheduleError("ramp needs two rates, e.g. ramp:50-400")
        return ramp(_rate(a), _rate(b), duration, step_seconds)
    raise ScheduleError(f"unknown schedule {spec!r}: use constant:R, step:R1,R2,... or ramp:A-B")
