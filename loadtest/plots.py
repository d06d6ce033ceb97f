"""PNG plots of a report (matplotlib, Agg backend: no display needed).

- ``percentiles``: latency p50/p90/p99/p99.9/max per phase against the offered rate (open
  loop, find-max probes), or against concurrency with the achieved throughput on a second
  axis (closed loop). The latency objective is drawn when there is one.
- ``timeline``: per-window latency (p50/p99/max, by intended send time) over the run, and
  below it completed requests/s against the offered rate; dotted lines mark phases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtest.stats import PERCENTILES, percentile_key

SERIES = [percentile_key(p) for p in PERCENTILES] + ["max"]


def percentiles(
    phases: list[dict[str, Any]], path: Path, title: str, slo_ms: float | None = None
) -> None:
    measured = [p for p in phases if p["latency_ms"].get("count")]
    open_loop = any(p["offered_rps"] for p in measured)
    key = "offered_rps" if open_loop else "concurrency"
    measured.sort(key=lambda p: p[key] or 0.0)
    xs = [p[key] or 0.0 for p in measured]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in SERIES:
        ax.plot(
            xs,
            [p["latency_ms"][name] for p in measured],
            marker="o",
            linestyle=":" if name == "max" else "-",
            label=name,
        )
    failing = [
        (x, p["latency_ms"]["p99"])
        for x, p in zip(xs, measured, strict=True)
        if p.get("sustainable") is False
    ]
    if failing:
        ax.scatter(
            [x for x, _ in failing],
            [y for _, y in failing],
            marker="x",
            s=90,
            color="red",
            zorder=5,
            label="probe not sustainable",
        )
    if slo_ms is not None:
        ax.axhline(slo_ms, color="red", linestyle="--", label=f"p99 objective {slo_ms:g} ms")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if open_loop:
        ax.set_xlabel("offered rate (requests/s)")
        ax.legend()
    else:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(int(x)) for x in xs])
        ax.set_xlabel("concurrency (closed loop)")
        tput = ax.twinx()
        tput.plot(xs, [p["achieved_rps"] for p in measured], "k--s", label="throughput")
        tput.set_ylabel("achieved throughput (requests/s)")
        tput.set_ylim(bottom=0)
        lines, labels = ax.get_legend_handles_labels()
        more, more_labels = tput.get_legend_handles_labels()
        ax.legend(lines + more, labels + more_labels, loc="lower right", framealpha=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timeline(phases: list[dict[str, Any]], path: Path, title: str) -> None:
    fig, (lat_ax, rate_ax) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    series: dict[str, tuple[list[float], list[float]]] = {
        k: ([], []) for k in ("p50_ms", "p99_ms", "max_ms")
    }
    done_t: list[float] = []
    done_rps: list[float] = []
    offered_t: list[float] = []
    offered: list[float] = []
    for ph in phases:
        for w in ph["timeline"]:
            mid = w["t"] + w["seconds"] / 2
            for k, (ts, vs) in series.items():
                if k in w:
                    ts.append(mid)
                    vs.append(w[k])
            done_t.append(mid)
            done_rps.append(w["completed_rps"])
        if ph["offered_rps"]:
            first, last = ph.get("offered_range_rps") or (ph["offered_rps"], ph["offered_rps"])
            offered_t += [ph["start_s"], ph["start_s"] + ph["duration_s"], float("nan")]
            offered += [first, last, float("nan")]
        for ax in (lat_ax, rate_ax):
            ax.axvline(ph["start_s"], color="grey", linestyle=":", linewidth=0.8)
    for k, (ts, vs) in series.items():
        lat_ax.plot(ts, vs, marker=".", label=k.removesuffix("_ms"))
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_title(title)
    lat_ax.grid(True, which="both", alpha=0.3)
    lat_ax.legend(loc="upper left")
    rate_ax.plot(done_t, done_rps, marker=".", label="completed OK/s")
    if offered:
        rate_ax.plot(offered_t, offered, linestyle="--", label="offered/s")
    rate_ax.set_xlabel("time since start of run (s)")
    rate_ax.set_ylabel("requests/s")
    rate_ax.grid(True, alpha=0.3)
    rate_ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
