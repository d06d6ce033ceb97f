"""--processes N: stateless services run N workers on one port (SO_REUSEPORT)."""

import signal
import subprocess
import sys
import time

import grpc
import pytest

from recstack.tools.procs import free_port
from recstack.v1 import rank_pb2, rank_pb2_grpc

pytestmark = pytest.mark.process


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_rank_workers_share_a_port_and_drain_together(bundle_dir, tmp_path):
    port = free_port()
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rank_service",
            "--bundle",
            str(bundle_dir),
            "--port",
            str(port),
            "--processes",
            "2",
            "--port-file",
            str(port_file),
            "--grace-seconds",
            "5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 120
        served = 0
        while time.monotonic() < end and served < 20:
            # New channels spread over the workers; every one must answer.
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            try:
                rank_pb2_grpc.RankServiceStub(channel).GetInfo(
                    rank_pb2.RankServiceGetInfoRequest(), timeout=2
                )
                served += 1
            except grpc.RpcError:
                time.sleep(0.2)  # workers still loading
            finally:
                channel.close()
        assert served == 20, f"only {served} of 20 GetInfo calls answered within 120 s"
        # The supervisor announces the port once its own probe connects (it polls every
        # 0.1 s), which can come just after the workers have answered us.
        while not port_file.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert int(port_file.read_text()) == port
        assert len(children(proc.pid)) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert '"workers stopped"' in proc.stderr.read()


def test_stateful_recall_refuses_processes(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recall_service",
            "--bundle",
            str(tmp_path),
            "--port",
            "0",
            "--processes",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "stateless services" in proc.stderr


def test_processes_need_an_explicit_port(bundle_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rank_service",
            "--bundle",
            str(bundle_dir),
            "--port",
            "0",
            "--processes",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "explicit --port" in proc.stderr
