"""Shared fixtures: one tiny bundle trained per test session, real servers on free ports.

Set RECSTACK_TEST_BUNDLE to an existing bundle directory to skip training (local speed-up);
CI always trains the tiny bundle from the synthetic dataset, exercising the real pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from recstack.core.bundle import Bundle
from recstack.core.config import GatewayOptions, RankOptions, RecallOptions, ServerOptions
from recstack.runtime.server import RunningServer

READY_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    preset = os.environ.get("RECSTACK_TEST_BUNDLE")
    if preset:
        return Path(preset)
    from training.data import write_synthetic_dataset
    from training.pipeline import build_bundle

    root = tmp_path_factory.mktemp("tiny")
    data = write_synthetic_dataset(root / "data")
    return build_bundle(data, root / "bundles", profile="tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def bundle(bundle_dir: Path) -> Bundle:
    return Bundle.open(bundle_dir)


def _started(running: RunningServer) -> Iterator[RunningServer]:
    try:
        running.wait_ready(READY_TIMEOUT_S)
        yield running
    finally:
        running.stop(0)


def recall_options(bundle_dir: Path, state_dir: Path, **overrides: object) -> RecallOptions:
    """Recall options for tests: the given bundle, a private state dir, no bundle polling."""
    return RecallOptions(
        bundle=str(bundle_dir), state_dir=str(state_dir), bundle_poll_s=0.0, **overrides
    )


@pytest.fixture(scope="session")
def recall_server(
    bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    from recall_service.server import serve

    options = recall_options(bundle_dir, tmp_path_factory.mktemp("recall-state"))
    yield from _started(serve(ServerOptions(port=0), options))


@pytest.fixture(scope="session")
def rank_server(bundle_dir: Path) -> Iterator[RunningServer]:
    from rank_service.server import serve

    yield from _started(
        serve(ServerOptions(port=0), RankOptions(bundle=str(bundle_dir), max_candidates=50))
    )


@pytest.fixture(scope="session")
def gateway_server(
    bundle_dir: Path,
    recall_server: RunningServer,
    rank_server: RunningServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    from gateway.server import serve

    options = GatewayOptions(
        recall_address=f"127.0.0.1:{recall_server.port}",
        rank_address=f"127.0.0.1:{rank_server.port}",
        bundle=str(bundle_dir),
        state_dir=str(tmp_path_factory.mktemp("gateway-state")),
        max_k=20,
        default_candidates=30,
        max_candidates=40,
    )
    yield from _started(serve(ServerOptions(port=0), options))


def channel_to(server: RunningServer) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{server.port}")
