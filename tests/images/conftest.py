"""The images tier: build the three images once per session (scripts/images.sh build).

The build is the one scripts/images.sh runs (local Debian base, host-built wheels, podman
with runc, no network inside the build); podman's layer cache and the wheel cache make a
rebuild with unchanged dependencies take seconds. It never skips: where it cannot run
(podman with runc as set up here needs root, and installing it needs apt) it fails and says
so; a machine that cannot build images deselects the tier explicitly with
``pytest -m "not images"``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.images import podman

BUILD_TIMEOUT_S = 1800  # cold: base ~3 min, wheels ~4 min, three images ~6 min on 2 cores


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(podman.ROOT / "tests" / "images"):
            item.add_marker(pytest.mark.images)
            # The first test also pays for the build (session fixture).
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT_S + 600))


@pytest.fixture(scope="session")
def images() -> Iterator[dict[str, str]]:
    """name (serve, train, gpu) -> image reference, built from this checkout."""
    deselect = 'deselect the tier explicitly with pytest -m "not images"'
    if os.geteuid() != 0:
        pytest.fail(f"tests/images need root (podman with runc runs as root here); {deselect}")
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        pytest.fail(f"podman is not installed and apt-get is not there to install it; {deselect}")
    env = {**os.environ, "RECSTACK_IMAGE_TAG": podman.tag()}
    result = subprocess.run(
        ["bash", str(podman.ROOT / "scripts" / "images.sh"), "build"],
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"scripts/images.sh build failed:\n{output}"
    try:
        yield {name: podman.ref(name) for name in podman.IMAGES}
    finally:
        podman.remove_session_objects()
