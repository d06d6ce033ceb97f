"""Rollouts fail no call: real processes under open-loop load from a separate process.

* CURRENT flips on one machine: recall and rank watch the same root and swap at different
  moments. The order is forced (each service's swap is triggered by its admin reload RPC,
  the others' pollers off) so both orders are covered deterministically: recall first
  (the gateway must re-ask recall in the version rank still serves) and rank first (rank
  must keep serving the version recall still answers in).
* A Kubernetes-style roll: old recall and rank processes (v1) and new ones (v2, plus v1
  as PREVIOUS, installed by ``recstack.tools.publish fetch --previous-version`` as the pods'
  initContainer does) serve side by side behind one gateway that balances over both
  (gRPC ``ipv4:`` address lists, as a headless Service gives it every pod); then the old
  ones get SIGTERM and drain.

Every call of the load generator must succeed (its JSON report counts errors by status).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.rollout_bench import (
    FALLBACK_LOG,
    NO_POLL,
    finished_load,
    flip_drill,
    serving_versions,
    start_load,
    two_versions,
)
from recstack.tools.procs import ServiceProcess, Stack, free_port
from recstack.tools.publish import fetch

pytestmark = pytest.mark.process

RATE = 20  # requests/s: far below capacity, so any error is the rollout's
RECALL = "recstack.v1.RecallService"
RANK = "recstack.v1.RankService"
GATEWAY = "recstack.v1.RecommendService"


def assert_no_failure(run: dict, at_least: int) -> None:
    assert run["failed"] == 0, f"failed calls during the rollout: {run['errors']}"
    assert run["sent"] >= at_least and run["ok"] == run["sent"], run
    answered = run["answered_versions"]
    assert answered.get("v1") and answered.get("v2"), f"the load never saw both: {answered}"


def test_current_flips_in_either_order_fail_no_call(bundle_dir, tmp_path):
    root = two_versions(Path(bundle_dir), tmp_path / "bundles")
    stack = Stack(str(root), tmp_path, {"recall": NO_POLL, "rank": NO_POLL}).start()
    try:
        run = flip_drill(stack, root, RATE, dwell_s=3.0, out=tmp_path / "load.json")
    finally:
        codes = stack.stop()
    assert_no_failure(run, at_least=RATE * 18)
    assert codes == {"gateway": 0, "rank": 0, "recall": 0}
    # What each service held after each step: the replaced version stays for its callers.
    assert [(r, k) for _, r, k in run["checks"]] == [
        (["v2", "v1"], ["v1"]),  # recall first: the gateway must re-ask recall in v1
        (["v2", "v1"], ["v2", "v1"]),
        (["v2", "v1"], ["v1", "v2"]),  # rank first: it keeps v2 for recall's answers
        (["v1", "v2"], ["v1", "v2"]),
    ]
    assert run["fallbacks"] > 0  # the recall-first window was exercised


def test_kubernetes_style_roll_fails_no_call(bundle_dir, tmp_path):
    published = two_versions(Path(bundle_dir), tmp_path / "published")
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
        assert serving_versions(procs["recall-new"]) == ["v2", "v1"]
        assert serving_versions(procs["rank-old"]) == ["v1"]
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
        load = start_load(gateway.port, old_root / "v1", out, RATE, duration=20)
        try:
            time.sleep(6)  # old and new pods of both services serve side by side
            assert procs.pop("rank-old").terminate(60) == 0  # the roll retires old pods
            time.sleep(3)
            assert procs.pop("recall-old").terminate(60) == 0
            run = finished_load(load, out)
        finally:
            if load.poll() is None:
                load.kill()
    finally:
        codes = {name: p.stop() for name, p in procs.items()}
    assert_no_failure(run, at_least=RATE * 16)
    assert set(codes.values()) == {0}, codes
    assert FALLBACK_LOG in (tmp_path / "gateway.log").read_text()
