"""The rendered manifests, run as local processes: does that configuration start a system?

For each Deployment/StatefulSet of an overlay (as many pods as it declares, or its
HorizontalPodAutoscaler's minReplicas; one each where ``replicas=1`` is asked), this does
what the kubelet would: runs the initContainer (``python -m recstack.tools.publish fetch``
with ``$(VAR)`` expansion from its ConfigMap), then the main container with the env from its
ConfigMaps and its args, polls the startup/readiness probes (grpc.health.v1 Check on the probe's
service), then calls Recommend through the gateway and finally SIGTERMs every process and
expects exit status 0 within terminationGracePeriodSeconds.

Only what must differ on one machine is substituted, each in one place below:
* ports: every manifest port (gRPC, metrics) of every pod -> a free local port;
* paths: every volume mountPath -> a per-pod directory (the bundles PVC -> one shared
  "published" directory that the tiny test bundle is published into with
  ``recstack.tools.publish publish``);
* Service DNS names in targets (``dns:///recstack-rank:50052``) -> 127.0.0.1 and the port
  of the pod that Service selects (``ipv4:127.0.0.1:A,127.0.0.1:B`` when it selects
  several: the gateway balances over them as over a headless Service's pods);
* the in-cluster PostgreSQL -> a real local PostgreSQL server (``tests/postgres.py``): its
  Service in a DSN becomes that server's address, the Secret's password a dummy (trust
  authentication);
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

from recstack.core.bundle import Bundle
from recstack.tools.procs import free_port
from recstack.tools.publish import publish
from recstack.v1 import gateway_pb2, gateway_pb2_grpc, recall_pb2, recall_pb2_grpc
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
    replica: int = 0
    ports: dict[int, int] = field(default_factory=dict)  # manifest port -> local port
    mounts: dict[str, Path] = field(default_factory=dict)  # mountPath -> local dir
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def name(self) -> str:
        return str(self.workload["metadata"]["name"])

    @property
    def pod_name(self) -> str:
        return f"{self.name}-{self.replica}"

    @property
    def container(self) -> Obj:
        (c,) = k8s.service_containers(self.workload)
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


ServicePorts = dict[tuple[str, int], list[int]]
SECRET_PASSWORD = ("recstack-postgres", "password")


def substitute_targets(value: str, service_ports: ServicePorts) -> str:
    """``[dns:///]svc[.ns.svc...]:port`` (comma-separated) -> the local pods' addresses; a
    PostgreSQL DSN's ``@svc:port/`` -> the local server's."""
    dsn = re.fullmatch(r"(postgresql://[^@/]*@)([a-z0-9-]+):(\d+)(/.*)", value)
    if dsn:
        key = (dsn.group(2), int(dsn.group(3)))
        if key in service_ports:
            (port,) = service_ports[key]
            return f"{dsn.group(1)}127.0.0.1:{port}{dsn.group(4)}"
        return value

    def one(target: str) -> str:
        m = re.fullmatch(r"(dns:///)?([a-z0-9-]+)(\.[a-z0-9.-]+)?:(\d+)", target)
        if not m or (m.group(2), int(m.group(4))) not in service_ports:
            return target
        ports = service_ports[(m.group(2), int(m.group(4)))]
        if len(ports) == 1:
            return f"{m.group(1) or ''}127.0.0.1:{ports[0]}"
        return "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)

    return ",".join(one(t) for t in value.split(","))


def local_env(
    container: Obj,
    objs: list[Obj],
    pod: Pod,
    service_ports: ServicePorts,
    version: str,
) -> dict[str, str]:
    env = {}
    secrets = {SECRET_PASSWORD: "unused: the test server trusts local connections"}
    for key, value in k8s.container_env(container, objs, secrets).items():
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
        for c in k8s.service_containers(obj):
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


def replicas(workload: Obj, objs: list[Obj]) -> int:
    """Pods the cluster would run: ``spec.replicas``, else its HPA's minReplicas, else 1."""
    if "replicas" in workload["spec"]:
        return int(workload["spec"]["replicas"])
    for hpa in k8s.by_kind(objs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]:
            return int(hpa["spec"].get("minReplicas", 1))
    return 1


@pytest.fixture(scope="module")
def database() -> Iterator[int]:
    """A real PostgreSQL standing in for the in-cluster one (database ``recstack``): its port."""
    import psycopg

    from tests.postgres import postgres_cluster

    with postgres_cluster() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE recstack")
        yield int(dsn.rsplit(":", 1)[1].split("/")[0])


@contextlib.contextmanager
def start_overlay(
    objs: list[Obj],
    published: Path,
    version: str,
    root: Path,
    database_port: int,
    max_replicas: int = 2,
) -> Iterator[list[Pod]]:
    # Order as the gateway needs them last (all start concurrently, like a cluster would).
    pods = [
        Pod(o, root / f"{o['metadata']['name']}-{i}", i)
        for o in k8s.workloads(objs)
        for i in range(min(replicas(o, objs), max_replicas))
    ]
    pods.sort(key=lambda p: p.name == "recstack-gateway")
    for pod in pods:
        for c in k8s.all_containers(pod.workload):
            for p in c.get("ports", []):
                pod.ports.setdefault(p["containerPort"], free_port())
    # Service -> the pods it selects (every ready pod, as a headless Service resolves).
    service_ports: ServicePorts = {}
    for svc in k8s.by_kind(objs, "Service"):
        for db in k8s.databases(objs):
            if k8s.selects(svc["spec"]["selector"], k8s.pod_labels(db)):
                for sp in svc["spec"]["ports"]:
                    service_ports[(svc["metadata"]["name"], sp["port"])] = [database_port]
        for pod in pods:
            if k8s.selects(svc["spec"]["selector"], k8s.pod_labels(pod.workload)):
                for sp in svc["spec"]["ports"]:
                    named = {p["name"]: p["containerPort"] for p in pod.container["ports"]}
                    target = sp["targetPort"]
                    manifest_port = named[target] if isinstance(target, str) else target
                    key = (svc["metadata"]["name"], sp["port"])
                    service_ports.setdefault(key, []).append(pod.ports[manifest_port])
    try:
        for pod in pods:
            for init in k8s.pod_spec(pod.workload).get("initContainers", []):
                local_paths(pod, init, published)
                env = local_env(init, objs, pod, service_ports, version)
                argv = executable(local_command(init, env, pod))
                done = subprocess.run(argv, env=run_env(env), capture_output=True, timeout=120)
                assert done.returncode == 0, f"{pod.pod_name}/{init['name']}: {done.stderr!r}"
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


def grpc_port(pod: Pod) -> int:
    return pod.ports[pod.container["readinessProbe"]["grpc"]["port"]]


def exercise(
    objs: list[Obj],
    published: tuple[Path, str],
    root: Path,
    bundle_dir: Path,
    database_port: int,
    max_replicas: int = 2,
) -> list[Pod]:
    """Start the overlay, check probes, Recommend and /metrics, then the replicas' shared
    state (when two gateways run), then SIGTERM every pod; returns the pods."""
    check_flags_exist(objs)
    path, version = published
    with start_overlay(objs, path, version, root, database_port, max_replicas) as pods:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for pod in pods:
            wait_probe(pod, "startupProbe", deadline)
            wait_probe(pod, "readinessProbe", deadline)
            wait_probe(pod, "livenessProbe", deadline)
        gateways = [p for p in pods if p.name == "recstack-gateway"]
        bundle = Bundle.open(bundle_dir, verify="none")
        catalog = {item.id for item in bundle.iter_catalog()}
        user, _history = next(iter(bundle.iter_user_histories()))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port(gateways[0])}") as channel:
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
        if len(gateways) >= 2:
            events_are_shared(gateways[0], gateways[1])
            items_are_shared([p for p in pods if p.name.startswith("recstack-recall")])
        for pod in pods:
            assert pod.proc is not None
            if pod.proc.poll() is None:
                pod.proc.send_signal(signal.SIGTERM)
        for pod in pods:
            assert pod.proc is not None
            grace = k8s.pod_spec(pod.workload)["terminationGracePeriodSeconds"]
            rc = pod.proc.wait(timeout=grace)
            killed = rc == -signal.SIGKILL and pod is gateways[0] and len(gateways) >= 2
            assert rc == 0 or killed, f"{pod.pod_name} exited {rc} on SIGTERM:\n{tail(pod)}"
    return pods


