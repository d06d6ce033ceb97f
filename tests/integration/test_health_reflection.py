"""grpc.health.v1 (Check + Watch), reflection, and NOT_SERVING until a good bundle loads."""

import shutil
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.server import SERVICE_NAME as GATEWAY
from rank_service.server import SERVICE_NAME as RANK
from rank_service.server import serve as serve_rank
from recall_service.replica import Replica
from recall_service.server import SERVICE_NAME as RECALL
from recall_service.server import serve as serve_recall
from recstack.core.config import RankOptions, ServerOptions
from recstack.core.errors import BundleError
from recstack.v1 import recall_pb2, recall_pb2_grpc
from tests.conftest import channel_to, recall_options

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("which", ["recall_server", "rank_server", "gateway_server"])
def test_health_check_and_watch(request, which):
    server = request.getfixturevalue(which)
    names = {"recall_server": RECALL, "rank_server": RANK, "gateway_server": GATEWAY}
    health = health_pb2_grpc.HealthStub(channel_to(server))
    for name in ["", names[which]]:
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=names[which]), timeout=30)
    assert next(iter(watch)).status == SERVING
    watch.cancel()
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_services(gateway_server):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel_to(gateway_server))
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in next(iter(responses)).list_services_response.service}
    assert {GATEWAY, "grpc.health.v1.Health"} <= names


def test_tampered_bundle_never_serves(bundle_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    with (bad / "ranker" / "model.onnx").open("ab") as f:
        f.write(b"\0")
    running = serve_rank(ServerOptions(port=0), RankOptions(bundle=str(bad)))
    try:
        with pytest.raises(BundleError, match="checksum mismatch for ranker/model.onnx"):
            running.wait_ready(60)
        health = health_pb2_grpc.HealthStub(channel_to(running))
        assert health.Check(health_pb2.HealthCheckRequest(service=RANK)).status == NOT_SERVING
    finally:
        running.stop(0)


def test_not_serving_and_unavailable_while_loading(bundle_dir, tmp_path, monkeypatch):
    gate = threading.Event()
    real = Replica._build

    def slow_build(self, bundle):
        gate.wait()  # loading lasts until the test says so (set in its finally too)
        return real(self, bundle)

    monkeypatch.setattr(Replica, "_build", slow_build)
    running = serve_recall(ServerOptions(port=0), recall_options(bundle_dir, tmp_path))
    try:
        channel = channel_to(running)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=RECALL)).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            recall_pb2_grpc.RecallServiceStub(channel).Recall(
                recall_pb2.RecallRequest(query_text="x", k=1), timeout=30
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        gate.set()
        running.wait_ready(60)
        assert health.Check(health_pb2.HealthCheckRequest(service=RECALL)).status == SERVING
        running.drain()
        assert health.Check(health_pb2.HealthCheckRequest(service=RECALL)).status == NOT_SERVING
    finally:
        gate.set()
        running.stop(0)
