"""Helpers for the deployment tests: render overlays, read pods, and see what a pod runs.

The point of these helpers is to interpret the rendered manifests the way Kubernetes and our
CLIs would: the environment a container gets (``envFrom`` ConfigMaps in order, then ``env``),
``$(VAR)`` expansion in ``command``/``args``, and the options a service process ends up with
(flags parsed by the same argparse construction as ``recstack.runtime.server.cli_main``, with
``RECSTACK_*`` env defaults). Tests then assert on those effective values, not on YAML text.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from recstack.core.config import ServerOptions, add_arguments

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu", "sharded", "postgres", "follow"]
# Everything `kubectl apply -k` is documented for: the overlays and the training jobs.
TARGETS = [f"overlays/{name}" for name in OVERLAYS] + ["jobs"]
# Pinned schema version for offline validation (kubernetes-validate ships its schemas);
# matches the kubectl/kustomize client the CI machine has.
KUBERNETES_VERSION = "1.32.0"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")

Obj = dict[str, Any]


@dataclass(frozen=True)
class Role:
    """A serving CLI as the manifests name it (``command[0]``)."""

    command: str
    module: str  # python -m <module> is the same entry point as the console script
    service: str  # grpc.health.v1 service name of its readiness


ROLES = {
    "recstack-recall": Role("recstack-recall", "recall_service", "recstack.v1.RecallService"),
    "recstack-rank": Role("recstack-rank", "rank_service", "recstack.v1.RankService"),
    "recstack-gateway": Role("recstack-gateway", "gateway", "recstack.v1.RecommendService"),
}


def kubectl() -> str | None:
    return shutil.which("kubectl")


@functools.cache
def render(target: str) -> list[Obj]:
    """``kubectl kustomize deploy/k8s/<target>`` parsed into objects (cached per session)."""
    exe = kubectl()
    if exe is None:
        raise RuntimeError("kubectl not found")
    out = subprocess.run(
        [exe, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {target} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def name_of(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def by_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


DATABASE = "postgres"  # app.kubernetes.io/component of the in-cluster PostgreSQL


def workloads(objs: list[Obj]) -> list[Obj]:
    """recstack's own Deployments/StatefulSets (recall, rank, gateway), not its database."""
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS and component(o) != DATABASE]


def databases(objs: list[Obj]) -> list[Obj]:
    """The in-cluster PostgreSQL StatefulSet(s) (none with overlays/postgres)."""
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS and component(o) == DATABASE]


def component(obj: Obj) -> str:
    return pod_labels(obj).get("app.kubernetes.io/component", "")


def pod_template(obj: Obj) -> Obj:
    """The pod template of a workload, Job or CronJob."""
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    template: Obj = spec["template"]
    return template


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = pod_template(obj)["spec"]
    return spec


def pod_labels(obj: Obj) -> dict[str, str]:
    labels: dict[str, str] = pod_template(obj)["metadata"].get("labels", {})
    return labels


# The bundle-follow sidecar of components/follow: the only container beside a service's.
FOLLOW_COMMAND = ["python", "-m", "recstack.tools.publish", "follow"]


def is_sidecar(container: Obj) -> bool:
    return bool(container.get("command") == FOLLOW_COMMAND)


def service_containers(obj: Obj) -> list[Obj]:
    """The pod's containers without the bundle-follow sidecar."""
    return [c for c in pod_spec(obj)["containers"] if not is_sidecar(c)]


def all_containers(obj: Obj) -> list[Obj]:
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def pod_templates(objs: list[Obj]) -> list[Obj]:
    """Every object with a pod template (workloads, Jobs and CronJobs)."""
    return [o for o in objs if o["kind"] in (*WORKLOAD_KINDS, "Job", "CronJob")]


