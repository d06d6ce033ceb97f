"""Start service command lines as subprocesses and wait for them (process-level tests)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class Proc:
    """A service process on a free port, announced through --port-file."""

    def __init__(self, module: str, *args: str, workdir: Path, name: str) -> None:
        self.port_file = workdir / f"{name}.port"
        self.port_file.unlink(missing_ok=True)
        self.log = (workdir / f"{name}.log").open("a")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                "--port",
                "0",
                "--port-file",
                str(self.port_file),
                *args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.port = 0

    def wait_serving(self, service: str, timeout: float = 120) -> Proc:
        end = time.monotonic() + timeout
        while not self.port_file.exists():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}"
            assert time.monotonic() < end, "no port file"
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        stub = health_pb2_grpc.HealthStub(self.channel())
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}"
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return self
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{service} not SERVING within {timeout}s")

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def terminate(self, timeout: float = 30) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout)
        self.log.close()
        return code
