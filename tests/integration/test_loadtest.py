"""Short load-test runs (seconds) against real recall, rank and gateway servers.

Asserts behaviour only: histograms are filled, percentiles are ordered, throughput is
positive, no request failed, and the JSON report and PNG plots are written. Rates are
low so a slow or busy CI machine still answers every request within the deadline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest.cli import main
from loadtest.workload import BundleData, Generator, WorkloadOptions, parse_mix
from recstack.core.bundle import Bundle
from recstack.runtime.server import RunningServer
from recstack.v1 import gateway_pb2, rank_pb2, recall_pb2

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ORDER = ["min", "p50", "p90", "p99", "p99.9", "max"]


def run_cli(tmp_path: Path, bundle_dir: Path, server: RunningServer, *args: str) -> dict[str, Any]:
    out = tmp_path / "report.json"
    mode, service, *rest = args
    code = main(
        [
            mode,
            "--service",
            service,
            "--target",
            f"127.0.0.1:{server.port}",
            "--bundle",
            str(bundle_dir),
            "--out",
            str(out),
            "--no-progress",
            "--timeout-ms",
            "20000",
            "--warmup-requests",
            "3",
            "--fail-on-errors",
            *rest,
        ]
    )
    assert code == 0
    assert (tmp_path / "report-percentiles.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "report-timeline.png").read_bytes()[:8] == PNG_MAGIC
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def assert_healthy(phase: dict[str, Any]) -> None:
    lat = phase["latency_ms"]
    assert lat["count"] == phase["ok"] == phase["sent"] > 0
    assert phase["errors"] == {} and phase["error_count"] == 0
    assert [lat[k] for k in ORDER] == sorted(lat[k] for k in ORDER)
    assert lat["min"] > 0
    assert phase["hdr"]
    assert phase["achieved_rps"] > 0
    assert phase["timeline"] and sum(w["sent"] for w in phase["timeline"]) == phase["sent"]


def test_closed_loop_sweep_against_recall(
    tmp_path: Path, bundle_dir: Path, recall_server: RunningServer, bundle: Bundle
) -> None:
    report = run_cli(
        tmp_path, bundle_dir, recall_server, "closed", "recall", "--concurrency", "1,2",
        "--duration", "1",
    )  # fmt: skip
    assert report["meta"]["bundle"]["version"] == bundle.version
    assert report["meta"]["stopped_by"] is None
    phases = report["phases"]
    assert [p["concurrency"] for p in phases] == [1, 2]
    for phase in phases:
        assert_healthy(phase)
        assert set(phase["by_kind"]) <= {"history", "text", "vector"}


def test_open_loop_step_schedule_against_rank(
    tmp_path: Path, bundle_dir: Path, rank_server: RunningServer
) -> None:
    report = run_cli(
        tmp_path, bundle_dir, rank_server, "open", "rank", "--schedule", "step:10,20",
        "--step-seconds", "1", "--candidates", "30",
    )  # fmt: skip
    phases = report["phases"]
    assert [p["offered_rps"] for p in phases] == [10, 20]
    assert [p["planned"] for p in phases] == [p["sent"] for p in phases] == [10, 20]
    for phase in phases:
        assert_healthy(phase)
        assert phase["send_lag_ms"]["max"] >= 0


def test_open_loop_constant_rate_against_the_gateway(
    tmp_path: Path, bundle_dir: Path, gateway_server: RunningServer
) -> None:
    report = run_cli(
        tmp_path, bundle_dir, gateway_server, "open", "recommend", "--rate", "5",
        "--duration", "2", "--mix", "user=1,text=1,history=1,cold=1",
    )  # fmt: skip
    (phase,) = report["phases"]
    assert_healthy(phase)
    assert phase["sent"] == 10
    assert set(phase["by_kind"]) <= {"user", "text", "history", "cold"}


def test_find_max_against_recall(
    tmp_path: Path, bundle_dir: Path, recall_server: RunningServer
) -> None:
    # A generous objective: every probe passes and the search stops at --max-rate. The
    # throughput ratio counts completions until the last answer, so a slow machine whose
    # last answer comes late must not fail a probe: 0.1 allows answers up to ~9 s late.
    report = run_cli(
        tmp_path, bundle_dir, recall_server, "find-max", "recall", "--slo-p99-ms", "20000",
        "--start-rate", "4", "--max-rate", "8", "--probe-seconds", "1",
        "--cooldown-seconds", "0", "--min-throughput-ratio", "0.1",
    )  # fmt: skip
    fm = report["find_max"]
    assert fm["max_sustainable_rps"] == 8 and fm["stopped_by"] == "max_rate"
    assert [p["rate"] for p in fm["probes"]] == [4, 8]
    assert [p["offered_rps"] for p in report["phases"]] == [4, 8]
    for phase in report["phases"]:
        assert_healthy(phase)


def test_non_loopback_target_is_refused(tmp_path: Path, bundle_dir: Path) -> None:
    args = ["open", "--service", "recall", "--target", "192.0.2.1:50051"]
    common = ["--bundle", str(bundle_dir), "--rate", "1", "--duration", "1", "--no-progress"]
    assert main([*args, *common, "--out", str(tmp_path / "r.json")]) == 2
    assert not (tmp_path / "r.json").exists()


def test_unbounded_plans_are_refused(tmp_path: Path, bundle_dir: Path) -> None:
    common = ["--service", "recall", "--bundle", str(bundle_dir), "--no-progress"]
    assert (
        main(["open", *common, "--rate", "1000", "--duration", "10", "--max-requests", "50"]) == 2
    )
    assert main(["closed", *common, "--duration", "100", "--max-seconds", "10"]) == 2


def test_generated_requests_come_from_the_bundle(bundle: Bundle) -> None:
    data = BundleData.load(bundle)
    users = {u for u, _ in data.histories}
    ids = set(data.ids)
    options = WorkloadOptions(k=5, candidates=30, pool_size=300, seed=1)

    recall = Generator("recall", data, parse_mix("recall", ""), options).pool()
    assert {r.kind for r in recall} == {"history", "text", "vector"}
    for r in recall:
        m = r.message
        assert isinstance(m, recall_pb2.RecallRequest) and m.k == 5
        if r.kind == "history":
            assert m.history_item_ids and set(m.history_item_ids) <= ids
        elif r.kind == "text":
            assert m.query_text in data.titles
        else:
            assert len(m.query_vector) == 4 * bundle.dim

    rank = Generator("rank", data, parse_mix("rank", ""), options).pool()
    for r in rank:
        m = r.message
        assert isinstance(m, rank_pb2.RankRequest)
        n = len(m.candidate_ids)
        assert n == min(30, len(ids)) and len(set(m.candidate_ids)) == n
        assert len(m.candidate_vectors) == 4 * bundle.dim * n
        assert m.embedding_version == bundle.version
        user = np.frombuffer(m.user_vector, dtype="<f4")
        assert np.linalg.norm(user) == pytest.approx(1.0, abs=1e-3)
        assert (m.diversity_lambda > 0) == (r.kind == "diverse")

    rec = Generator("recommend", data, parse_mix("recommend", ""), options).pool()
    kinds = [r.kind for r in rec]
    assert kinds.count("user") > kinds.count("text")  # default mix: user 0.6, text 0.2
    for r in rec:
        m = r.message
        assert isinstance(m, gateway_pb2.RecommendRequest)
        if r.kind == "user":
            assert m.user_id in users
        elif r.kind == "cold":
            assert m.user_id not in users and not m.history_item_ids and not m.query_text
        elif r.kind == "history":
            assert m.history_item_ids and not m.user_id
        else:
            assert m.query_text and not m.user_id
