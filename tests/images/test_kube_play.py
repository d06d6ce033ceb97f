"""``podman kube play`` on the rendered cpu overlay: what of our manifests podman runs.

podman 4.3 implements part of Kubernetes; docs/deploy.md ("Images") lists what it does not,
as observed here. These tests keep what works:

* the whole rendered overlay plays (``--start=false``): one pod per Deployment, with the
  initContainer and the main container, the image, the ConfigMap environment, the
  securityContext (UID 10001, read-only root, all capabilities dropped, no privilege
  escalation) and the resource limits, as podman inspect reports them;
* the rank Deployment runs: its initContainer fetches the published bundle from the PVC's
  volume (``recstack.tools.publish fetch``), rank becomes SERVING on the pod's address and drains
  on SIGTERM with exit status 0.

Substitutions, each for a reason named where it is made: names get a per-session prefix
(podman's pods and volumes are host-global), images get the tag this session built, and for
the running pod the three gaps of podman listed in the docs (``$(VAR)`` in args, init
containers under restartPolicy Always, the release's bundle version).
"""

from __future__ import annotations

import base64
import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from recstack.tools.publish import publish
from tests.deploy import k8s
from tests.images import podman

PUBLISHED_CLAIM = "recstack-bundles"
# What the operator creates before applying (docs/deploy.md: kubectl create secret generic
# recstack-postgres --from-literal=password=...); the repo never renders it.
SECRETS = {("recstack-postgres", "password"): "kube-play-test"}


def prefixed(objs: list[k8s.Obj], prefix: str, images: dict[str, str]) -> list[k8s.Obj]:
    """Per-session names for what podman creates host-wide (pods from Deployments, volumes
    from pod volumes and PVCs), and the images this session built. A workload running an
    image that is not built here (a registry's, which cannot be pulled on this machine) is
    left out."""
    built = {podman.IMAGES[name]: ref for name, ref in images.items()}

    def repo(container: k8s.Obj) -> str:
        return str(container["image"]).split("@")[0].rsplit(":", 1)[0]

    out = []
    for obj in copy.deepcopy(objs):
        if obj["kind"] in k8s.WORKLOAD_KINDS and not all(
            repo(c) in built for c in k8s.all_containers(obj)
        ):
            continue
        out.append(obj)
        if obj["kind"] in ("Deployment", "StatefulSet", "PersistentVolumeClaim"):
            obj["metadata"]["name"] = f"{prefix}-{obj['metadata']['name']}"
        if obj["kind"] not in k8s.WORKLOAD_KINDS:
            continue
        spec = k8s.pod_spec(obj)
        for volume in spec.get("volumes", []):
            volume["name"] = f"{prefix}-{volume['name']}"
            claim = volume.get("persistentVolumeClaim")
            if claim:
                claim["claimName"] = f"{prefix}-{claim['claimName']}"
        for container in k8s.all_containers(obj):
            container["image"] = built[repo(container)]
            for mount in container.get("volumeMounts", []):
                mount["name"] = f"{prefix}-{mount['name']}"
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    ref["name"] = f"{prefix}-{ref['name']}"
    return out


def create_secrets(prefix: str) -> list[str]:
    """The Secrets the workloads reference, as podman secrets (host-wide: prefixed). podman
    4.3 reads a secretKeyRef from a secret holding a JSON map of base64 values (a Secret
    created by ``kube play`` itself is not read back that way)."""
    names = sorted({name for name, _ in SECRETS})
    for name in names:
        data = {
            key: base64.b64encode(value.encode()).decode()
            for (secret, key), value in SECRETS.items()
            if secret == name
        }
        file = Path(tempfile.mkdtemp(prefix="secret-")) / "data.json"
        file.write_text(json.dumps(data))
        podman.podman("secret", "create", f"{prefix}-{name}", str(file))
        file.unlink()
    return [f"{prefix}-{name}" for name in names]


def play(objs: list[k8s.Obj], path: Path, *flags: str) -> None:
    path.write_text(yaml.safe_dump_all(objs))
    podman.podman("kube", "play", *flags, str(path), timeout=300)


def down(path: Path, objs: list[k8s.Obj], secrets: list[str] = ()) -> None:
    podman.podman("kube", "down", str(path), check=False)
    # kube down misses pods whose play failed half-way (or ran out of disk): by name too.
    for obj in objs:
        if obj["kind"] in k8s.WORKLOAD_KINDS:
            podman.podman("pod", "rm", "--force", f"{obj['metadata']['name']}-pod-0", check=False)
    for name in secrets:
        podman.podman("secret", "rm", name, check=False)
    for obj in objs:
        if obj["kind"] in k8s.WORKLOAD_KINDS:
            for volume in k8s.pod_spec(obj).get("volumes", []):
                name = volume.get("persistentVolumeClaim", {}).get("claimName", volume["name"])
                podman.podman("volume", "rm", "--force", name, check=False)


def inspect(name: str) -> dict[str, Any]:
    return json.loads(podman.podman("inspect", name).stdout)[0]


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"t{podman.SESSION_LABEL.rsplit('=', 1)[1][:8]}-{request.node.name[-6:].lower()}"


