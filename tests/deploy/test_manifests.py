"""The Kubernetes manifests, rendered and checked offline (no cluster needed).

Every overlay renders with ``kubectl kustomize``; every object validates against the pinned
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail); then policy
tests read the rendered objects: resources, probes, security, PDBs, NetworkPolicies, images,
GPU placement, shard wiring, and that every arg and RECSTACK_* env var is one the real CLI
parses.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest

from recstack.tools.publish import build_parser as publish_parser
from recstack.tools.publish import check_version_name
from tests.deploy import k8s
from tests.deploy.k8s import OVERLAYS, ROLES, TARGETS, Obj, name_of


def overlay(name: str) -> list[Obj]:
    return k8s.render(f"overlays/{name}")


@pytest.fixture(params=TARGETS)
def rendered(request: pytest.FixtureRequest) -> list[Obj]:
    return k8s.render(request.param)


@pytest.fixture(params=OVERLAYS)
def serving(request: pytest.FixtureRequest) -> list[Obj]:
    return overlay(request.param)


# ---- render + schema -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_renders(target: str) -> None:
    kinds = {o["kind"] for o in k8s.render(target)}
    expected = {"Job", "CronJob", "PersistentVolumeClaim"} if target == "jobs" else {
        "StatefulSet", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
        "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceAccount", "PersistentVolumeClaim",
    }  # fmt: skip
    assert expected <= kinds, f"{target} lacks {expected - kinds}"


def test_every_object_validates_against_pinned_schema(rendered: list[Obj]) -> None:
    errors = []
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, k8s.KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name_of(obj)}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_schema_validation_can_fail() -> None:
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": "not-a-number"}], "typo": True}}  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, k8s.KUBERNETES_VERSION, strict=True)


def test_names_are_namespace_agnostic(rendered: list[Obj]) -> None:
    assert [name_of(o) for o in rendered if "namespace" in o["metadata"]] == []


# ---- containers: resources, security, images -----------------------------------------------------


def test_every_container_has_requests_and_limits(rendered: list[Obj]) -> None:
    for obj in k8s.pod_templates(rendered):
        for c in k8s.all_containers(obj):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    assert r in res.get(kind, {}), f"{name_of(obj)}/{c['name']}: no {kind}.{r}"
                    assert k8s.quantity(res["requests"][r]) <= k8s.quantity(res["limits"][r])


def test_every_container_is_locked_down(rendered: list[Obj]) -> None:
    for obj in k8s.pod_templates(rendered):
        pod = k8s.pod_spec(obj)
        where = name_of(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v], where
        assert pod.get("automountServiceAccountToken") is False, where
        # RECSTACK_<FLAG> env defaults: docker-link vars (RECSTACK_PORT=tcp://...) must not
        # be injected by Services whose names start with "recstack".
        assert pod.get("enableServiceLinks") is False, where
        for c in k8s.all_containers(obj):
            sc = c.get("securityContext", {})
            at = f"{where}/{c['name']}"
            assert sc.get("runAsNonRoot") is True, at
            assert sc.get("runAsUser", pod["securityContext"].get("runAsUser", 0)) != 0, at
            assert sc.get("readOnlyRootFilesystem") is True, at
            assert sc.get("allowPrivilegeEscalation") is False, at
            assert sc.get("privileged", False) is False, at
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), at
            assert not sc.get("capabilities", {}).get("add"), at
            # Read-only root: the only writable places are mounted volumes; /tmp is needed.
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{at}: no writable /tmp with a read-only root"


_PINNED = re.compile(
    r"^[a-z0-9.\-/:]+(:[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?(@sha256:[0-9a-f]{64})?$"
)


def test_images_are_pinned(rendered: list[Obj]) -> None:
    for obj in k8s.pod_templates(rendered):
        for c in k8s.all_containers(obj):
            image = c["image"]
            last = image.rsplit("/", 1)[-1]
            has_digest = "@sha256:" in image
            tag = last.split("@")[0].partition(":")[2]
            assert _PINNED.match(image), f"{name_of(obj)}/{c['name']}: odd image {image!r}"
            assert has_digest or (tag and tag != "latest"), f"{image} is not pinned"


def test_image_pin_check_rejects_latest_and_untagged() -> None:
    for image in ("ghcr.io/recstack/recstack", "ghcr.io/recstack/recstack:latest"):
        last = image.rsplit("/", 1)[-1]
        tag = last.partition(":")[2]
        assert not ("@sha256:" in image or (tag and tag != "latest"))


# ---- probes and lifecycle ------------------------------------------------------------------------


def test_serving_containers_probe_their_grpc_health(serving: list[Obj]) -> None:
    for obj in k8s.workloads(serving):
        for c in k8s.service_containers(obj):
            role = k8s.role_of(c)
            assert role is not None, f"{name_of(obj)}/{c['name']}: unknown command {c['command']}"
            opts = k8s.effective_options(role, c, serving)
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports["grpc"] == opts.port, f"{name_of(obj)}: containerPort != --port"
            assert ports["metrics"] == opts.metrics_port
            assert opts.host == "0.0.0.0", f"{name_of(obj)} binds {opts.host}: unreachable"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                grpc_probe = c[probe]["grpc"]
                # Numeric port (named ports are not allowed for grpc probes) = the bound one.
                assert isinstance(grpc_probe["port"], int) and grpc_probe["port"] == opts.port
            assert c["startupProbe"]["grpc"]["service"] == role.service
            assert c["readinessProbe"]["grpc"]["service"] == role.service
            assert c["livenessProbe"]["grpc"].get("service", "") in ("", role.service)


def test_termination_grace_exceeds_drain_time(serving: list[Obj]) -> None:
    for obj in k8s.workloads(serving):
        for c in k8s.service_containers(obj):
            role = k8s.role_of(c)
            assert role is not None
            grace = k8s.effective_options(role, c, serving).grace_seconds
            assert k8s.pod_spec(obj)["terminationGracePeriodSeconds"] > grace, name_of(obj)


def test_gateway_startup_outlasts_its_downstream_wait(serving: list[Obj]) -> None:
    from gateway.server import DOWNSTREAM_WAIT_S

    (gateway,) = [o for o in k8s.workloads(serving) if o["metadata"]["name"] == "recstack-gateway"]
    probe = k8s.service_containers(gateway)[0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] > DOWNSTREAM_WAIT_S


# ---- the real CLIs accept what the manifests pass ------------------------------------------------


def test_parser_replica_matches_real_help() -> None:
    """k8s.build_parser mirrors cli_main: same flags as `python -m <role> --help` prints."""
    import subprocess
    import sys

    for role in ROLES.values():
        out = subprocess.run(
            [sys.executable, "-m", role.module, "--help"], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        printed = set(re.findall(r"^\s+(--[a-z0-9-]+)", out.stdout, flags=re.M)) - {"--help"}
        ours = {
            s
            for a in k8s.build_parser(role, {})._actions
            for s in a.option_strings
            if s.startswith("--") and not s.startswith("--no-") and s != "--help"
        }
        assert printed == ours, f"{role.module}: {printed ^ ours}"


def test_env_and_args_parse_with_the_real_clis(serving: list[Obj]) -> None:
    checked = 0
    for obj in k8s.workloads(serving):
        for c in k8s.service_containers(obj):
            role = k8s.role_of(c)
            assert role is not None, f"{name_of(obj)}: command {c.get('command')} is no CLI"
            k8s.effective_options(role, c, serving)  # raises CliError with the reason
            checked += 1
    assert checked >= 3


def test_unknown_env_key_or_flag_is_caught() -> None:
    objs = overlay("cpu")
    (rank,) = [o for o in k8s.workloads(objs) if o["metadata"]["name"] == "recstack-rank"]
    container = dict(k8s.service_containers(rank)[0])
    typo = {**container, "env": [{"name": "RECSTACK_MAX_CANDIDATE", "value": "5"}]}
    with pytest.raises(k8s.CliError, match="RECSTACK_MAX_CANDIDATE"):
        k8s.effective_options(ROLES["recstack-rank"], typo, objs)
    bad_flag = {**container, "args": ["--devices", "cuda"]}
    with pytest.raises(k8s.CliError, match="rejects"):
        k8s.effective_options(ROLES["recstack-rank"], bad_flag, objs)


def test_gpu_args_override_the_configmap_device() -> None:
    objs = overlay("gpu")
    (rank,) = [o for o in k8s.workloads(objs) if o["metadata"]["name"] == "recstack-rank"]
    opts = k8s.effective_options(ROLES["recstack-rank"], k8s.service_containers(rank)[0], objs)
    assert opts.device == "cuda" and opts.allow_cpu_fallback is False


def test_bundle_fetch_init_containers(rendered: list[Obj]) -> None:
    """Every serving pod fetches one version, from one ConfigMap, into the --bundle path."""
    parser = publish_parser()
    versions = set()
    for obj in k8s.workloads(rendered):
        (init,) = [c for c in k8s.pod_spec(obj).get("initContainers", [])]
        env = k8s.container_env(init, rendered)
        argv = k8s.command_line(init, env)
        assert argv[:3] == ["python", "-m", "recstack.tools.publish"], argv
        assert not [a for a in argv if "$(" in a], f"unexpanded variable in {argv}"
        args = parser.parse_args(argv[3:])
        assert args.command == "fetch"
        # Empty: the source's CURRENT (components/follow); else one named version.
        versions.add(check_version_name(args.version) if args.version else "<CURRENT>")
        if not args.source.startswith(("http://", "https://")):
            mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
            assert args.source in mounts and mounts[args.source].get("readOnly") is True
        (main,) = k8s.service_containers(obj)
        role = k8s.role_of(main)
        assert role is not None
        bundle = k8s.effective_options(role, main, rendered).bundle
        assert bundle == args.dest, f"{name_of(obj)}: fetches to {args.dest}, serves {bundle}"
        main_mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
        assert main_mounts[bundle] == init_mounts[args.dest], "init and main see other volumes"
    # Invariant 2: one bundle version (one embedding space) across recall, rank and gateway.
    assert len(versions) <= 1, versions


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_training_job_publishes_into_the_shared_bundle_volume(kind: str) -> None:
    """The training Job and the learning loop's CronJob: publish reads what training wrote
    and writes the volume the serving pods read."""
    objs = k8s.render("jobs")
    (job,) = k8s.by_kind(objs, kind)
    pod = k8s.pod_spec(job)
    (train,) = pod["initContainers"]
    (publish,) = pod["containers"]
    args = publish_parser().parse_args(k8s.command_line(publish, {})[3:])
    assert args.command == "publish"
    train_argv = k8s.command_line(train, {})
    assert train_argv[:3] == ["python", "-m", "training"]
    out = train_argv[train_argv.index("--out") + 1]
    assert args.bundles == out, "publish must read what training wrote"
    volumes = {v["name"]: v for v in pod["volumes"]}
    dest_volume = {m["mountPath"]: m["name"] for m in publish["volumeMounts"]}[args.dest]
    claim = volumes[dest_volume]["persistentVolumeClaim"]["claimName"]
    for target in OVERLAYS:  # the serving pods read the same claim
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for o in k8s.workloads(overlay(target))
            for v in k8s.pod_spec(o)["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {claim}, target


def test_follow_sidecars_keep_the_served_root_on_the_published_current() -> None:
    """components/follow: recall, rank and gateway pods run `publish follow` from the fetch's source
    into the root their service watches; nothing else runs beside a service."""
    objs = overlay("follow")
    followed = set()
    for target in OVERLAYS:
        for obj in k8s.workloads(overlay(target)):
            sidecars = [c for c in k8s.pod_spec(obj)["containers"] if k8s.is_sidecar(c)]
            assert target == "follow" or not sidecars, f"{target}: {name_of(obj)}"
    for obj in k8s.workloads(objs):
        (main,) = k8s.service_containers(obj)
        sidecars = [c for c in k8s.pod_spec(obj)["containers"] if k8s.is_sidecar(c)]
        if k8s.component(obj) not in ("recall", "rank", "gateway"):
            assert not sidecars, name_of(obj)
            continue
        (sidecar,) = sidecars
        (init,) = k8s.pod_spec(obj)["initContainers"]
        fetch = publish_parser().parse_args(
            k8s.command_line(init, k8s.container_env(init, objs))[3:]
        )
        args = publish_parser().parse_args(
            k8s.command_line(sidecar, k8s.container_env(sidecar, objs))[3:]
        )
        assert args.command == "follow" and args.interval_s > 0
        assert (args.source, args.dest) == (fetch.source, fetch.dest)
        assert fetch.version == "", "a following pod starts on the source's CURRENT"
        served = k8s.effective_options(k8s.role_of(main), main, objs)
        assert served.bundle == args.dest, name_of(obj)
        # recall and rank watch CURRENT; the gateway reads a version when recall answers in it.
        assert k8s.component(obj) == "gateway" or served.bundle_poll_s > 0, name_of(obj)
        mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
        main_mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        assert mounts[args.dest]["name"] == main_mounts[served.bundle]
        assert mounts[args.source].get("readOnly") is True
        followed.add(k8s.component(obj))
    assert followed == {"recall", "rank", "gateway"}


# ---- availability: PDBs, HPAs, spread ------------------------------------------------------------


def test_every_workload_has_exactly_one_pdb(serving: list[Obj]) -> None:
    pdbs = k8s.by_kind(serving, "PodDisruptionBudget")
    for obj in k8s.workloads(serving):
        matching = [
            p["metadata"]["name"]
            for p in pdbs
            if k8s.label_selector_matches(p["spec"]["selector"], k8s.pod_labels(obj))
        ]
        assert len(matching) == 1, f"{name_of(obj)}: PDBs {matching}"
    for p in pdbs:  # and no PDB guards nothing
        assert any(
            k8s.label_selector_matches(p["spec"]["selector"], k8s.pod_labels(o))
            for o in k8s.workloads(serving)
        ), p["metadata"]["name"]


def test_rank_and_gateway_autoscale(serving: list[Obj]) -> None:
    deployments = {o["metadata"]["name"]: o for o in k8s.by_kind(serving, "Deployment")}
    hpas = k8s.by_kind(serving, "HorizontalPodAutoscaler")
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in hpas}
    assert targets == {"recstack-rank", "recstack-gateway"} == set(deployments)
    for name in targets:  # the HPA owns the count; a fixed replicas would fight it on apply
        assert "replicas" not in deployments[name]["spec"], name


def test_topology_spread(serving: list[Obj]) -> None:
    for obj in k8s.workloads(serving):
        constraints = k8s.pod_spec(obj).get("topologySpreadConstraints", [])
        keys = {c["topologyKey"] for c in constraints}
        assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys, name_of(obj)
        for c in constraints:
            assert k8s.label_selector_matches(c["labelSelector"], k8s.pod_labels(obj))
            # API-server rule the schema cannot express: matchLabelKeys and labelSelector
            # must not share a key.
            overlap = set(c.get("matchLabelKeys", [])) & set(c["labelSelector"]["matchLabels"])
            assert not overlap, f"{name_of(obj)}: {overlap}"


# ---- network exposure ----------------------------------------------------------------------------


def _selects_pod(selector: Obj, labels: dict[str, str]) -> bool:
    return k8s.label_selector_matches(selector, labels) if selector else True


def _policies_for(objs: list[Obj], labels: dict[str, str]) -> list[Obj]:
    return [
        p
        for p in k8s.by_kind(objs, "NetworkPolicy")
        if _selects_pod(p["spec"]["podSelector"], labels)
    ]


def _ports(rule: Obj) -> set[Any]:
    return {p.get("port") for p in rule.get("ports", [])} or {"any"}


def test_only_the_gateway_is_reachable_from_outside(serving: list[Obj]) -> None:
    workloads = k8s.workloads(serving)
    gateway_labels = next(
        k8s.pod_labels(o) for o in workloads if o["metadata"]["name"] == "recstack-gateway"
    )
    metrics_ports = {9090}
    for svc in k8s.by_kind(serving, "Service"):
        spec = svc["spec"]
        assert not spec.get("externalIPs"), name_of(svc)
        if svc["metadata"]["name"] != "recstack-gateway":
            assert spec.get("type", "ClusterIP") == "ClusterIP", f"{name_of(svc)} is exposed"
    for obj in workloads:
        labels = k8s.pod_labels(obj)
        policies = _policies_for(serving, labels)
        assert any(
            "Ingress" in p["spec"]["policyTypes"] and not p["spec"].get("ingress") for p in policies
        ), f"{name_of(obj)}: no default-deny ingress policy selects it"
        rules = [r for p in policies for r in p["spec"].get("ingress", [])]
        (container,) = k8s.service_containers(obj)
        grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
        is_gateway = obj["metadata"]["name"] == "recstack-gateway"
        open_rules = [r for r in rules if not r.get("from")]
        if is_gateway:
            assert any(grpc_port in _ports(r) for r in open_rules), "gateway not reachable"
        for rule in rules:
            if is_gateway and not rule.get("from"):
                assert _ports(rule) == {grpc_port}, f"gateway opens {_ports(rule)} to all"
                continue
            assert rule.get("from"), f"{name_of(obj)}: ingress from anywhere"
            for peer in rule["from"]:
                assert "ipBlock" not in peer, f"{name_of(obj)}: ipBlock peer"
                if "namespaceSelector" in peer:
                    # Only Prometheus from the monitoring namespace, only the metrics port.
                    assert peer["namespaceSelector"] == {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }, peer
                    assert "podSelector" not in peer or peer["podSelector"] == {}
                    assert _ports(rule) <= metrics_ports, f"{name_of(obj)}: {rule}"
                else:
                    assert k8s.label_selector_matches(peer["podSelector"], gateway_labels)
                    assert (
                        peer["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
                        == "gateway"
                    ), f"{name_of(obj)}: non-gateway pods may connect: {peer}"
        if not is_gateway:  # ...and the gateway can in fact reach it.
            assert any(
                grpc_port in _ports(r)
                and any(
                    "podSelector" in p and "namespaceSelector" not in p for p in r.get("from", [])
                )
                for r in rules
            ), f"{name_of(obj)}: the gateway cannot reach it"


def test_services_route_to_pods(serving: list[Obj]) -> None:
    for svc in k8s.by_kind(serving, "Service"):
        targets = [
            o
            for o in [*k8s.workloads(serving), *k8s.databases(serving)]
            if k8s.selects(svc["spec"]["selector"], k8s.pod_labels(o))
        ]
        assert len(targets) == 1, f"{name_of(svc)} selects {[name_of(t) for t in targets]}"
        names = {p["name"] for c in k8s.service_containers(targets[0]) for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, f"{name_of(svc)}: {port}"


# ---- GPU placement -------------------------------------------------------------------------------


def _gpu_limit(container: Obj) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("name", OVERLAYS)
def test_gpus_only_for_rank_in_the_gpu_overlay(name: str) -> None:
    objs = overlay(name)
    for obj in k8s.workloads(objs):
        for c in k8s.all_containers(obj):
            wants = (
                name == "gpu" and obj["metadata"]["name"] == "recstack-rank" and c["name"] == "rank"
            )
            assert (_gpu_limit(c) >= 1) == wants, f"{name}: {name_of(obj)}/{c['name']}"
            if wants:
                pod = k8s.pod_spec(obj)
                assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
                assert pod["nodeSelector"]
                assert "recstack-gpu" in c["image"]
                assert k8s.effective_options(ROLES["recstack-rank"], c, objs).device == "cuda"


# ---- shards --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shards"), [("cpu", 1), ("gpu", 1), ("postgres", 1), ("sharded", 4)]
)
def test_recall_shards_and_gateway_agree(name: str, shards: int) -> None:
    objs = overlay(name)
    recall = [
        o
        for o in k8s.by_kind(objs, "StatefulSet")
        if k8s.pod_labels(o).get("app.kubernetes.io/component") == "recall"
    ]
    assert len(recall) == shards
    services = {s["metadata"]["name"]: s for s in k8s.by_kind(objs, "Service")}
    indexes = {}
    for sts in recall:
        opts = k8s.effective_options(ROLES["recstack-recall"], k8s.service_containers(sts)[0], objs)
        assert opts.shard_count == shards, name_of(sts)
        indexes[opts.shard_index] = sts
        governing = services[sts["spec"]["serviceName"]]
        assert governing["spec"].get("clusterIP") == "None", "per-pod balancing needs headless"
        assert k8s.label_selector_matches(sts["spec"]["selector"], k8s.pod_labels(sts))
        claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
        mounts = k8s.service_containers(sts)[0]["volumeMounts"]
        state_mount = next(m["mountPath"] for m in mounts if m["name"] in claims)
        assert opts.state_dir.startswith(state_mount), "state dir must be on the replica volume"
    assert sorted(indexes) == list(range(shards))
    (gateway,) = [o for o in k8s.workloads(objs) if o["metadata"]["name"] == "recstack-gateway"]
    gopts = k8s.effective_options(
        ROLES["recstack-gateway"], k8s.service_containers(gateway)[0], objs
    )
    targets = gopts.recall_address.split(",")
    assert len(targets) == shards, "one gateway recall target per shard"
    for i, target in enumerate(targets):
        m = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", target)
        assert m, target
        sts = indexes[i]
        assert m.group(1) == sts["spec"]["serviceName"], f"target {i} is not shard {i}"
        svc_ports = {p["port"] for p in services[m.group(1)]["spec"]["ports"]}
        assert int(m.group(2)) in svc_ports
    m = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", gopts.rank_address)
    assert m and services[m.group(1)]["spec"].get("clusterIP") == "None"


@pytest.mark.parametrize("name", ["cpu", "gpu", "sharded"])
def test_default_state_lives_in_the_in_cluster_postgres(name: str) -> None:
    """Stateless gateway and recall replicas: events and the catalog log in the one
    PostgreSQL of the deployment, its password from a Secret the repo does not render."""
    objs = overlay(name)
    assert k8s.by_kind(objs, "Secret") == [], "credentials must not be rendered from the repo"
    (db,) = k8s.databases(objs)
    (pg,) = k8s.service_containers(db)
    env = {e["name"]: e for e in pg["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "recstack-postgres"
    assert any(v["metadata"]["name"] == "data" for v in db["spec"]["volumeClaimTemplates"])
    (svc,) = [
        s for s in k8s.by_kind(objs, "Service") if s["metadata"]["name"] == db["metadata"]["name"]
    ]
    port = svc["spec"]["ports"][0]["port"]
    for obj in k8s.workloads(objs):
        if obj["metadata"]["name"] == "recstack-rank":
            continue  # stateless, no database
        (c,) = k8s.service_containers(obj)
        role = k8s.role_of(c)
        assert role is not None
        options = k8s.effective_options(role, c, objs)
        dsn = options.events_dsn if role.command == "recstack-gateway" else options.catalog_dsn
        assert dsn == f"postgresql://recstack@{svc['metadata']['name']}:{port}/recstack", dsn
        password = {e["name"]: e for e in c.get("env", [])}["PGPASSWORD"]
        assert password["valueFrom"]["secretKeyRef"] == {
            "name": "recstack-postgres",
            "key": "password",
        }
    recall = [o for o in k8s.workloads(objs) if k8s.component(o) == "recall"]
    assert recall and all(o["spec"]["replicas"] >= 2 for o in recall), "shared catalog"
    # Only recall and gateway pods, and the learning loop's, may reach the database.
    (policy,) = [
        p
        for p in k8s.by_kind(objs, "NetworkPolicy")
        if k8s.selects(p["spec"]["podSelector"]["matchLabels"], k8s.pod_labels(db))
        and p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
    ]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    (expr,) = peer["podSelector"]["matchExpressions"]
    assert sorted(expr["values"]) == ["gateway", "learning", "recall"]
    # The learning loop reads the stores recall and the gateway write.
    (learn,) = k8s.by_kind(k8s.render("jobs"), "CronJob")
    (init,) = k8s.pod_spec(learn)["initContainers"]
    env = k8s.container_env(init, [])
    written = {"catalog_dsn": set(), "events_dsn": set()}
    for obj in k8s.workloads(objs):
        for c in k8s.service_containers(obj):
            role = k8s.role_of(c)
            if role is not None and role.command != "recstack-rank":
                options = vars(k8s.effective_options(role, c, objs))
                for option, seen in written.items():
                    if option in options:
                        seen.add(options[option])
    assert written["catalog_dsn"] == {env["RECSTACK_CATALOG_DSN"]}
    assert written["events_dsn"] == {env["RECSTACK_EVENTS_DSN"]}
    assert {e["name"]: e for e in init["env"]}["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "recstack-postgres",
        "key": "password",
    }
    assert k8s.pod_labels(learn)["app.kubernetes.io/component"] == "learning"


def test_postgres_overlay_takes_dsns_from_a_secret() -> None:
    objs = overlay("postgres")
    assert k8s.by_kind(objs, "Secret") == [], "credentials must not be rendered from the repo"
    for obj in k8s.workloads(objs):
        if obj["metadata"]["name"] == "recstack-rank":
            continue
        (c,) = k8s.service_containers(obj)
        env = {e["name"]: e for e in c.get("env", [])}
        key = (
            "RECSTACK_EVENTS_DSN"
            if "gateway" in obj["metadata"]["name"]
            else "RECSTACK_CATALOG_DSN"
        )
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "recstack-postgres", name_of(obj)
        role = k8s.role_of(c)
        assert role is not None
        k8s.effective_options(role, c, objs)
    assert k8s.databases(objs) == [], "the external database replaces the in-cluster one"
    for obj in k8s.workloads(objs):
        (c,) = k8s.service_containers(obj)
        assert "PGPASSWORD" not in {e["name"] for e in c.get("env", [])}, name_of(obj)
    recall = [o for o in k8s.by_kind(objs, "StatefulSet")]
    assert all(o["spec"]["replicas"] >= 2 for o in recall), "shared catalog: >1 replica/shard"


def test_training_job_args_are_accepted_by_the_training_cli() -> None:
    """`python -m training build --help` (README's CLI) lists every flag the Job passes."""
    import subprocess
    import sys

    rendered = k8s.render("jobs")
    for job in [*k8s.by_kind(rendered, "Job"), *k8s.by_kind(rendered, "CronJob")]:
        (train,) = k8s.pod_spec(job)["initContainers"]
        argv = k8s.command_line(train, {})
        out = subprocess.run(
            [sys.executable, "-m", "training", *argv[3:4], "--help"], capture_output=True, text=True
        )
        assert out.returncode == 0, f"`python -m training {argv[3]} --help` failed: {out.stderr}"
        for flag in [a for a in argv[4:] if a.startswith("--")]:
            assert re.search(rf"(^|\s){re.escape(flag)}\b", out.stdout), f"training lacks {flag}"
