"""The serving image as three containers: recall, rank and gateway wired on the host network.

Each runs as its pod would (tests/images/podman.py: UID 10001, read-only root, no
capabilities, the bundle volume read-only, recall's and the gateway's state on their own
volumes) with a plaintext health port. From the host, with the project's client: health on
the health ports, Recommend, an item write that lands in recall's state volume, events in
the gateway's. Then SIGTERM to each (gateway first, as a rollout would): a clean drain logs
``stopped`` and exits 0. Finally recall starts again from the same state volume and still
has the written item.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.server import SERVICE_NAME as RECOMMEND_SERVICE
from rank_service.server import SERVICE_NAME as RANK_SERVICE
from recall_service.server import SERVICE_NAME as RECALL_SERVICE
from recstack.client import RecstackClient, item_write
from recstack.tools.procs import free_port
from recstack.v1 import recall_pb2
from tests.images import podman

STATE = "/var/lib/recstack"
ITEM_TEXT = "an item written in a container"


class Service:
    """One service container and its ports (gRPC, health, metrics)."""

    def __init__(self, image: str, role: str, volumes: list[str], *flags: str) -> None:
        self.port, self.health_port, self.metrics_port = free_port(), free_port(), free_port()
        self.container = podman.Container(
            name=f"recstack-smoke-{role}-{os.getpid()}-{self.port}",
            image=image,
            argv=[
                f"recstack-{role}",
                "--port", str(self.port),
                "--health-port", str(self.health_port),
                "--metrics-port", str(self.metrics_port),
                "--grace-seconds", "10",
                *flags,
            ],
            volumes=volumes,
            env={"RECSTACK_HOST": "127.0.0.1"},
        )  # fmt: skip

    def start(self, service: str) -> Service:
        self.container.start().wait_serving(f"127.0.0.1:{self.health_port}", service)
        return self

    def stop(self) -> tuple[int, str]:
        return self.container.terminate(), self.container.logs()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def state_volume(path: Path) -> str:
    """A host directory owned by the containers' UID, mounted read-write at ``STATE``."""
    path.mkdir()
    os.chown(path, podman.UID, podman.UID)
    return f"{path}:{STATE}:rw"


def log_messages(logs: str) -> list[str]:
    out = []
    for line in logs.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(str(record.get("msg", "")))
    return out


@pytest.fixture
def bundle_volume(bundle_dir: Path) -> str:
    return f"{bundle_dir}:/bundles:ro"


def start_recall(image: str, bundle_volume: str, state: str) -> Service:
    return Service(
        image, "recall", [bundle_volume, state],
        "--bundle", "/bundles", "--state-dir", f"{STATE}/recall", "--bundle-poll-s", "0",
    ).start(RECALL_SERVICE)  # fmt: skip


def test_three_containers_serve_recommend_and_drain_on_sigterm(
    images, bundle, bundle_volume, tmp_path
):
    image = images["serve"]
    recall_state = state_volume(tmp_path / "recall-state")
    gateway_state = state_volume(tmp_path / "gateway-state")
    started: list[Service] = []
    try:
        recall = start_recall(image, bundle_volume, recall_state)
        started.append(recall)
        rank = Service(
            image, "rank", [bundle_volume], "--bundle", "/bundles", "--bundle-poll-s", "0"
        ).start(RANK_SERVICE)
        started.append(rank)
        gateway = Service(
            image, "gateway", [bundle_volume, gateway_state],
            "--bundle", "/bundles", "--state-dir", f"{STATE}/gateway",
            "--recall-address", recall.address, "--rank-address", rank.address,
        ).start(RECOMMEND_SERVICE)  # fmt: skip
        started.append(gateway)

        user, history = next(iter(bundle.iter_user_histories()))
        with RecstackClient(gateway.address, recall.address, timeout=30) as client:
            resp = client.recommend(user_id=user, k=4)
            assert len(resp.items) == 4 and not {i.id for i in resp.items} & set(history)
            assert resp.bundle_version == bundle.version
            seq = client.upsert(
                [item_write("smoke-item", title="Smoke", text=ITEM_TEXT,
                            metadata={"genre": "smoke"})]
            )  # fmt: skip
            got = client.recall(
                recall_pb2.RecallRequest(query_text=ITEM_TEXT, k=1,
                                         min_sequence=seq)
            )  # fmt: skip
            assert list(got.ids) == ["smoke-item"]
            assert client.record_events([("smoke-user", history[0], "click")]) > 0
            assert client.recommend(user_id="smoke-user", k=2).history_length == 1

        # What the services wrote went to their volumes, not into the (read-only) image.
        assert any((tmp_path / "recall-state" / "recall").iterdir())
        assert any((tmp_path / "gateway-state" / "gateway").iterdir())

        for service in reversed(started):
            code, logs = service.stop()
            messages = log_messages(logs)
            assert code == 0, f"{service.container.name} exited {code}:\n{logs[-3000:]}"
            assert "draining" in messages and "stopped" in messages, logs[-3000:]
            assert messages.index("draining") < messages.index("stopped")
        started.clear()

        # Recall's catalog log is on the volume: a new container replays it.
        recall = start_recall(image, bundle_volume, recall_state)
        started.append(recall)
        with RecstackClient(gateway.address, recall.address, timeout=30) as client:
            got = client.recall(recall_pb2.RecallRequest(query_text=ITEM_TEXT, k=1))
            assert list(got.ids) == ["smoke-item"]
        code, logs = recall.stop()
        started.clear()
        assert code == 0, logs[-3000:]
    finally:
        for service in started:
            service.container.remove()