def events_are_shared(a: Pod, b: Pod) -> None:
    """An event recorded through gateway A changes the next Recommend through gateway B;
    an event acknowledged by A just before A is SIGKILLed is not lost."""
    user = "cluster-like-user"
    with (
        grpc.insecure_channel(f"127.0.0.1:{grpc_port(a)}") as ca,
        grpc.insecure_channel(f"127.0.0.1:{grpc_port(b)}") as cb,
    ):
        via_a = gateway_pb2_grpc.RecommendServiceStub(ca)
        via_b = gateway_pb2_grpc.RecommendServiceStub(cb)
        first = via_b.Recommend(
            gateway_pb2.RecommendRequest(user_id=user, query_text="a film", k=5), timeout=30
        )
        top = first.items[0].id
        via_a.RecordEvents(
            gateway_pb2.RecordEventsRequest(
                events=[gateway_pb2.Event(user_id=user, item_id=top, type="click")]
            ),
            timeout=30,
        )
        after = via_b.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=5), timeout=30)
        assert after.history_length == 1, "B does not see the event recorded through A"
        assert top not in [i.id for i in after.items], "a seen item was recommended again"
        # Acknowledged, then the replica dies without a chance to flush anything.
        second = after.items[0].id
        via_a.RecordEvents(
            gateway_pb2.RecordEventsRequest(
                events=[gateway_pb2.Event(user_id=user, item_id=second, type="like")]
            ),
            timeout=30,
        )
    assert a.proc is not None
    a.proc.kill()
    a.proc.wait()
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port(b)}") as cb:
        survived = gateway_pb2_grpc.RecommendServiceStub(cb).Recommend(
            gateway_pb2.RecommendRequest(user_id=user, k=5), timeout=30
        )
    assert survived.history_length == 2, "an acknowledged event was lost with its replica"
    assert second not in [i.id for i in survived.items]


