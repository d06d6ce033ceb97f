"""Service command lines as real processes: port file, health, SIGTERM drain, bad bundles."""

import json
import signal
import subprocess
import sys
import time

import grpc
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recstack.v1 import gateway_pb2, gateway_pb2_grpc, rank_pb2, rank_pb2_grpc

pytestmark = pytest.mark.process


def start(module, *args):
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_port(port_file, proc, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if port_file.exists():
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError("no port file")


def wait_status(stub, service, want, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if stub.Check(health_pb2.HealthCheckRequest(service=service)).status == want:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{service} never reached {want}")


def serving_channel(proc, port_file, service):
    """A channel to the process once its port file exists and ``service`` is SERVING."""
    channel = grpc.insecure_channel(f"127.0.0.1:{wait_port(port_file, proc)}")
    wait_status(
        health_pb2_grpc.HealthStub(channel), service, health_pb2.HealthCheckResponse.SERVING
    )
    return channel


def assert_drained(proc):
    """The exited process logged its drain, and "stopped" last."""
    logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in logs]
    assert "draining" in messages and messages[-1] == "stopped"


def test_rank_cli_serves_then_drains_on_sigterm(bundle_dir, tmp_path):
    port_file = tmp_path / "port"
    proc = start(
        "rank_service",
        "--bundle",
        str(bundle_dir),
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--grace-seconds",
        "5",
        "--device",
        "cpu",
    )
    try:
        channel = serving_channel(proc, port_file, "recstack.v1.RankService")
        info = rank_pb2_grpc.RankServiceStub(channel).GetInfo(rank_pb2.RankServiceGetInfoRequest())
        assert info.execution_provider == "CPUExecutionProvider"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
    assert_drained(proc)


def test_bad_bundle_exits_nonzero_with_a_clear_log(tmp_path):
    proc = start("recall_service", "--bundle", str(tmp_path), "--port", "0")
    assert proc.wait(timeout=60) == 3
    assert "neither a bundle" in proc.stderr.read()


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="a GPU is present"
)
def test_cuda_without_gpu_is_a_startup_error_unless_fallback(bundle_dir, tmp_path):
    proc = start(
        "rank_service",
        "--bundle",
        str(bundle_dir),
        "--port",
        "0",
        "--device",
        "cuda",
        "--no-allow-cpu-fallback",
    )
    assert proc.wait(timeout=60) == 3
    assert "onnxruntime-gpu" in proc.stderr.read()


def test_colocated_cli_recommends_then_drains_on_sigterm(bundle_dir, tmp_path):
    """``python -m gateway.colocated``: prefixed flags parse, one port serves Recommend, and
    SIGTERM drains and closes every stage (exit 0)."""
    port_file = tmp_path / "port"
    proc = start(
        "gateway.colocated",
        "--bundle",
        str(bundle_dir),
        "--port-file",
        str(port_file),
        "--state-dir",
        str(tmp_path / "gateway"),
        "--recall-state-dir",
        str(tmp_path / "recall"),
        "--recall-bundle-poll-s",
        "0",
        "--rank-bundle-poll-s",
        "0",
        "--no-rank-batching",
        "--grace-seconds",
        "5",
    )
    try:
        channel = serving_channel(proc, port_file, "recstack.v1.RecommendService")
        resp = gateway_pb2_grpc.RecommendServiceStub(channel).Recommend(
            gateway_pb2.RecommendRequest(query_text="a space adventure", k=3), timeout=30
        )
        assert len(resp.items) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
    assert_drained(proc)
