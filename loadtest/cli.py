"""Command line: ``python -m loadtest {closed,open,find-max} --service S [options]``.

Examples (services on their well-known loopback ports, bundle in ``bundles/``)::

    python -m loadtest closed   --service recall    --concurrency 1,4,16,32 --duration 10
    python -m loadtest open     --service recommend --rate 200 --duration 10
    python -m loadtest open     --service rank      --schedule step:50,100,200 --step-seconds 5
    python -m loadtest open     --service recommend --schedule ramp:50-400 --duration 20
    python -m loadtest find-max --service recommend --slo-p99-ms 50

Exit status: 0 done, 1 the target failed (not serving, warm-up without one success, or
errors with ``--fail-on-errors``), 2 bad arguments or a refused target.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from loadtest import findmax, plots, report, schedule
from loadtest.clock import MonotonicClock
from loadtest.runner import Budget, Run
from loadtest.targets import (
    DEFAULT_PORTS,
    GrpcSender,
    TargetError,
    check_target,
    open_channel,
)
from loadtest.workload import (
    SERVICES,
    BundleData,
    Generator,
    WorkloadError,
    WorkloadOptions,
    parse_mix,
)
from recstack.client import wait_serving
from recstack.core.bundle import Bundle
from recstack.core.errors import BundleError

MAX_CONCURRENCY = 1024
DEFAULT_OUT_DIR = Path("state") / "loadtest"


class UsageError(ValueError):
    """Arguments that cannot describe a bounded run."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 1,4,16") from exc
    if not values or any(not 1 <= v <= MAX_CONCURRENCY for v in values):
        raise argparse.ArgumentTypeError(f"concurrency levels must be within 1..{MAX_CONCURRENCY}")
    return values


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("target and workload")
    g.add_argument("--service", required=True, choices=SERVICES, help="which RPC to load")
    g.add_argument(
        "--target",
        default="",
        help="host:port (default: 127.0.0.1 and the service's well-known port)",
    )
    g.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a non-loopback host that may be loaded (repeatable)",
    )
    g.add_argument("--allow-remote", action="store_true", help="allow any host (careful)")
    g.add_argument("--tls-ca", default="", help="PEM CA verifying the target (enables TLS)")
    g.add_argument("--tls-cert", default="", help="PEM client certificate (mutual TLS)")
    g.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    g.add_argument(
        "--token-file", default="", help="file holding the bearer token to send (needs --tls-ca)"
    )
    g.add_argument("--bundle", default="bundles", help="bundle the requests are drawn from")
    g.add_argument(
        "--accept-versions",
        type=lambda v: [x for x in v.split(",") if x],
        default=[],
        help="other bundle versions a response may carry (a rollout under load); "
        "default: only the bundle's",
    )
    g.add_argument("--mix", default="", help="kind=weight,... (see docs/loadtest.md)")
    g.add_argument("--k", type=int, default=10, help="items/candidates asked for")
    g.add_argument(
        "--candidates",
        type=int,
        default=0,
        help="rank: candidates per request (0 = 100); recommend: candidate_count (0 = default)",
    )
    g.add_argument("--history-len", type=int, default=20, help="most history items sent")
    g.add_argument("--omit-vectors", action="store_true", help="recall: omit_vectors=true")
    g.add_argument("--pool-size", type=int, default=512, help="distinct pre-built requests")
    g.add_argument("--seed", type=int, default=0, help="seed of the request draw")
    r = p.add_argument_group("run bounds and output")
    r.add_argument("--timeout-ms", type=float, default=2000.0, help="deadline of each RPC")
    r.add_argument("--warmup-requests", type=int, default=20, help="unrecorded requests first")
    r.add_argument("--wait-ready", type=float, default=10.0, help="wait for SERVING (0 = skip)")
    r.add_argument("--max-requests", type=int, default=1_000_000, help="hard cap on requests")
    r.add_argument("--max-seconds", type=float, default=900.0, help="hard cap on run time")
    r.add_argument("--out", default="", help="JSON report (default state/loadtest/S-MODE.json)")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--fail-on-errors", action="store_true", help="exit 1 if any request failed")
    return p