def selects(match_labels: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def label_selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels + matchExpressions In/NotIn/Exists) on labels."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_env(
    container: Obj, objs: list[Obj], secrets: dict[tuple[str, str], str] | None = None
) -> dict[str, str | None]:
    """The container's environment as the kubelet builds it; ``None`` = from a secret/field
    (unless ``secrets`` has its (name, key)).

    envFrom sources apply in order (later wins), then ``env`` entries override them.
    """
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in by_kind(objs, "ConfigMap")}
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref is not None, f"{container['name']}: only configMapRef envFrom is expected"
        name = ref["name"]
        assert name in configmaps, f"{container['name']}: envFrom ConfigMap {name} not rendered"
        env.update({k: str(v) for k, v in configmaps[name].items()})
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif ref is not None and (ref["name"], ref["key"]) in (secrets or {}):
            env[entry["name"]] = (secrets or {})[(ref["name"], ref["key"])]
        else:
            env[entry["name"]] = None
    return env


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str | None]) -> str:
    """Kubernetes ``$(VAR)`` expansion for command/args: ``$$`` escapes, unknown stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        value = env.get(m.group(1))
        return m.group(0) if value is None else value

    return _VAR.sub(sub, text)


def command_line(container: Obj, env: dict[str, str | None]) -> list[str]:
    return [expand(a, env) for a in [*container.get("command", []), *container.get("args", [])]]


def role_of(container: Obj) -> Role | None:
    command = container.get("command") or []
    return ROLES.get(command[0]) if command else None


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Temporarily replace every RECSTACK_* variable of this process with ``values``."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("RECSTACK_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(values)
    try:
        yield
    finally:
        for k in values:
            os.environ.pop(k, None)
        os.environ.update(saved)


def cli_spec(role: Role) -> dict[str, Any]:
    """The keyword arguments the role's real ``main`` passes to
    ``recstack.runtime.server.cli_main``.

    The role module's ``cli_main`` is swapped for a recorder for the duration of one call,
    so the groups/ports come from the real entry point, not from a copy in this file.
    """
    module = importlib.import_module(f"{role.module}.__main__")
    seen: dict[str, Any] = {}

    def record(argv: Any, **kwargs: Any) -> int:
        seen.update(kwargs)
        return 0

    original = module.cli_main  # type: ignore[attr-defined]
    module.cli_main = record  # type: ignore[attr-defined]
    try:
        module.main([])  # type: ignore[attr-defined]
    finally:
        module.cli_main = original  # type: ignore[attr-defined]
    return seen


def build_parser(role: Role, env: dict[str, str]) -> argparse.ArgumentParser:
    """The role's argparse parser exactly as cli_main builds it, with ``env`` in effect."""
    spec = cli_spec(role)
    with environ(env):
        parser = argparse.ArgumentParser(prog=spec["prog"], exit_on_error=False, allow_abbrev=False)
        add_arguments(parser, ServerOptions, "server", {"port": spec["default_port"]})
        for group in spec["groups"]:
            add_arguments(parser, group)
    return parser


def option_names(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}


class CliError(AssertionError):
    """Manifest args/env that the real CLI would reject."""


def effective_options(role: Role, container: Obj, objs: list[Obj]) -> argparse.Namespace:
    """Parse the container's args (after ``$(VAR)`` expansion) with its env, like the process.

    Fails (CliError) on an env key ``RECSTACK_X`` that names no flag of this role -- the
    process would silently ignore it -- and on any flag or value argparse would refuse.
    """
    env = container_env(container, objs)
    literal = {k: ("<from-secret-or-field>" if v is None else v) for k, v in env.items()}
    recstack_env = {k: v for k, v in literal.items() if k.startswith("RECSTACK_")}
    try:
        parser = build_parser(role, recstack_env)
    except ValueError as exc:  # an env value of the wrong type (int("abc") ...)
        raise CliError(f"{container['name']}: bad RECSTACK_* value: {exc}") from exc
    known = option_names(parser)
    unknown = sorted(k for k in recstack_env if k[len("RECSTACK_") :].lower() not in known)
    if unknown:
        raise CliError(
            f"{container['name']} ({role.command}): env {unknown} name no flag of "
            f"`python -m {role.module} --help`; the process would silently ignore them"
        )
    args = command_line(container, env)[1:]
    try:
        return parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise CliError(f"{container['name']}: {role.command} rejects args {args}: {exc}") from exc


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity as a float (cores or bytes)."""
    text = str(value)
    suffixes = {
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)