def test_the_cpu_overlay_plays_with_its_security_context_env_and_limits(images, prefix, tmp_path):
    rendered = k8s.render("overlays/cpu")
    objs = prefixed(rendered, prefix, images)
    path = tmp_path / "cpu.yaml"
    secrets = create_secrets(prefix)
    try:
        play(objs, path, "--start=false")
        deployments = k8s.by_kind(objs, "Deployment")
        assert {d["metadata"]["name"] for d in deployments} >= {
            f"{prefix}-recstack-gateway",
            f"{prefix}-recstack-rank",
        }
        for workload in deployments:
            pod = f"{workload['metadata']['name']}-pod-0"
            spec = k8s.pod_spec(workload)
            for container in k8s.all_containers(workload):
                got = inspect(f"{pod}-{container['name']}")
                config, host = got["Config"], got["HostConfig"]
                assert config["Image"] == container["image"]
                assert config["Entrypoint"] == " ".join(container["command"]), container["name"]
                env = dict(e.split("=", 1) for e in config["Env"])
                named = {(f"{prefix}-{n}", k): v for (n, k), v in SECRETS.items()}
                for key, value in k8s.container_env(container, rendered, named).items():
                    assert env.get(key) == value, f"{pod}: {key}"
                context = container["securityContext"]
                assert config["User"] == f"{context['runAsUser']}:{context['runAsGroup']}"
                assert host["ReadonlyRootfs"] is True
                assert host["CapAdd"] in (None, []) and "CAP_NET_BIND_SERVICE" in host["CapDrop"]
                assert "no-new-privileges" in host["SecurityOpt"]
                limits = container["resources"]["limits"]
                assert host["Memory"] == k8s.quantity(limits["memory"])
                assert host["NanoCpus"] == k8s.quantity(limits["cpu"]) * 1e9
                mounts = {m["Destination"]: m["RW"] for m in got["Mounts"]}
                expected = {m["mountPath"]: not m.get("readOnly", False)
                            for m in container.get("volumeMounts", [])}  # fmt: skip
                assert mounts == expected, container["name"]
            assert {c["name"] for c in spec["initContainers"]} == {"bundle-fetch"}
    finally:
        down(path, objs, secrets)


def for_podman(objs: list[k8s.Obj], version: str) -> list[k8s.Obj]:
    """The podman gaps worked around, so the pod can run (docs/deploy.md lists them)."""
    out = copy.deepcopy(objs)
    for obj in out:
        if obj["kind"] == "ConfigMap" and "RECSTACK_BUNDLE_VERSION" in obj.get("data", {}):
            obj["data"]["RECSTACK_BUNDLE_VERSION"] = version  # the manifests name a release
    for obj in out:
        if obj["kind"] not in k8s.WORKLOAD_KINDS:
            continue
        # podman restarts init containers under restartPolicy Always, and then fails to
        # start the pod ("cannot remove container ... as it is running").
        k8s.pod_spec(obj)["restartPolicy"] = "OnFailure"
        for container in k8s.all_containers(obj):
            # podman passes $(VAR) in args through literally.
            env = k8s.container_env(container, out)
            container["args"] = [k8s.expand(a, env) for a in container.get("args", [])]
    return out


def test_the_rank_pod_fetches_its_bundle_serves_and_drains(images, bundle, prefix, tmp_path):
    rendered = k8s.render("overlays/cpu")
    (rank,) = [w for w in k8s.by_kind(rendered, "Deployment") if "recstack-rank" in
               k8s.all_containers(w)[-1]["command"]]  # fmt: skip
    keep = [*k8s.by_kind(rendered, "ConfigMap"), *k8s.by_kind(rendered, "PersistentVolumeClaim"),
            rank]  # fmt: skip
    objs = for_podman(prefixed(keep, prefix, images), bundle.version)
    path = tmp_path / "rank.yaml"
    pod = f"{prefix}-{rank['metadata']['name']}-pod-0"
    (main,) = k8s.service_containers(rank)
    port = next(p["containerPort"] for p in main["ports"] if p["name"] == "grpc")
    try:
        play(objs, path, "--start=false")
        # The PVC became a podman volume: publish the bundle into it, as the training Job
        # publishes into the bundles PVC.
        volume = podman.podman(
            "volume", "inspect", "--format", "{{.Mountpoint}}", f"{prefix}-{PUBLISHED_CLAIM}"
        ).stdout.strip()
        publish(bundle.root.parent, Path(volume), bundle.version)
        podman.podman("pod", "start", pod, timeout=300)
        infra = podman.podman("pod", "inspect", "--format", "{{.InfraContainerID}}", pod)
        address = inspect(infra.stdout.strip())["NetworkSettings"]["Networks"]
        (ip,) = [n["IPAddress"] for n in address.values()]
        container = podman.Container(name=f"{pod}-rank", image=images["serve"], argv=[])
        container.wait_serving(f"{ip}:{port}", "recstack.v1.RankService")
        # What rank serves is what the initContainer fetched into the pod's bundles volume.
        fetched = podman.podman(
            "volume", "inspect", "--format", "{{.Mountpoint}}", f"{prefix}-bundles"
        ).stdout.strip()
        assert (Path(fetched) / "CURRENT").read_text().strip() == bundle.version
        assert container.terminate() == 0, container.logs()[-3000:]
    finally:
        down(path, objs)
