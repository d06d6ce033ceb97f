"""Multi-process serving: N copies of a stateless service sharing one port (SO_REUSEPORT).

Python's GIL limits one process to roughly one core of request handling (protobuf, our
glue); the kernel can instead spread connections over N processes that each bind the same
port with SO_REUSEPORT. The supervisor starts the workers with the same command line (plus
``--processes 1 --reuse-port``), forwards SIGTERM/SIGINT to them so each drains on its own,
and exits with the worst worker status. If a worker dies unexpectedly the others are
stopped too: a half-capacity server should be restarted by its orchestrator, not limp on.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recstack.core.config import ServerOptions

log = logging.getLogger(__name__)


def worker_argv(module: str, argv: Sequence[str], index: int, options: ServerOptions) -> list[str]:
    """The command line of worker ``index``: later flags override earlier ones."""
    metrics_port = options.metrics_port + index if options.metrics_port > 0 else 0
    return [
        sys.executable,
        "-m",
        module,
        *argv,
        "--processes",
        "1",
        "--reuse-port",
        "--port-file",
        "",
        "--metrics-port",
        str(metrics_port),
        "--health-port",
        str(options.health_port + index if options.health_port > 0 else options.health_port),
    ]


def _wait_listening(
    options: ServerOptions, workers: list[subprocess.Popen[bytes]], timeout: float = 120.0
) -> bool:
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::", "") else options.host
    end = time.monotonic() + timeout
    while time.monotonic() < end and all(w.poll() is None for w in workers):
        try:
            socket.create_connection((host, options.port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def supervise(module: str, argv: Sequence[str], options: ServerOptions) -> int:
    """Run ``options.processes`` workers until a signal; return the exit status."""
    if options.port == 0:
        log.error("--processes > 1 needs an explicit --port (workers must share one port)")
        return 2
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = [
        subprocess.Popen(worker_argv(module, argv, i, options)) for i in range(options.processes)
    ]
    log.info(
        "workers started",
        extra={"processes": len(workers), "port": options.port, "pids": [w.pid for w in workers]},
    )
    if options.port_file and _wait_listening(options, workers):
        # Like a single server, announce the port only once something listens on it.
        Path(options.port_file).write_text(f"{options.port}\n")
    while not stopping and all(w.poll() is None for w in workers):
        time.sleep(0.2)
    if not stopping:
        log.error(
            "a worker exited unexpectedly; stopping the others",
            extra={"codes": [w.poll() for w in workers]},
        )
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + options.grace_seconds + 10
    codes = []
    for w in workers:
        try:
            codes.append(w.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            w.kill()
            codes.append(w.wait())
    log.info("workers stopped", extra={"codes": codes})
    return 0 if stopping and all(c == 0 for c in codes) else max(1, *codes)
