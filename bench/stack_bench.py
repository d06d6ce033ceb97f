"""Recommend as a caller sees it, configuration A vs B, alternated (A B A B ...).

Each side is either a stack of the three real servers (``recstack.tools.procs.Stack``: recall,
rank and gateway processes on loopback, started with the variant's extra flags) or
``floor``, the in-process pipeline (``bench.floor``: the same stages, no RPC). Both stacks
run side by side for the whole comparison (an idle stack costs nothing); every measurement
is a closed loop of ``--concurrency`` callers for ``--duration`` seconds from a separate
process (``python -m loadtest``, or ``python -m bench.floor`` for the floor), on the same
requests (the load generator's workload, same mix and seed) and the same threads.

Per measurement: achieved req/s, p50 and p99 latency, and each server's CPU milliseconds
per request (from ``/proc``, the process and its worker children), which shows where the
work went. The report prints, per side, the median and [min-max] over ``--pairs`` runs and
calls a difference whose ranges overlap "no difference". Raw runs go to
``bench/results/stack-<a>-vs-<b>.json``.

Usage: ``python -m bench.stack_bench --bundle bundles --a default --b rank-no-batching``
(variants: see ``VARIANTS``; ``--list`` prints them). A code change is compared the same
way: ``--a-source`` / ``--b-source`` name a source tree (e.g. ``git worktree add --detach
/tmp/old HEAD~1``) whose servers that side runs, with the same variant on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from recstack.tools.procs import COLOCATED, Stack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
FLOOR = "floor"
SINGLE_THREADED = ["--intra-op-threads", "0", "--blas-threads", "0"]
# Extra command-line flags per service; FLOOR is the in-process pipeline instead of a stack.
VARIANTS: dict[str, dict[str, list[str]]] = {
    "default": {},
    "rank-no-batching": {"rank": ["--no-batching"]},
    "rank-batch-delay-0.2ms": {"rank": ["--max-queue-delay-ms", "0.2"]},
    "rank-batch-delay-0": {"rank": ["--max-queue-delay-ms", "0"]},
    "rank-processes-2": {"rank": ["--processes", "2"]},
    "encoder-no-batching": {"recall": ["--no-encoder-batching"]},
    "recall-hnsw-always": {"recall": ["--full-scan-threshold", "0"]},
    "gateway-processes-2": {"gateway": ["--processes", "2"]},
    # The three stages in one process (gateway.colocated): one RPC per Recommend.
    COLOCATED: {COLOCATED: []},
    "colocated-rank-no-batching": {COLOCATED: ["--no-rank-batching"]},
    "colocated-encoder-no-batching": {COLOCATED: ["--no-recall-encoder-batching"]},
    "colocated-query-int8": {COLOCATED: ["--recall-query-encoder-int8"]},
    "library-threads": {
        "recall": SINGLE_THREADED,
        "rank": SINGLE_THREADED,
        "gateway": ["--blas-threads", "0"],
    },
    FLOOR: {},
}
METRICS = ("achieved_rps", "p50_ms", "p99_ms")
HIGHER_IS_BETTER = {"achieved_rps": True, "p50_ms": False, "p99_ms": False}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its direct children (``--processes`` workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process exited while we looked
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def loadtest_closed(
    service: str, port: int, args: argparse.Namespace, out: Path, extra: list[str]
) -> dict[str, Any]:
    """One ``python -m loadtest closed`` run (its own process) against ``port``: achieved
    req/s, p50/p99 ms, requests sent and errors (``args``: bundle, concurrency, duration)."""
    command = [sys.executable, "-m", "loadtest", "closed", "--service", service]
    command += ["--target", f"127.0.0.1:{port}", "--bundle", args.bundle]
    command += ["--concurrency", str(args.concurrency), "--duration", str(args.duration)]
    command += ["--out", str(out), "--no-plots", "--no-progress", *extra]
    subprocess.run(command, check=True, capture_output=True, text=True)
    phase = json.loads(out.read_text())["phases"][0]
    latency = phase["latency_ms"]
    return {
        "achieved_rps": phase["achieved_rps"],
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "requests": phase["sent"],
        "errors": phase["error_count"],
    }


def spread(values: list[float]) -> dict[str, float]:
    """Median and [min, max] of repeated runs (what every A/B figure reports)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(side: str, stack: Stack | None, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One closed-loop measurement of ``side`` (a running stack, or the floor)."""
    out = work / f"{side}.json"
    if stack is None:
        command = [sys.executable, "-m", "bench.floor", "--bundle", args.bundle]
        command += ["--concurrency", str(args.concurrency), "--duration", str(args.duration)]
        command += ["--out", str(out)] + (["--mix", args.mix] if args.mix else [])
        subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
        return dict(json.loads(out.read_text()))
    before = {s.name: cpu_seconds(s.proc.pid) for s in stack.services}
    mix = ["--mix", args.mix] if args.mix else []
    result = loadtest_closed("recommend", stack.gateway.port, args, out, mix)
    sent = max(result["requests"], 1)
    result["cpu_ms_per_request"] = {
        s.name: (cpu_seconds(s.proc.pid) - before[s.name]) / sent * 1000 for s in stack.services
    }
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in METRICS:
        out[metric] = spread([r[metric] for r in runs])
    for name in runs[0]["cpu_ms_per_request"]:
        out[f"cpu_ms/{name}"] = spread([r["cpu_ms_per_request"][name] for r in runs])
    return out


def verdict(a: dict[str, float], b: dict[str, float], higher_is_better: bool) -> str:
    """ "no difference" when the [min, max] ranges overlap, else which side is better."""
    if a["max"] >= b["min"] and b["max"] >= a["min"]:
        return "no difference"
    a_better = (a["median"] > b["median"]) == higher_is_better
    return "A better" if a_better else "B better"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stack_bench", description=__doc__)
    parser.add_argument("--bundle", default="bundles", help="bundle dir or root with CURRENT")
    parser.add_argument("--a", default="default", choices=sorted(VARIANTS))
    parser.add_argument("--b", default=FLOOR, choices=sorted(VARIANTS))
    parser.add_argument("--pairs", type=int, default=5, help="A B rounds (at least 5)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--mix", default=None, help="recommend mix, as loadtest --mix")
    for key in ("a", "b"):
        parser.add_argument(
            f"--{key}-source",
            type=Path,
            default=None,
            help=f"source tree whose servers side {key.upper()} runs (default: this checkout)",
        )
    parser.add_argument("--out", default="", help="JSON (default bench/results/stack-A-vs-B)")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, extra in VARIANTS.items():
            print(f"{name:24} {extra if name != FLOOR else 'in-process pipeline, no RPC'}")
        return 0
    sources = {"A": args.a_source, "B": args.b_source}
    for key, source in sources.items():
        if source is not None and not (source / "recstack" / "__init__.py").is_file():
            parser.error(f"--{key.lower()}-source {source}: not a recstack source tree")
    if args.a == args.b and args.a_source == args.b_source:
        parser.error("--a and --b (or --a-source and --b-source) must differ")
    if FLOOR in (args.a, args.b) and (args.a_source or args.b_source):
        parser.error("--a-source / --b-source apply to stacks, not to the floor")
    if args.pairs < 1:
        parser.error("--pairs must be positive")
    sides = {"A": args.a, "B": args.b}
    runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="stack-bench-") as tmp:
        work = Path(tmp)
        stacks: dict[str, Stack | None] = {}
        try:
            for key, variant in sides.items():
                if variant == FLOOR:
                    stacks[key] = None
                    continue
                (work / key).mkdir()
                where = f" from {sources[key]}" if sources[key] else ""
                print(f"starting stack {key} ({variant}{where}) ...", flush=True)
                side = Stack(args.bundle, work / key, VARIANTS[variant], source=sources[key])
                stacks[key] = side.start()
            for pair in range(1, args.pairs + 1):
                for key in ("A", "B"):
                    result = measure(sides[key], stacks[key], args, work)
                    runs[key].append(result)
                    cpu = "  ".join(f"{n} {v:.2f}" for n, v in result["cpu_ms_per_request"].items())
                    print(
                        f"pair {pair} {key} {sides[key]:22} {result['achieved_rps']:7.1f} req/s"
                        f"  p50 {result['p50_ms']:6.2f}  p99 {result['p99_ms']:6.2f} ms"
                        f"  cpu ms/req: {cpu}",
                        flush=True,
                    )
        finally:
            for stack in stacks.values():
                if stack is not None:
                    stack.stop()
    summary = {key: summarize(runs[key]) for key in runs}
    print(
        f"\n{args.pairs} pairs, closed loop, {args.concurrency} callers, {args.duration:.0f} s "
        f"each (median [min-max])"
    )
    print(f"{'measure':22} {'A: ' + args.a:>30} {'B: ' + args.b:>30}  verdict")
    for metric in summary["A"]:
        a, b = summary["A"][metric], summary["B"].get(metric)
        show_a = f"{a['median']:.2f} [{a['min']:.2f}-{a['max']:.2f}]"
        if b is None:
            print(f"{metric:22} {show_a:>30} {'-':>30}")
            continue
        show_b = f"{b['median']:.2f} [{b['min']:.2f}-{b['max']:.2f}]"
        judged = verdict(a, b, HIGHER_IS_BETTER[metric]) if metric in METRICS else ""
        print(f"{metric:22} {show_a:>30} {show_b:>30}  {judged}")
    for metric in summary["B"]:
        if metric not in summary["A"]:
            b = summary["B"][metric]
            show_b = f"{b['median']:.2f} [{b['min']:.2f}-{b['max']:.2f}]"
            print(f"{metric:22} {'-':>30} {show_b:>30}")
    ratio = summary["A"]["achieved_rps"]["median"] / summary["B"]["achieved_rps"]["median"]
    print(f"throughput A/B: x{ratio:.2f}")
    out = Path(args.out or RESULTS / f"stack-{args.a}-vs-{args.b}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "bundle": args.bundle,
        "a": args.a,
        "b": args.b,
        "a_source": str(args.a_source or ""),
        "b_source": str(args.b_source or ""),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "mix": args.mix,
        "runs": runs,
        "summary": summary,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