def _open_options(p: argparse.ArgumentParser, with_schedule: bool) -> None:
    p.add_argument("--max-inflight", type=int, default=256, help="outstanding requests cap")
    if with_schedule:
        p.add_argument("--rate", type=float, default=0.0, help="constant rate (requests/s)")
        p.add_argument("--schedule", default="", help="constant:R | step:R1,R2,.. | ramp:A-B")
        p.add_argument("--duration", type=float, default=10.0, help="seconds (constant, ramp)")
        p.add_argument(
            "--step-seconds", type=float, default=5.0, help="per step; ramp report window"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    common = _common()
    closed = modes.add_parser("closed", parents=[common], help="closed-loop concurrency sweep")
    closed.add_argument("--concurrency", type=_int_list, default=[1, 4, 16, 32])
    closed.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    opened = modes.add_parser("open", parents=[common], help="open-loop rate schedule")
    _open_options(opened, with_schedule=True)
    fm = modes.add_parser("find-max", parents=[common], help="max rate meeting a p99 objective")
    _open_options(fm, with_schedule=False)
    fm.add_argument("--slo-p99-ms", type=float, required=True, help="p99 objective (ms)")
    fm.add_argument("--start-rate", type=float, default=50.0)
    fm.add_argument("--max-rate", type=float, default=5000.0)
    fm.add_argument("--probe-seconds", type=float, default=5.0)
    fm.add_argument("--cooldown-seconds", type=float, default=1.0)
    fm.add_argument("--tolerance", type=float, default=0.05, help="relative bisection stop")
    fm.add_argument("--max-probes", type=int, default=12)
    fm.add_argument("--min-throughput-ratio", type=float, default=0.95)
    fm.add_argument("--max-error-rate", type=float, default=0.001)
    return parser


def _schedule(args: argparse.Namespace) -> schedule.Schedule:
    if args.rate and args.schedule:
        raise UsageError("give --rate or --schedule, not both")
    if args.rate:
        return schedule.constant(args.rate, args.duration)
    if args.schedule:
        return schedule.parse(args.schedule, args.duration, args.step_seconds)
    raise UsageError("open needs --rate R or --schedule constant:R|step:...|ramp:A-B")


def _planned_seconds(args: argparse.Namespace) -> float | None:
    if args.mode == "closed":
        return float(len(args.concurrency) * args.duration)
    if args.mode == "open":
        return _schedule(args).duration
    return None


class _Bar:
    """tqdm over elapsed seconds, showing ok/error counts."""

    def __init__(self, total: float | None, disable: bool) -> None:
        self.bar = tqdm(
            total=round(total, 1) if total else None,
            unit="s",
            disable=disable,
            bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt}s{postfix}" if total else None,
            leave=False,
        )
        self.run: Run | None = None

    def __call__(self, elapsed: float) -> None:
        self.bar.n = round(elapsed, 1)
        if self.run is not None:
            rec = self.run.recorder
            self.bar.set_postfix(ok=rec.ok, err=rec.failed, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _find_max(args: argparse.Namespace, run: Run, clock: MonotonicClock) -> dict[str, Any]:
    objective = findmax.Objective(args.slo_p99_ms, args.min_throughput_ratio, args.max_error_rate)
    params = findmax.SearchParams(
        start_rate=args.start_rate,
        max_rate=args.max_rate,
        tolerance=args.tolerance,
        max_probes=args.max_probes,
    )

    def probe(rate: float) -> findmax.ProbeResult:
        if run.budget.time_left() < args.probe_seconds + args.timeout_ms / 1e3:
            raise findmax.SearchAborted
        if run.phases:
            time.sleep(args.cooldown_seconds)
        n = len(run.phases) + 1
        (spec,) = run.open(
            schedule.constant(rate, args.probe_seconds), args.max_inflight, f"probe {n}:"
        )
        (summary,) = run.summaries([spec])
        if run.budget.exhausted:
            raise findmax.SearchAborted
        return findmax.ProbeResult(
            offered_rps=rate,
            achieved_rps=summary["achieved_rps"],
            p99_ms=summary["latency_ms"].get("p99"),
            error_rate=summary["error_rate"],
        )

    found = findmax.find_max(probe, objective, params)
    return {
        "objective": vars(objective),
        "search": vars(params),
        "max_sustainable_rps": found.max_rate,
        "lowest_failing_rps": found.lowest_failing,
        "stopped_by": found.stopped_by,
        "probes": [
            {"rate": p.rate, "sustainable": p.sustainable, "reason": p.reason} for p in found.probes
        ],
    }


def _outputs(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    out = Path(args.out) if args.out else DEFAULT_OUT_DIR / f"{args.service}-{args.mode}.json"
    stem = out.with_suffix("")
    return (
        out,
        stem.with_name(stem.name + "-percentiles.png"),
        stem.with_name(stem.name + "-timeline.png"),
    )


def execute(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    """Run what ``args`` describe; the exit status (see the module docstring)."""
    target = args.target or f"127.0.0.1:{DEFAULT_PORTS[args.service]}"
    check_target(target, allow_remote=args.allow_remote, allowed_hosts=args.allow_host)
    planned = _planned_seconds(args)
    if planned is not None and planned > args.max_seconds:
        raise UsageError(f"planned {planned:g}s exceeds --max-seconds {args.max_seconds:g}")
    if args.mode == "open" and _schedule(args).planned() > args.max_requests:
        raise UsageError(
            f"schedule plans {_schedule(args).planned()} requests, over --max-requests "
            f"{args.max_requests}"
        )
    if args.timeout_ms <= 0:
        raise UsageError("--timeout-ms must be positive")
    bundle = Bundle.open(args.bundle)
    mix = parse_mix(args.service, args.mix)
    options = WorkloadOptions(
        k=args.k,
        candidates=args.candidates,
        history_len=args.history_len,
        omit_vectors=args.omit_vectors,
        pool_size=args.pool_size,
        seed=args.seed,
    )
    pool = Generator(args.service, BundleData.load(bundle), mix, options).pool()
    channel = open_channel(
        target,
        ca=args.tls_ca,
        cert=args.tls_cert,
        key=args.tls_key,
        token_file=args.token_file,
    )
    try:
        if args.wait_ready > 0:
            try:
                wait_serving(channel, "", args.wait_ready, what="target")
            except TimeoutError as exc:
                log(f"loadtest: {target}: {exc}")
                return 1
        clock = MonotonicClock()
        budget = Budget(clock, args.max_requests, args.max_seconds)
        bar = _Bar(planned, disable=args.no_progress)
        sender = GrpcSender(channel, args.service, bundle.version, args.accept_versions)
        run = Run(
            sender,
            pool,
            clock,
            budget,
            timeout_s=args.timeout_ms / 1e3,
            progress=bar,
        )
        bar.run = run
        warm = run.warmup(args.warmup_requests)
        if args.warmup_requests > 0 and not warm.get("OK"):
            bar.close()
            log(f"loadtest: warm-up against {target} had no successful request: {warm}")
            return 1
        extra: dict[str, Any] = {}
        try:
            if args.mode == "closed":
                for level in args.concurrency:
                    run.closed(level, args.duration)
                    if budget.exhausted:
                        break
            elif args.mode == "open":
                run.open(_schedule(args), args.max_inflight)
            else:
                extra["find_max"] = _find_max(args, run, clock)
        finally:
            bar.close()
    finally:
        channel.close()

    phases = run.summaries()
    if "find_max" in extra:
        for phase, probe in zip(phases, extra["find_max"]["probes"], strict=False):
            phase["sustainable"] = probe["sustainable"]
    meta = {
        "mode": args.mode,
        "service": args.service,
        "target": target,
        "tls": bool(args.tls_ca),
        "token": bool(args.token_file),
        "bundle": {"version": bundle.version, "path": str(bundle.root)},
        "mix": mix,
        "workload": vars(options),
        "timeout_ms": args.timeout_ms,
        "max_inflight": getattr(args, "max_inflight", None),
        "warmup": warm,
        "stopped_by": budget.exhausted,
        "answered_versions": dict(sender.answered),
    }
    result = report.build(meta, phases, **extra)
    out, pct_png, time_png = _outputs(args)
    report.write_json(out, result)
    log(report.table(phases))
    if "find_max" in extra:
        fm = extra["find_max"]
        log(
            f"max sustainable rate: {fm['max_sustainable_rps']} req/s "
            f"(p99 <= {args.slo_p99_ms:g} ms; stopped by {fm['stopped_by']})"
        )
    if budget.exhausted:
        log(f"stopped early: {budget.exhausted}")
    log(f"wrote {out}")
    if not args.no_plots:
        title = f"{args.service} @ {target}, {args.mode}"
        plots.percentiles(phases, pct_png, title, getattr(args, "slo_p99_ms", None))
        plots.timeline(phases, time_png, title)
        log(f"wrote {pct_png} and {time_png}")
    failed = sum(p["error_count"] for p in phases)
    return 1 if args.fail_on_errors and failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return execute(args)
    except (UsageError, TargetError, WorkloadError, schedule.ScheduleError, BundleError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
