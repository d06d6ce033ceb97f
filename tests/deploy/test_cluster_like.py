"""The rendered manifests, run as local processes: does that configuration start a system?

For each Deployment/StatefulSet of an overlay (one pod each), this does what the kubelet
would: runs the initContainer (``python -m recstack.publish fetch`` with ``$(VAR)``
expansion from its ConfigMap), then the main container with the env from its ConfigMaps
and its args, polls the startup/readiness probes (grpc.health.v1 Check on the probe's
service), then calls Recommend through the gateway and finally SIGTERMs every process and
expects exit status 0 within terminationGracePeriodSeconds.

Only what must differ on one machine is substituted, each in one place below:
* ports: every manifest port (gRPC, metrics) of every pod -> a free local port;
* paths: every volume mountPath -> a per-pod directory (the bundles PVC -> one shared
  "published" directory that the tiny test bundle is published into with
  ``recstack.publish publish``);
* Service DNS names in targets (``dns:///recstack-rank:50052``) -> 127.0.0.1 and the port
  of the pod that Service selects;
* RECSTACK_BUNDLE_VERSION -> the test bundle's version (the manifests name a release).
Everything else (hosts 0.0.0.0, thread counts, shard index/count, grace...) is as rendered.
Before starting anything, every RECSTACK_* key must be a flag of the real CLI, so a flag the
manifests need but the code lacks fails here instead of being silently ignored.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recstack.bundle import Bundle
from recstack.procs import free_port
from recstack.publish import publish
from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from tests.deploy import k8s
from tests.deploy.k8s import Obj

pytestmark = pytest.mark.process

READY_TIMEOUT_S = 240
PUBLISHED_CLAIM = "recstack-bundles"


@dataclass
class Pod:
    """One replica of a workload, with its local substitutions."""

    workload: Obj
    root: Path
    ports: dict[int, int] = field(default_factory=dict)  # manifest port -> local port
    mounts: dict[str, Path] = field(default_factory=dict)  # mountPath -> local dir
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def name(self) -> str:
        return str(self.workload["metadata"]["name"])

    @property
    def container(self) -> Obj:
        (c,) = k8s.pod_spec(self.workload)["containers"]
        return c


def local_paths(pod: Pod, container: Obj, published: Path) -> None:
    volumes = {v["name"]: v for v in k8s.pod_spec(pod.workload).get("volumes", [])}
    for m in container.get("volumeMounts", []):
        vol = volumes.get(m["name"], {})
        claim = vol.get("persistentVolumeClaim", {}).get("claimName")
        if claim == PUBLISHED_CLAIM:
            pod.mounts[m["mountPath"]] = published
        else:  # emptyDir or the StatefulSet's own volumeClaimTemplate: per pod
            path = pod.root / m["name"]
            path.mkdir(parents=True, exist_ok=True)
            pod.mounts[m["mountPath"]] = path


def substitute_paths(value: str, mounts: dict[str, Path]) -> str:
    """Replace mount paths that start a path in ``value``, in one pass (no re-substitution)."""
    if not mounts:
        return value
    alternatives = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
    pattern = rf"(?<![A-Za-z0-9_.-])({alternatives})(?=/|$|,)"
    return re.sub(pattern, lambda m: str(mounts[m.group(1)]), value)


def substitute_targets(value: str, service_ports: dict[tuple[str, int], int]) -> str:
    """``[dns:///]svc[.ns.svc...]:port`` (comma-separated) -> the local pod's address."""

    def one(target: str) -> str:
        m = re.fullmatch(r"(dns:///)?([a-z0-9-]+)(\.[a-z0-9.-]+)?:(\d+)", target)
        if not m or (m.group(2), int(m.group(4))) not in service_ports:
            return target
        return f"{m.group(1) or ''}127.0.0.1:{service_ports[(m.group(2), int(m.group(4)))]}"

    return ",".join(one(t) for t in value.split(","))


def local_env(
    container: Obj,
    objs: list[Obj],
    pod: Pod,
    service_ports: dict[tuple[str, int], int],
    version: str,
) -> dict[str, str]:
    env = {}
    for key, value in k8s.container_env(container, objs).items():
        assert value is not None, f"{pod.name}: {key} comes from a secret: not runnable here"
        if key == "RECSTACK_BUNDLE_VERSION":
            value = version
        elif key in ("RECSTACK_PORT", "RECSTACK_METRICS_PORT"):
            value = str(pod.ports[int(value)])
        value = substitute_targets(substitute_paths(value, pod.mounts), service_ports)
        env[key] = value
    return env


def local_command(container: Obj, env: dict[str, str], pod: Pod) -> list[str]:
    """command + args with literal mount paths localised, then ``$(VAR)`` from ``env``
    (whose values are already local: substituting after expansion would apply twice)."""
    local = {
        **container,
        "command": [substitute_paths(a, pod.mounts) for a in container.get("command", [])],
        "args": [substitute_paths(a, pod.mounts) for a in container.get("args", [])],
    }
    return k8s.command_line(local, {**env})


def executable(argv: list[str]) -> list[str]:
    """``python`` -> this interpreter; a console script -> the one installed beside it."""
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    script = shutil.which(argv[0], path=str(Path(sys.executable).parent))
    assert script, f"console script {argv[0]} is not installed"
    return [script, *argv[1:]]


def run_env(values: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECSTACK_")}
    return {**base, **values}


def check_flags_exist(objs: list[Obj]) -> None:
    """Fail (not skip) when a manifest sets a RECSTACK_* key or flag the real CLI lacks."""
    for obj in k8s.workloads(objs):
        for c in k8s.pod_spec(obj)["containers"]:
            role = k8s.role_of(c)
            assert role is not None, c.get("command")
            k8s.effective_options(role, c, objs)


def health(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
        return status


def wait_probe(pod: Pod, probe: str, deadline: float) -> None:
    spec = pod.container[probe]["grpc"]
    port = pod.ports[spec["port"]]
    while time.monotonic() < deadline:
        assert pod.proc is not None
        if pod.proc.poll() is not None:
            raise AssertionError(f"{pod.name} exited {pod.proc.returncode}:\n{tail(pod)}")
        try:
            if health(port, spec.get("service", "")) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{pod.name}: {probe} never passed\n{tail(pod)}")


def tail(pod: Pod) -> str:
    return pod.log.read_text()[-4000:] if pod.log and pod.log.exists() else ""


@pytest.fixture(scope="module")
def published(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny bundle, published the way the training Job's publish step does it."""
    bundle = Bundle.open(bundle_dir, verify="none")
    dest = tmp_path_factory.mktemp("published")
    publish(bundle.root.parent, dest, bundle.version)
    return dest, bundle.version


@contextlib.contextmanager
def start_overlay(
    objs: list[Obj], published: Path, version: str, root: Path
) -> Iterator[list[Pod]]:
    # Order as the gateway needs them last (all start concurrently, like a cluster would).
    pods = [Pod(o, root / o["metadata"]["name"]) for o in k8s.workloads(objs)]
    pods.sort(key=lambda p: p.name == "recstack-gateway")
    for pod in pods:
        for c in k8s.all_containers(pod.workload):
            for p in c.get("ports", []):
                pod.ports.setdefault(p["containerPort"], free_port())
    # Service -> the pod it selects, for the gateway's targets.
    service_ports: dict[tuple[str, int], int] = {}
    for svc in k8s.by_kind(objs, "Service"):
        for pod in pods:
            if k8s.selects(svc["spec"]["selector"], k8s.pod_labels(pod.workload)):
                for sp in svc["spec"]["ports"]:
                    named = {p["name"]: p["containerPort"] for p in pod.container["ports"]}
                    target = sp["targetPort"]
                    manifest_port = named[target] if isinstance(target, str) else target
                    service_ports[(svc["metadata"]["name"], sp["port"])] = pod.ports[manifest_port]
    try:
        for pod in pods:
            for init in k8s.pod_spec(pod.workload).get("initContainers", []):
                local_paths(pod, init, published)
                env = local_env(init, objs, pod, service_ports, version)
                argv = executable(local_command(init, env, pod))
                done = subprocess.run(argv, env=run_env(env), capture_output=True, timeout=120)
                assert done.returncode == 0, f"{pod.name}/{init['name']}: {done.stderr!r}"
            pod.mounts.clear()
            local_paths(pod, pod.container, published)
            env = local_env(pod.container, objs, pod, service_ports, version)
            argv = executable(local_command(pod.container, env, pod))
            pod.log = pod.root / "log.txt"
            with pod.log.open("wb") as out:
                pod.proc = subprocess.Popen(argv, env=run_env(env), stdout=out, stderr=out)
        yield pods
    finally:
        for pod in pods:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait()


def exercise(objs: list[Obj], published: tuple[Path, str], root: Path, bundle_dir: Path) -> None:
    check_flags_exist(objs)
    path, version = published
    with start_overlay(objs, path, version, root) as pods:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for pod in pods:
            wait_probe(pod, "startupProbe", deadline)
            wait_probe(pod, "readinessProbe", deadline)
            wait_probe(pod, "livenessProbe", deadline)
        gateway = next(p for p in pods if p.name == "recstack-gateway")
        port = gateway.ports[gateway.container["readinessProbe"]["grpc"]["port"]]
        bundle = Bundle.open(bundle_dir, verify="none")
        catalog = {item.id for item in bundle.iter_catalog()}
        user, _history = next(iter(bundle.iter_user_histories()))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gateway_pb2_grpc.RecommendServiceStub(channel)
            for request in (
                gateway_pb2.RecommendRequest(user_id=user, k=5),
                gateway_pb2.RecommendRequest(query_text="a new user's query", k=5),
            ):
                resp = stub.Recommend(request, timeout=30)
                ids = [item.id for item in resp.items]
                assert len(ids) == 5 and len(set(ids)) == 5, ids
                assert set(ids) <= catalog
                assert resp.bundle_version == version
        # Prometheus endpoints answer on the manifests' metrics port (mapped locally).
        for pod in pods:
            named = {p["name"]: p["containerPort"] for p in pod.container["ports"]}
            metrics_port = pod.ports[named["metrics"]]
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                assert r.status == 200
        for pod in pods:
            assert pod.proc is not None
            pod.proc.send_signal(signal.SIGTERM)
        for pod in pods:
            assert pod.proc is not None
            grace = k8s.pod_spec(pod.workload)["terminationGracePeriodSeconds"]
            rc = pod.proc.wait(timeout=grace)
            assert rc == 0, f"{pod.name} exited {rc} on SIGTERM:\n{tail(pod)}"


def test_cpu_overlay_runs_as_configured(
    published: tuple[Path, str], tmp_path: Path, bundle_dir: Path
) -> None:
    exercise(k8s.render("overlays/cpu"), published, tmp_path, bundle_dir)


def test_sharded_overlay_runs_as_configured(
    published: tuple[Path, str], tmp_path: Path, bundle_dir: Path
) -> None:
    objs = k8s.render("overlays/sharded")
    assert len(k8s.by_kind(objs, "StatefulSet")) == 4
    exercise(objs, published, tmp_path, bundle_dir)


def test_substitutions_touch_only_what_they_must() -> None:
    mounts = {"/bundles": Path("/x/b"), "/var/lib/recstack": Path("/x/s")}
    assert (
        substitute_paths("sqlite:////var/lib/recstack/gw/e.db", mounts) == "sqlite:////x/s/gw/e.db"
    )
    assert substitute_paths("/bundlesX", mounts) == "/bundlesX"
    # a local path that itself starts with a mount path is not substituted again
    assert substitute_paths("/tmp/a", {"/tmp": Path("/tmp/pod/tmp")}) == "/tmp/pod/tmp/a"
    ports = {("recstack-rank", 50052): 4000, ("recstack-recall-shard-1", 50051): 4001}
    assert (
        substitute_targets("dns:///recstack-rank:50052,dns:///recstack-recall-shard-1:50051", ports)
        == "dns:///127.0.0.1:4000,dns:///127.0.0.1:4001"
    )
    assert substitute_targets("dns:///elsewhere:50052", ports) == "dns:///elsewhere:50052"
