"""Extras in pyproject.toml cover what their console scripts import.

``pip install 'recstack[loadtest]'`` must make ``recstack-loadtest`` work: every
third-party module that ``loadtest/`` imports at module level (following imports into
recstack's own modules) must come from a serving dependency, the ``loadtest`` extra, or
something those require. Imports inside functions are optional features (tracing's
OpenTelemetry) and are not counted.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"recstack", "recall_service", "rank_service", "gateway", "training", "loadtest"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _closure(names: set[str]) -> set[str]:
    """``names`` and everything they require (installed metadata, markers ignored)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    for candidate in (
        ROOT.joinpath(*parts).with_suffix(".py"),
        ROOT.joinpath(*parts, "__init__.py"),
    ):
        if candidate.exists():
            return candidate
    return None


def _top_level_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # module level only
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def third_party_imports(package: str) -> set[str]:
    """Top-level names of non-stdlib, non-first-party modules ``package`` needs at import."""
    external: set[str] = set()
    todo = [str(p.relative_to(ROOT).with_suffix("")).replace("/", ".")
            for p in (ROOT / package).glob("*.py")]  # fmt: skip
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        for name in _top_level_imports(path):
            top = name.split(".")[0]
            if top in FIRST_PARTY:
                todo.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                external.add(top)
    return external


def test_loadtest_extra_covers_what_the_harness_imports() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["recstack-loadtest"] == "loadtest.cli:main"
    allowed = _closure(
        {_name(r) for r in project["dependencies"]}
        | {_name(r) for r in project["optional-dependencies"]["loadtest"]}
    )
    providers = md.packages_distributions()
    imports = third_party_imports("loadtest")
    assert {"tqdm", "hdrh", "matplotlib"} <= imports  # the check sees the harness's imports
    missing = {
        module: providers.get(module)
        for module in imports
        if not {_name(d) for d in providers.get(module, [])} & allowed
    }
    assert not missing, f"imported by loadtest/ but not in dependencies or [loadtest]: {missing}"


def test_tracing_extra_is_what_configure_imports() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {_name(r) for r in project["optional-dependencies"]["tracing"]}
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc"} <= extra
    assert "opentelemetry" not in third_party_imports("recstack"), (
        "serving code imports OpenTelemetry at module level: it must stay optional"
    )
