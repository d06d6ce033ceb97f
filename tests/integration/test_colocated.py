"""The three stages in one process (``gateway.colocated``): one port, every service.

Health and reflection cover all five services; a live write through RecallService reaches
the next Recommend (the gateway calls the same replica in-process); a recorded event
changes the next Recommend; domain errors raised in-process keep their gRPC status and
field. (That its Recommend equals the evaluation's served path is in test_served_path.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recstack.core.bundle import Bundle
from recstack.core.config import GatewayOptions, RankOptions, ServerOptions
from recstack.runtime import contracts
from recstack.runtime.server import RunningServer
from recstack.v1 import (
    gateway_pb2,
    gateway_pb2_grpc,
    rank_pb2,
    rank_pb2_grpc,
    recall_pb2,
    recall_pb2_grpc,
)
from tests.conftest import channel_to, recall_options

SERVICES = (
    contracts.GATEWAY_SERVICE,
    contracts.RECALL_SERVICE,
    contracts.RECALL_ADMIN_SERVICE,
    contracts.RANK_SERVICE,
    contracts.RANK_ADMIN_SERVICE,
)


@pytest.fixture(scope="module")
def colocated(
    bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    from gateway.colocated import serve

    state = tmp_path_factory.mktemp("colocated")
    running = serve(
        ServerOptions(port=0),
        GatewayOptions(bundle=str(bundle_dir), state_dir=str(state / "gateway")),
        recall_options(bundle_dir, state / "recall"),
        RankOptions(bundle_poll_s=0),
    )
    try:
        running.wait_ready(120)
        yield running
    finally:
        running.stop(0)


def test_every_service_on_one_port_is_serving_and_listed(colocated):
    health = health_pb2_grpc.HealthStub(channel_to(colocated))
    for name in ("", *SERVICES):
        status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    stub = reflection_pb2_grpc.ServerReflectionStub(channel_to(colocated))
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in next(iter(responses)).list_services_response.service}
    assert set(SERVICES) <= names


def test_a_live_write_reaches_the_next_recommend(colocated, bundle: Bundle):
    channel = channel_to(colocated)
    recall = recall_pb2_grpc.RecallServiceStub(channel)
    gateway = gateway_pb2_grpc.RecommendServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        gateway.Recommend(gateway_pb2.RecommendRequest(history_item_ids=["colo-new"], k=3))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "history_item_ids" in err.value.details()  # raised in-process, mapped once
    recall.Upsert(
        recall_pb2.UpsertRequest(
            items=[recall_pb2.ItemWrite(id="colo-new", title="Colo", text="a lighthouse keeper")]
        )
    )
    resp = gateway.Recommend(gateway_pb2.RecommendRequest(history_item_ids=["colo-new"], k=3))
    assert len(resp.items) == 3 and "colo-new" not in {i.id for i in resp.items}
    assert resp.bundle_version == bundle.version
    info = rank_pb2_grpc.RankServiceStub(channel).GetInfo(rank_pb2.RankServiceGetInfoRequest())
    assert list(info.serving_versions) == [bundle.version]


def test_a_recorded_event_changes_the_next_recommend(colocated):
    gateway = gateway_pb2_grpc.RecommendServiceStub(channel_to(colocated))
    ask = gateway_pb2.RecommendRequest(user_id="colo-user", k=5)
    first = [i.id for i in gateway.Recommend(ask).items]
    gateway.RecordEvents(
        gateway_pb2.RecordEventsRequest(
            events=[gateway_pb2.Event(user_id="colo-user", item_id=first[0], type="view")]
        )
    )
    resp = gateway.Recommend(ask)
    assert resp.history_length == 1
    assert first[0] not in {i.id for i in resp.items}
