"""Rollouts fail no call: real processes under open-loop load from a separate process.

* CURRENT flips on one machine: recall and rank watch the same root and swap at different
  moments. The order is forced (each service's swap is triggered by its admin reload RPC,
  the others' pollers off) so both orders are covered deterministically: recall first
  (the gateway must re-ask recall in the version rank still serves) and rank first (rank
  must keep serving the version recall still answers in).
* A Kubernetes-style roll: old recall and rank processes (v1) and new ones (v2, plus v1
  as PREVIOUS, installed by ``recstack.publish fetch --previous-version`` as the pods'
  initContainer does) serve side by side behind one gateway that balances over both
  (gRPC ``ipv4:`` address lists, as a headless Service gives it every pod); then the old
  ones get SIGTERM and drain.

Every call of the load generator must succeed (its JSON report counts errors by status).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recstack.procs import ServiceProcess, Stack, free_port
from recstack.publish import fetch
from recstack.v1 import rank_pb2, rank_pb2_grpc, recall_pb2, recall_pb2_grpc
from tests.unit.test_rank_core import copy_bundle

pytestmark = pytest.mark.process

RATE = 20  # requests/s: far below capacity, so any error is the rollout's
FALLBACK_LOG = "rollout: recall answered in"
RECALL = "recstack.v1.RecallService"
RANK = "recstack.v1.RankService"
GATEWAY = "recstack.v1.RecommendService"


def two_versions(bundle_dir: Path, root: Path) -> Path:
    root.mkdir()
    for v in ("v1", "v2"):
        copy_bundle(bundle_dir, root / v, version=v)
    (root / "CURRENT").write_text("v1\n")
    return root


def start_load(target: int, bundle: Path, out: Path, duration: float) -> subprocess.Popen[bytes]:
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
            str(RATE),
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


def finished_load(load: subprocess.Popen[bytes], out: Path) -> dict[str, int]:
    output, _ = load.communicate(timeout=240)
    assert load.returncode == 0, output.decode()[-3000:]
    report = json.loads(out.read_text())
    answered = report["meta"]["answered_versions"]
    assert answered.get("v1") and answered.get("v2"), f"the load never saw both: {answered}"
    totals = {"sent": 0, "ok": 0, "errors": 0}
    for phase in report["phases"]:
        totals["sent"] += phase["sent"]
        totals["ok"] += phase["ok"]
        totals["errors"] += phase["error_count"]
        assert phase["error_count"] == 0, f"failed calls during the rollout: {phase['errors']}"
    return totals


def recall_versions(proc: ServiceProcess) -> list[str]:
    stub = recall_pb2_grpc.RecallServiceStub(proc.channel())
    return list(stub.GetInfo(recall_pb2.RecallServiceGetInfoRequest(), timeout=30).serving_versions)


def rank_versions(proc: ServiceProcess) -> list[str]:
    stub = rank_pb2_grpc.RankServiceStub(proc.channel())
    return list(stub.GetInfo(rank_pb2.RankServiceGetInfoRequest(), timeout=30).serving_versions)


def reload_recall(proc: ServiceProcess, version: str) -> None:
    stub = recall_pb2_grpc.RecallServiceStub(proc.channel())
    resp = stub.ReloadBundle(recall_pb2.ReloadBundleRequest(), timeout=120)
    assert resp.bundle_version == version


def reload_rank(proc: ServiceProcess, version: str) -> None:
    stub = rank_pb2_grpc.RankServiceStub(proc.channel())
    resp = stub.Reload(rank_pb2.RankServiceReloadRequest(expected_version=version), timeout=120)
    assert resp.bundle_version == version


def test_current_flips_in_either_order_fail_no_call(bundle_dir, tmp_path):
    root = two_versions(bundle_dir, tmp_path / "bundles")
    no_poll = ["--bundle-poll-s", "0"]
    stack = Stack(str(root), tmp_path, {"recall": no_poll, "rank": no_poll}).start()
    recall, rank = stack.by_name("recall"), stack.by_name("rank")
    out = tmp_path / "load.json"
    load = start_load(stack.gateway.port, root / "v1", out, duration=24)
    try:
        time.sleep(4)  # the load runs before, between and after the swaps
        (root / "CURRENT").write_text("v2\n")
        reload_recall(recall, "v2")  # recall first: rank still serves only v1 ...
        assert recall_versions(recall) == ["v2", "v1"] and rank_versions(rank) == ["v1"]
        time.sleep(3)  # ... and Recommend keeps succeeding, re-asking recall in v1
        reload_rank(rank, "v2")
        assert rank_versions(rank) == ["v2", "v1"]
        time.sleep(3)
        (root / "CURRENT").write_text("v1\n")
        reload_rank(rank, "v1")  # rank first: it keeps v2 for recall's answers
        assert rank_versions(rank) == ["v1", "v2"]
        time.sleep(3)
        reload_recall(recall, "v1")
        totals = finished_load(load, out)
    finally:
        if load.poll() is None:
            load.kill()
        codes = stack.stop()
    assert totals["sent"] >= RATE * 20 and totals["ok"] == totals["sent"], totals
    assert codes == {"gateway": 0, "rank": 0, "recall": 0}
    assert FALLBACK_LOG in stack.gateway.log_path.read_text()


def test_kubernetes_style_roll_fails_no_call(bundle_dir, tmp_path):
    published = two_versions(bundle_dir, tmp_path / "published")
    old_root = tmp_path / "old-pods"
    fetch(str(published), old_root, "v1")
    new_root = tmp_path / "new-pods"
    # What each new pod's initContainer does mid-roll (RECSTACK_PREVIOUS_BUNDLE_VERSION).
    fetch(str(published), new_root, "v2", previous_version="v1")
    assert (new_root / "PREVIOUS").read_text().strip() == "v1"
    ports = {name: free_port() for name in ("recall-old", "recall-new", "rank-old", "rank-new")}
    procs: dict[str, ServiceProcess] = {}

    def start(module: str, name: str, root: Path, *extra: str) -> ServiceProcess:
        procs[name] = ServiceProcess(
            module,
            "--port",
            str(ports[name]),
            "--bundle",
            str(root),
            *extra,
            workdir=tmp_path,
            name=name,
        )
        return procs[name]

    try:
        start("recall_service", "recall-old", old_root, "--state-dir", str(tmp_path / "r-old"))
        start("recall_service", "recall-new", new_root, "--state-dir", str(tmp_path / "r-new"))
        start("rank_service", "rank-old", old_root)
        start("rank_service", "rank-new", new_root)
        for name, service in (
            ("recall-old", RECALL),
            ("recall-new", RECALL),
            ("rank-old", RANK),
            ("rank-new", RANK),
        ):
            procs[name].wait_serving(service, 240)
        assert recall_versions(procs["recall-new"]) == ["v2", "v1"]
        assert rank_versions(procs["rank-old"]) == ["v1"]
        replicas = {
            role: f"ipv4:127.0.0.1:{ports[role + '-old']},127.0.0.1:{ports[role + '-new']}"
            for role in ("recall", "rank")
        }
        gateway = ServiceProcess(
            "gateway",
            "--bundle",
            str(old_root),
            "--recall-address",
            replicas["recall"],
            "--rank-address",
            replicas["rank"],
            "--state-dir",
            str(tmp_path / "gateway-state"),
            workdir=tmp_path,
            name="gateway",
        )
        procs["gateway"] = gateway
        gateway.wait_serving(GATEWAY, 240)
        out = tmp_path / "load.json"
        load = start_load(gateway.port, old_root / "v1", out, duration=20)
        try:
            time.sleep(6)  # old and new pods of both services serve side by side
            assert procs.pop("rank-old").terminate(60) == 0  # the roll retires old pods
            time.sleep(3)
            assert procs.pop("recall-old").terminate(60) == 0
            totals = finished_load(load, out)
        finally:
            if load.poll() is None:
                load.kill()
    finally:
        codes = {name: p.stop() for name, p in procs.items()}
    assert totals["sent"] >= RATE * 16 and totals["ok"] == totals["sent"], totals
    assert set(codes.values()) == {0}, codes
    assert FALLBACK_LOG in (tmp_path / "gateway.log").read_text()
