"""Search for the highest sustainable open-loop rate under a latency objective.

A probe is a short fixed-duration open-loop run at one constant rate. It is
*sustainable* when all three hold:

- p99 latency (from the intended send time) <= the objective,
- achieved throughput >= ``min_throughput_ratio`` (default 95%) of the offered rate,
- the error rate <= ``max_error_rate``.

The search doubles the rate from ``start_rate`` until a probe fails (or ``max_rate`` is
reached and sustained), then bisects between the best sustainable and the lowest failing
rate until they are within ``tolerance`` (relative) of each other. If the first probe
already fails, it bisects between 0 and it. The answer is always a rate that was probed
and passed, never an interpolation. The probe function is injected, so the search itself
runs against any latency model (the tests use a deterministic synthetic one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Objective:
    """What "sustainable" means."""

    slo_p99_ms: float
    min_throughput_ratio: float = 0.95
    max_error_rate: float = 0.001


@dataclass(frozen=True)
class ProbeResult:
    """The measurements of one probe that the verdict needs."""

    offered_rps: float
    achieved_rps: float
    p99_ms: float | None  # None: no successful request
    error_rate: float


@dataclass(frozen=True)
class SearchParams:
    """How the search walks the rate axis."""

    start_rate: float = 50.0
    max_rate: float = 20_000.0
    growth: float = 2.0
    tolerance: float = 0.05
    max_probes: int = 12
    min_rate: float = 1.0


@dataclass(frozen=True)
class Probe:
    rate: float
    result: ProbeResult
    sustainable: bool
    reason: str


@dataclass
class SearchResult:
    """The best sustainable rate found (None if none), and every probe in order."""

    max_rate: float | None = None
    lowest_failing: float | None = None
    stopped_by: str = ""
    probes: list[Probe] = field(default_factory=list)


class SearchAborted(Exception):
    """Raised by a probe function when the run's budget is used up."""


def verdict(result: ProbeResult, objective: Objective) -> tuple[bool, str]:
    """(sustainable, why) for one probe."""
    if result.p99_ms is None:
        return False, "no successful requests"
    if result.error_rate > objective.max_error_rate:
        return False, f"error rate {result.error_rate:.2%} > {objective.max_error_rate:.2%}"
    if result.p99_ms > objective.slo_p99_ms:
        return False, f"p99 {result.p99_ms:.2f} ms > {objective.slo_p99_ms:g} ms"
    ratio = result.achieved_rps / result.offered_rps if result.offered_rps > 0 else 0.0
    if ratio < objective.min_throughput_ratio:
        return False, (
            f"achieved {result.achieved_rps:.1f}/s = {ratio:.1%} of offered "
            f"< {objective.min_throughput_ratio:.0%}"
        )
    return True, f"p99 {result.p99_ms:.2f} ms, achieved {ratio:.1%} of offered"


def find_max(
    probe: Callable[[float], ProbeResult],
    objective: Objective,
    params: SearchParams = SearchParams(),
) -> SearchResult:
    """Exponential growth, then bisection; every probe is recorded in the result."""
    if not 0 < params.start_rate <= params.max_rate:
        raise ValueError("need 0 < start rate <= max rate")
    if params.growth <= 1 or params.tolerance <= 0 or params.max_probes <= 0:
        raise ValueError("need growth > 1, tolerance > 0 and at least one probe")
    out = SearchResult()

    def run(rate: float) -> bool:
        result = probe(rate)
        ok, why = verdict(result, objective)
        out.probes.append(Probe(rate, result, ok, why))
        if ok:
            out.max_rate = max(out.max_rate or 0.0, rate)
        else:
            out.lowest_failing = min(out.lowest_failing or rate, rate)
        return ok

    try:
        rate = params.start_rate
        while True:
            if len(out.probes) >= params.max_probes:
                out.stopped_by = "max_probes"
                return out
            if not run(rate):
                break
            if rate >= params.max_rate:
                out.stopped_by = "max_rate"
                return out
            rate = min(rate * params.growth, params.max_rate)
        while True:
            lo = out.max_rate or 0.0
            hi = out.lowest_failing
            assert hi is not None
            if hi - lo <= params.tolerance * max(lo, params.min_rate):
                out.stopped_by = "converged"
                return out
            mid = round((lo + hi) / 2, 3)
            if mid < params.min_rate:
                out.stopped_by = "min_rate"
                return out
            if len(out.probes) >= params.max_probes:
                out.stopped_by = "max_probes"
                return out
            run(mid)
    except SearchAborted:
        out.stopped_by = "budget"
        return out