def items_are_shared(recalls: list[Pod]) -> None:
    """An item upserted through one recall replica of a shard is served by the other."""
    if len(recalls) < 2:
        return
    first, other = recalls[0], recalls[1]
    with (
        grpc.insecure_channel(f"127.0.0.1:{grpc_port(first)}") as c1,
        grpc.insecure_channel(f"127.0.0.1:{grpc_port(other)}") as c2,
    ):
        ack = recall_pb2_grpc.RecallServiceStub(c1).Upsert(
            recall_pb2.UpsertRequest(
                items=[recall_pb2.ItemWrite(id="cluster-like-item", text="a new documentary")]
            ),
            timeout=60,
        )
        second = recall_pb2_grpc.RecallServiceStub(c2)
        # Read-your-writes on the other replica: it applies the shared log up to the ack.
        found = second.Recall(
            recall_pb2.RecallRequest(
                query_text="a new documentary", k=3, min_sequence=ack.sequence
            ),
            timeout=30,
        )
        assert "cluster-like-item" in list(found.ids)
        got = second.GetItems(recall_pb2.GetItemsRequest(ids=["cluster-like-item"]), timeout=30)
        assert [(i.text, i.written) for i in got.items] == [("a new documentary", True)]


def test_cpu_overlay_runs_as_configured(
    published: tuple[Path, str], tmp_path: Path, bundle_dir: Path, database: int
) -> None:
    """The default deployment with its replicas: two gateways and two recall replicas over
    one PostgreSQL (events and catalog shared), two rank replicas."""
    pods = exercise(k8s.render("overlays/cpu"), published, tmp_path, bundle_dir, database)
    count = {name: sum(p.name == name for p in pods) for name in {p.name for p in pods}}
    assert count == {"recstack-gateway": 2, "recstack-rank": 2, "recstack-recall-shard-0": 2}


def test_sharded_overlay_runs_as_configured(
    published: tuple[Path, str], tmp_path: Path, bundle_dir: Path, database: int
) -> None:
    """Four shards, one pod per workload (the replica checks run for the cpu overlay)."""
    objs = k8s.render("overlays/sharded")
    assert len(k8s.by_kind(objs, "StatefulSet")) == 5  # 4 recall shards + PostgreSQL
    exercise(objs, published, tmp_path, bundle_dir, database, max_replicas=1)


def test_substitutions_touch_only_what_they_must() -> None:
    mounts = {"/bundles": Path("/x/b"), "/var/lib/recstack": Path("/x/s")}
    assert (
        substitute_paths("sqlite:////var/lib/recstack/gw/e.db", mounts) == "sqlite:////x/s/gw/e.db"
    )
    assert substitute_paths("/bundlesX", mounts) == "/bundlesX"
    # a local path that itself starts with a mount path is not substituted again
    assert substitute_paths("/tmp/a", {"/tmp": Path("/tmp/pod/tmp")}) == "/tmp/pod/tmp/a"
    ports = {("recstack-rank", 50052): [4000], ("recstack-recall-shard-1", 50051): [4001]}
    assert (
        substitute_targets("dns:///recstack-rank:50052,dns:///recstack-recall-shard-1:50051", ports)
        == "dns:///127.0.0.1:4000,dns:///127.0.0.1:4001"
    )
    assert substitute_targets("dns:///elsewhere:50052", ports) == "dns:///elsewhere:50052"
