"""Bundle rollouts under open-loop Recommend load: how many calls fail (the answer must be 0).

The drill (:func:`flip_drill`): the three services run as processes (``recstack.tools.procs``)
on a bundles root holding two versions (``v1``, ``v2``: copies of ``--bundle`` under two
version names, so two embedding spaces as far as the services are concerned); the load
generator (``python -m loadtest open``, a separate process) sends Recommend at ``--rate``
for the whole drill while ``CURRENT`` flips v1 -> v2 -> v1. Each flip is applied service by
service through the admin reload RPCs (their pollers off), in a forced order, with a dwell
under load in between: first recall swaps while rank still serves only the old version
(the gateway must re-ask recall in a version rank serves), then rank swaps first on the
way back (rank must keep the version recall still answers in). The report counts the
calls sent, succeeded and failed (by status), the responses per bundle version, and the
gateway's version fallbacks.

Usage: ``python -m bench.rollout_bench --bundle bundles --rates 40,95`` (results in
``bench/results/rollout.json``). ``tests/process/test_rollout.py`` runs the same drill on
the tiny test bundle.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from recstack.core.bundle import copy_bundle, resolve_bundle_dir
from recstack.tools.procs import ServiceProcess, Stack
from recstack.v1 import rank_pb2, rank_pb2_grpc, recall_pb2, recall_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
# What the gateway logs each time it re-asks recall in a version rank serves.
FALLBACK_LOG = "rollout: recall answered in"
NO_POLL = ["--bundle-poll-s", "0"]


def two_versions(bundle: Path, root: Path) -> Path:
    """A bundles root with ``bundle`` copied as v1 and v2, CURRENT naming v1."""
    root.mkdir(parents=True)
    for v in ("v1", "v2"):
        copy_bundle(bundle, root / v, version=v)
    (root / "CURRENT").write_text("v1\n")
    return root


def start_load(
    target: int, bundle: Path, out: Path, rate: float, duration: float
) -> subprocess.Popen[bytes]:
    """``python -m loadtest open`` against the gateway on ``target``; either version OK."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadtest",
            "open",
            "--service",
            "recommend",
            "--target",
            f"127.0.0.1:{target}",
            "--bundle",
            str(bundle),
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--timeout-ms",
            "10000",
            "--warmup-requests",
            "5",
            "--no-plots",
            "--no-progress",
            "--out",
            str(out),
            "--accept-versions",
            "v1,v2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finished_load(load: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    """Wait for the load generator; its totals, errors by status and versions answered."""
    output, _ = load.communicate(timeout=600)
    if load.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{output.decode()[-3000:]}")
    report = json.loads(out.read_text())
    errors: dict[str, int] = {}
    for phase in report["phases"]:
        for status, n in phase["errors"].items():
            errors[status] = errors.get(status, 0) + n
    return {
        "sent": sum(p["sent"] for p in report["phases"]),
        "ok": sum(p["ok"] for p in report["phases"]),
        "failed": sum(errors.values()),
        "errors": errors,
        "answered_versions": report["meta"]["answered_versions"],
    }


def serving_versions(proc: ServiceProcess) -> list[str]:
    """GetInfo.serving_versions of a recall or rank process."""
    if proc.name.startswith("recall"):
        recall = recall_pb2_grpc.RecallServiceStub(proc.channel())
        info: Any = recall.GetInfo(recall_pb2.RecallServiceGetInfoRequest(), timeout=30)
    else:
        rank = rank_pb2_grpc.RankServiceStub(proc.channel())
        info = rank.GetInfo(rank_pb2.RankServiceGetInfoRequest(), timeout=30)
    return list(info.serving_versions)


def reload(proc: ServiceProcess, version: str) -> None:
    """The service's admin reload RPC; it must now serve ``version`` as its primary."""
    if proc.name.startswith("recall"):
        recall = recall_pb2_grpc.RecallAdminServiceStub(proc.channel())
        request = recall_pb2.RecallAdminServiceReloadBundleRequest()
        got = recall.ReloadBundle(request, timeout=300).bundle_version
    else:
        rank = rank_pb2_grpc.RankAdminServiceStub(proc.channel())
        ranked = rank_pb2.RankAdminServiceReloadBundleRequest(expected_version=version)
        got = rank.ReloadBundle(ranked, timeout=300).bundle_version
    if got != version:
        raise RuntimeError(f"{proc.name} serves {got} after reload, expected {version}")


def flip_drill(stack: Stack, root: Path, rate: float, dwell_s: float, out: Path) -> dict[str, Any]:
    """CURRENT v1 -> v2 (recall first) -> v1 (rank first) under load; see module doc.

    ``stack`` must run on ``root`` with both pollers off (``NO_POLL``); ``checks`` in the
    result records what each service served after each step.
    """
    recall, rank = stack.by_name("recall"), stack.by_name("rank")
    load = start_load(stack.gateway.port, root / "v1", out, rate, duration=7 * dwell_s)
    checks: list[tuple[str, list[str], list[str]]] = []

    def step(name: str) -> None:
        checks.append((name, serving_versions(recall), serving_versions(rank)))
        time.sleep(dwell_s)

    try:
        time.sleep(dwell_s)  # load before the first swap
        (root / "CURRENT").write_text("v2\n")
        reload(recall, "v2")
        step("recall swapped to v2 first")
        reload(rank, "v2")
        step("rank swapped to v2")
        (root / "CURRENT").write_text("v1\n")
        reload(rank, "v1")
        step("rank swapped back to v1 first")
        reload(recall, "v1")
        step("recall swapped back to v1")
        result = finished_load(load, out)
    finally:
        if load.poll() is None:
            load.kill()
    result["checks"] = checks
    result["fallbacks"] = stack.gateway.log_path.read_text().count(FALLBACK_LOG)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundles", help="bundle (or root with CURRENT)")
    parser.add_argument("--rates", default="40", help="comma-separated Recommend req/s")
    parser.add_argument("--dwell", type=float, default=5.0, help="seconds between steps")
    parser.add_argument("--out", default=str(RESULTS / "rollout.json"))
    parser.add_argument(
        "--workdir", default="", help="keep the bundles, service logs and load reports here"
    )
    args = parser.parse_args(argv)
    bundle = resolve_bundle_dir(args.bundle)
    runs = []
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as scratch:
        tmp = args.workdir or scratch
        root = two_versions(bundle, Path(tmp) / "bundles")
        for rate in (float(r) for r in args.rates.split(",")):
            work = Path(tmp) / f"rate-{rate:g}"
            work.mkdir()
            stack = Stack(str(root), work, {"recall": NO_POLL, "rank": NO_POLL}).start()
            try:
                run = flip_drill(stack, root, rate, args.dwell, work / "load.json")
            finally:
                codes = stack.stop()
                (root / "CURRENT").write_text("v1\n")
            run.update(rate=rate, exit_codes=codes)
            runs.append(run)
            print(
                f"{rate:6g} req/s: sent {run['sent']}, ok {run['ok']}, failed {run['failed']}"
                f" {run['errors'] or ''}; versions {run['answered_versions']};"
                f" gateway fallbacks {run['fallbacks']}; exit codes {codes}",
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"bundle": str(bundle), "machine": platform.platform(), "dwell_s": args.dwell}
    Path(args.out).write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
    return 0 if all(r["failed"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
