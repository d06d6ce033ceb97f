"""Recording outcomes and summarising them: HDR histograms, throughput, errors, timelines.

Runners append one row per finished request to a thread-safe ``Recorder`` (gRPC completion
callbacks run on gRPC's threads). Summaries are computed afterwards per phase: an HDR
histogram (microsecond resolution, 3 significant digits, 1 us to 10 min) of the successful
requests' latency, error counts by status-code name, achieved throughput and a timeline.

Latency is ``done - sent_at``, where ``sent_at`` is the *intended* send time in open-loop
runs (so time spent waiting to be sent counts: coordinated-omission correction) and the
actual send time in closed-loop runs.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

OK = "OK"
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
LOWEST_US = 1
HIGHEST_US = 600_000_000
SIGNIFICANT_DIGITS = 3


def percentile_key(p: float) -> str:
    return f"p{p:g}"


class LatencyHistogram:
    """An HDR histogram of latencies in microseconds; summaries in milliseconds."""

    def __init__(self) -> None:
        self.hdr = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    def record(self, seconds: float) -> None:
        us = min(HIGHEST_US, max(LOWEST_US, round(seconds * 1e6)))
        self.hdr.record_value(us)

    @property
    def count(self) -> int:
        return int(self.hdr.get_total_count())

    def summary(self) -> dict[str, float | int]:
        """count, min, mean, p50, p90, p99, p99.9 and max (ms); empty: count 0 only."""
        if self.count == 0:
            return {"count": 0}
        out: dict[str, float | int] = {
            "count": self.count,
            "min": self.hdr.get_min_value() / 1e3,
            "mean": self.hdr.get_mean_value() / 1e3,
        }
        for p in PERCENTILES:
            out[percentile_key(p)] = self.hdr.get_value_at_percentile(p) / 1e3
        out["max"] = self.hdr.get_max_value() / 1e3
        return out

    def encode(self) -> str:
        """The standard compressed HdrHistogram encoding (base64), for other HDR tools."""
        encoded = self.hdr.encode()
        return encoded.decode("ascii") if isinstance(encoded, bytes) else str(encoded)


class Recorder:
    """Thread-safe rows of (sent_at, done_at, lag, kind, outcome), times from run start."""

    def __init__(self, kinds: Iterable[str]) -> None:
        self.kinds = list(kinds)
        self._kind_index = {k: i for i, k in enumerate(self.kinds)}
        self.outcomes: list[str] = [OK]
        self._outcome_index = {OK: 0}
        self._lock = threading.Lock()
        self.sent_at = array("d")
        self.done_at = array("d")
        self.lag = array("d")
        self.kind = array("H")
        self.outcome = array("H")
        self.ok = 0
        self.failed = 0

    def add(self, sent_at: float, done_at: float, kind: str, outcome: str, lag: float) -> None:
        with self._lock:
            code = self._outcome_index.get(outcome)
            if code is None:
                code = self._outcome_index[outcome] = len(self.outcomes)
                self.outcomes.append(outcome)
            self.sent_at.append(sent_at)
            self.done_at.append(done_at)
            self.lag.append(lag)
            self.kind.append(self._kind_index[kind])
            self.outcome.append(code)
            if code == 0:
                self.ok += 1
            else:
                self.failed += 1

    def __len__(self) -> int:
        return len(self.sent_at)

    def arrays(self) -> Rows:
        with self._lock:
            return Rows(
                np.frombuffer(self.sent_at, dtype=np.float64).copy(),
                np.frombuffer(self.done_at, dtype=np.float64).copy(),
                np.frombuffer(self.lag, dtype=np.float64).copy(),
                np.frombuffer(self.kind, dtype=np.uint16).copy(),
                np.frombuffer(self.outcome, dtype=np.uint16).copy(),
                list(self.kinds),
                list(self.outcomes),
            )


@dataclass(frozen=True)
class Rows:
    """A snapshot of a Recorder as numpy arrays."""

    sent_at: np.ndarray
    done_at: np.ndarray
    lag: np.ndarray
    kind: np.ndarray
    outcome: np.ndarray
    kinds: list[str]
    outcomes: list[str]

    def select(self, mask: np.ndarray) -> Rows:
        return Rows(
            self.sent_at[mask],
            self.done_at[mask],
            self.lag[mask],
            self.kind[mask],
            self.outcome[mask],
            self.kinds,
            self.outcomes,
        )

    @property
    def latency(self) -> np.ndarray:
        return self.done_at - self.sent_at

    @property
    def ok(self) -> np.ndarray:
        return self.outcome == 0


@dataclass(frozen=True)
class PhaseSpec:
    """What a phase was asked to do: an offered rate (open) or a concurrency (closed)."""

    label: str
    mode: str
    start: float
    end: float
    offered_rps: float | None = None
    offered_range: tuple[float, float] | None = None  # rate at start and end (ramps)
    concurrency: int | None = None
    planned: int | None = None
    throughput_end: float | None = None  # completions counted until here (default: end)
    abandoned: int = 0  # requests still unanswered when the run stopped waiting


def _ms_percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    qs = np.percentile(values * 1e3, [50, 99, 100])
    return {"p50": float(qs[0]), "p99": float(qs[1]), "max": float(qs[2])}


def timeline(
    rows: Rows, start: float, end: float, window: float, everything: Rows | None = None
) -> list[dict[str, Any]]:
    """Per-window counts and latency of ``rows`` (by send time), and the rate of successful
    completions (by done time) of ``everything`` (default ``rows``): a window's
    throughput includes answers to requests sent in an earlier phase."""
    done_rows = rows if everything is None else everything
    out: list[dict[str, Any]] = []
    n = max(1, math.ceil((end - start) / window - 1e-9))
    for i in range(n):
        lo, hi = start + i * window, min(end, start + (i + 1) * window)
        if i == n - 1:
            hi = max(hi, end)
        sent = (rows.sent_at >= lo) & (rows.sent_at < hi)
        done_ok = done_rows.ok & (done_rows.done_at >= lo) & (done_rows.done_at < hi)
        ok_sent = sent & rows.ok
        entry: dict[str, Any] = {
            "t": lo,
            "seconds": hi - lo,
            "sent": int(sent.sum()),
            "ok": int(ok_sent.sum()),
            "errors": int((sent & ~rows.ok).sum()),
            "completed_rps": float(done_ok.sum()) / (hi - lo) if hi > lo else 0.0,
        }
        entry.update({k + "_ms": v for k, v in _ms_percentiles(rows.latency[ok_sent]).items()})
        out.append(entry)
    return out


def summarize(
    rows: Rows, spec: PhaseSpec, *, window: float, everything: Rows | None = None
) -> dict[str, Any]:
    """The report entry of one phase; ``rows`` are the requests sent in it, ``everything``
    all of the run's (for the timeline's completion rate).

    Throughput counts successful completions of these requests until ``throughput_end``:
    the phase end or, for the last phase of a run, the last completion (the drain).
    """
    hist = LatencyHistogram()
    ok = rows.ok
    for v in rows.latency[ok]:
        hist.record(float(v))
    errors = Counter(rows.outcomes[int(c)] for c in rows.outcome[~ok])
    span = max(spec.end, spec.throughput_end or spec.end) - spec.start
    in_span = rows.done_at[ok] <= spec.start + span + 1e-9
    by_kind: dict[str, Any] = {}
    for i, kind in enumerate(rows.kinds):
        mine = rows.kind == i
        if mine.any():
            by_kind[kind] = {
                "count": int(mine.sum()),
                "errors": int((mine & ~ok).sum()),
                **{k + "_ms": v for k, v in _ms_percentiles(rows.latency[mine & ok]).items()},
            }
    sent = len(rows.sent_at)
    result: dict[str, Any] = {
        "label": spec.label,
        "mode": spec.mode,
        "offered_rps": spec.offered_rps,
        "offered_range_rps": list(spec.offered_range) if spec.offered_range else None,
        "concurrency": spec.concurrency,
        "start_s": spec.start,
        "duration_s": spec.end - spec.start,
        "planned": spec.planned,
        "sent": sent,
        "ok": int(ok.sum()),
        "errors": dict(sorted(errors.items())),
        "error_count": int(sum(errors.values())),
        "error_rate": float(sum(errors.values())) / sent if sent else 0.0,
        "achieved_rps": float(in_span.sum()) / span if span > 0 else 0.0,
        "abandoned": spec.abandoned,
        "latency_ms": hist.summary(),
        "hdr": hist.encode() if hist.count else "",
        "by_kind": by_kind,
        "timeline": timeline(rows, spec.start, spec.end, window, everything),
    }
    if spec.mode == "open" and sent:
        lag = np.percentile(rows.lag * 1e3, [99, 100])
        result["send_lag_ms"] = {"p99": float(lag[0]), "max": float(lag[1])}
    return result


def timeline_window(duration: float) -> float:
    """1 s windows, finer for short runs (at least ~10 windows, never under 100 ms)."""
    return max(0.1, min(1.0, duration / 10))
