"""podman from the tests: the images scripts/images.sh builds, and containers run like pods.

Every container runs as Kubernetes runs the pods (deploy/k8s): UID/GID 10001, read-only root
filesystem, all capabilities dropped, no privilege escalation, /tmp a tmpfs, the bundle
mounted read-only. ``--network host`` with free ports stands in for the pod network; the
services bind 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
PODMAN = ["podman", "--runtime", "runc"]
UID = 10001
IMAGES = {
    "serve": "ghcr.io/recstack/recstack",
    "train": "ghcr.io/recstack/recstack-train",
    "gpu": "ghcr.io/recstack/recstack-gpu",
}
SERVING = health_pb2.HealthCheckResponse.SERVING
# One label on everything the tests create, so teardown removes exactly that.
SESSION_LABEL = f"recstack.test={uuid.uuid4().hex[:12]}"


def tag() -> str:
    """The tag the tests build and run: $RECSTACK_IMAGE_TAG (scripts/images.sh smoke sets it)
    or one per checkout, so test runs in two checkouts never run each other's images."""
    return os.environ.get("RECSTACK_IMAGE_TAG") or (
        "test-" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]
    )


def ref(name: str) -> str:
    return f"{IMAGES[name]}:{tag()}"


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def run_in(image: str, *argv: str) -> str:
    """Run one command in ``image`` (as the pods run it) and return its stdout."""
    return podman(
        "run", "--rm", "--label", SESSION_LABEL, *hardening(), image, *argv, timeout=300
    ).stdout


def hardening() -> list[str]:
    return [
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs",
        "/tmp:rw,size=256m,mode=1777",
        "--user",
        f"{UID}:{UID}",
        "--cap-drop=ALL",
        "--security-opt",
        "no-new-privileges",
    ]


def image_size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


@dataclass
class Container:
    """One service container, detached, on the host network."""

    name: str
    image: str
    argv: list[str]
    volumes: list[str] = field(default_factory=list)  # podman -v specs
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Container:
        flags = [f"--volume={v}" for v in self.volumes]
        flags += [f"--env={k}={v}" for k, v in self.env.items()]
        podman(
            "run", "--detach", "--name", self.name, "--label", SESSION_LABEL,
            "--network", "host", *hardening(), *flags, self.image, *self.argv,
        )  # fmt: skip
        return self

    def status(self) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_serving(self, target: str, service: str, timeout: float = 180) -> None:
        """Poll grpc.health.v1 at ``target`` (host:port) until ``service`` is SERVING; fail
        at once, with the log, if the container exits first."""
        end = time.monotonic() + timeout
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)
            while time.monotonic() < end:
                try:
                    if stub.Check(request, timeout=2).status == SERVING:
                        return
                except grpc.RpcError:
                    pass
                status = self.status()
                if status not in ("running", "created", "initialized"):
                    raise AssertionError(f"{self.name} is {status}:\n{self.logs()[-3000:]}")
                time.sleep(0.2)
        raise AssertionError(
            f"{self.name}: {service} not SERVING at {target} in {timeout:.0f}s:\n"
            + self.logs()[-3000:]
        )

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (what the kubelet sends) and the container's exit status."""
        podman("kill", "--signal", "TERM", self.name)
        return int(podman("wait", self.name, timeout=timeout).stdout.strip())

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


def remove_session_objects() -> None:
    """Remove every container and pod this test session labelled."""
    ids = podman("ps", "--all", "--quiet", "--filter", f"label={SESSION_LABEL}", check=False)
    for cid in ids.stdout.split():
        podman("rm", "--force", "--time", "0", cid, check=False)
