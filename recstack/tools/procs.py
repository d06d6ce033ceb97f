"""Run a service's command line as a child process on a free loopback port.

The process is started exactly as an operator would start it, with ``--port 0`` and
``--port-file``; ``wait_serving`` polls ``grpc.health.v1`` until the service reports
SERVING (it fails at once, with the log tail, if the process exits). Used by the demo and
by the process-level tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from recstack.client import wait_serving
from recstack.runtime import contracts


class ServiceProcess:
    """``python -m <module> --port 0 --port-file F <args>``, logging to ``<name>.log``.

    ``source``: a source tree (e.g. a git worktree of another revision) whose modules the
    child runs instead of this checkout's, for code A/B benchmarks: it becomes the child's
    working directory and leads its ``PYTHONPATH`` (paths in ``args`` must be absolute)."""

    def __init__(
        self, module: str, *args: str, workdir: Path, name: str, source: Path | None = None
    ) -> None:
        self.name = name
        env = None
        if source is not None:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(source), env.get("PYTHONPATH", "")) if p
            )
        self.port_file = workdir / f"{name}.port"
        self.port_file.unlink(missing_ok=True)
        self.log_path = workdir / f"{name}.log"
        self.log = self.log_path.open("a")
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
            cwd=source,
            env=env,
        )
        self.port = 0

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}; log tail:\n"
                + self.log_path.read_text()[-3000:]
            )

    def wait_port(self, timeout: float = 120) -> int:
        end = time.monotonic() + timeout
        while not self.port_file.exists():
            self.check_alive()
            if time.monotonic() > end:
                raise TimeoutError(f"{self.name} did not bind a port within {timeout:.0f}s")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        return self.port

    def wait_serving(self, service: str = "", timeout: float = 120) -> ServiceProcess:
        end = time.monotonic() + timeout
        self.wait_port(timeout)
        left = max(0.0, end - time.monotonic())
        wait_serving(self.channel(), service, left, alive=self.check_alive, what=self.name)
        return self

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the exit status (drain happens in the child)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.log.close()
        return code

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM; SIGKILL if it has not exited within ``timeout``. Returns the status."""
        try:
            return self.terminate(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


STACK_TIMEOUT_S = 300.0


def free_port() -> int:
    """A loopback port free right now (for services that need an explicit one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


COLOCATED = "colocated"


class Stack:
    """recall, rank and gateway as processes on loopback, wired to each other.

    ``extra`` adds command-line flags per service name (``recall``, ``rank``, ``gateway``),
    e.g. ``{"rank": ["--no-batching"]}``; the name ``colocated`` instead runs the three
    stages as one process (``gateway.colocated``, with its flags), which is then both
    ``gateway`` and the only service. ``start`` returns once the gateway is SERVING
    (which implies both downstream services are); ``stop`` sends SIGTERM to each, gateway
    first, and returns their exit statuses. ``source``: as for :class:`ServiceProcess`.
    """

    def __init__(
        self,
        bundle: str,
        workdir: Path,
        extra: dict[str, list[str]] | None = None,
        source: Path | None = None,
    ) -> None:
        self.bundle = bundle if source is None else str(Path(bundle).resolve())
        self.workdir = workdir
        self.extra = extra or {}
        self.source = source
        self.services: list[ServiceProcess] = []

    def _start(self, module: str, name: str, *args: str) -> ServiceProcess:
        extra = list(self.extra.get(name, []))
        if "--processes" in extra:
            # Workers share one explicit port (SO_REUSEPORT); port 0 cannot be shared.
            extra += ["--port", str(free_port())]
        proc = ServiceProcess(
            module,
            "--bundle",
            self.bundle,
            *args,
            *extra,
            workdir=self.workdir,
            name=name,
            source=self.source,
        )
        self.services.append(proc)
        return proc

    def start(self, timeout: float = STACK_TIMEOUT_S) -> Stack:
        if COLOCATED in self.extra:
            try:
                self._start("gateway.colocated", COLOCATED).wait_serving(
                    contracts.GATEWAY_SERVICE, timeout
                )
            except BaseException:
                self.stop()
                raise
            return self
        try:
            recall = self._start("recall_service", "recall")
            rank = self._start("rank_service", "rank")
            recall.wait_port(timeout)
            rank.wait_port(timeout)
            gateway = self._start(
                "gateway",
                "gateway",
                "--recall-address",
                f"127.0.0.1:{recall.port}",
                "--rank-address",
                f"127.0.0.1:{rank.port}",
            )
            gateway.wait_serving(contracts.GATEWAY_SERVICE, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def by_name(self, name: str) -> ServiceProcess:
        return next(s for s in self.services if s.name == name)

    @property
    def gateway(self) -> ServiceProcess:
        return self.by_name(COLOCATED if COLOCATED in self.extra else "gateway")

    def stop(self) -> dict[str, int]:
        return {s.name: s.stop() for s in reversed(self.services)}
