"""The JSON report and the console table.

Report layout (``"format": 1``)::

    meta      tool, time, machine, command line, service, target, bundle, mix, options,
              warm-up outcomes, why the run stopped early (``stopped_by``, null if it did not)
    phases    one entry per concurrency level (closed) or schedule segment / probe (open):
              label, mode, offered_rps and offered_range_rps | concurrency, start_s,
              duration_s, planned, sent, ok, errors {status: count}, error_count,
              error_rate, achieved_rps, abandoned, latency_ms {count, min, mean, p50, p90,
              p99, p99.9, max}, hdr (base64 HDR histogram of successful latencies, in
              microseconds), by_kind, timeline, send_lag_ms (open loop: how late requests
              left vs their intended time), sustainable (find-max probes)
    find_max  (find-max only) objective, search parameters, max_sustainable_rps, probes
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.stats import PERCENTILES, percentile_key

FORMAT = 1


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def build(meta: dict[str, Any], phases: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The whole report; ``extra`` adds top-level sections (e.g. ``find_max``)."""
    head = {
        "format": FORMAT,
        "tool": "recstack loadtest",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "argv": sys.argv[1:],
    }
    return {"meta": {**head, **meta}, "phases": phases, **extra}


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _ms(value: Any) -> str:
    return f"{value:9.2f}" if isinstance(value, int | float) else f"{'-':>9}"


def table(phases: list[dict[str, Any]]) -> str:
    """One line per phase: load, counts, throughput and latency percentiles (ms)."""
    cols = [percentile_key(p) for p in PERCENTILES] + ["max"]
    head = f"{'phase':24} {'sent':>7} {'ok':>7} {'errors':>6} {'achieved/s':>10} " + " ".join(
        f"{c:>9}" for c in cols
    )
    lines = [head, "-" * len(head)]
    for ph in phases:
        lat = ph["latency_ms"]
        lines.append(
            f"{ph['label'][:24]:24} {ph['sent']:7d} {ph['ok']:7d} {ph['error_count']:6d} "
            f"{ph['achieved_rps']:10.1f} " + " ".join(_ms(lat.get(c)) for c in cols)
        )
        if ph["errors"]:
            lines.append(f"{'':24}   errors: {ph['errors']}")
    return "\n".join(lines)
