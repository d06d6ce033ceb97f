"""Downstream faults: the gateway with a recall shard or the rank service down or slow.

In-process gateways (``gateway.server.serve``, port 0) in front of real recall shards and
rank servers. The gateway only turns SERVING once its downstreams are SERVING, so each
fault is injected after start-up by stopping a downstream server. Expected: Recommend
answers within the caller's deadline with the configured policy (UNAVAILABLE under "fail";
under "partial", OK with the dead shard in ``missing_shards``), a slow downstream gives
DEADLINE_EXCEEDED rather than a hang, the gateway stays SERVING, and the client retries
only idempotent calls (never RecordEvents).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from gateway.server import serve as serve_gateway
from rank_service.server import serve as serve_rank
from recall_service.server import serve as serve_recall
from recstack.client import RecstackClient
from recstack.core.config import GatewayOptions, RankOptions, ServerOptions
from recstack.core.sharding import shard_of
from recstack.runtime.server import RunningServer
from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import READY_TIMEOUT_S, recall_options

# Generous: a healthy Recommend fits in it on a slow machine, and a dead downstream is
# answered at once (connection refused), so the outcome never depends on machine speed.
CALLER_DEADLINE_S = 10.0
JOIN_SLACK_S = 10.0  # the test's own bound: a call not back by then counts as a hang
# The slow-rank call's deadline: recall gets 60% of it and must fit easily, so that the
# DEADLINE_EXCEEDED can only come from the (held) rank stage.
SLOW_RANK_DEADLINE_S = 5.0
RANK_METHOD = "/recstack.v1.RankService/Rank"


def rank_deadline_count() -> float:
    """Rank RPCs a rank server (in this process) answered DEADLINE_EXCEEDED so far."""
    return (
        REGISTRY.get_sample_value(
            "recstack_rpc_requests_total", {"method": RANK_METHOD, "code": "DEADLINE_EXCEEDED"}
        )
        or 0
    )


def started(running: RunningServer) -> RunningServer:
    running.wait_ready(READY_TIMEOUT_S)
    return running


def gateway(
    bundle_dir: Path, state: Path, recall: list[RunningServer], rank: RunningServer, policy: str
) -> RunningServer:
    options = GatewayOptions(
        recall_address=",".join(f"127.0.0.1:{s.port}" for s in recall),
        rank_address=f"127.0.0.1:{rank.port}",
        bundle=str(bundle_dir),
        state_dir=str(state),
        shard_failure_policy=policy,
        max_k=20,
        default_candidates=30,
        max_candidates=40,
    )
    return started(serve_gateway(ServerOptions(port=0), options))


def recommend(server: RunningServer, timeout: float = CALLER_DEADLINE_S, **fields: Any) -> Any:
    """Recommend in a thread; fail if it is not back within timeout + slack (a hang)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = gateway_pb2_grpc.RecommendServiceStub(channel)
            try:
                outcome["response"] = stub.Recommend(
                    gateway_pb2.RecommendRequest(**fields), timeout=timeout
                )
            except grpc.RpcError as err:
                outcome["code"] = err.code()
                outcome["details"] = err.details()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout + JOIN_SLACK_S)
    assert not t.is_alive(), "Recommend hung past the caller's deadline"
    return outcome


def serving(server: RunningServer) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        status = (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            .status
        )
    return status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture()
def user(bundle) -> str:
    return next(iter(bundle.iter_user_histories()))[0]


# ---- rank down ----------------------------------------------------------------------------


def test_rank_stopped_mid_test_gives_unavailable_within_deadline(
    bundle_dir, recall_server, user, tmp_path
):
    rank = started(serve_rank(ServerOptions(port=0), RankOptions(bundle=str(bundle_dir))))
    gw = gateway(bundle_dir, tmp_path / "gw", [recall_server], rank, "fail")
    try:
        ok = recommend(gw, user_id=user, k=5)
        assert len(ok["response"].items) == 5
        rank.stop(0)  # the rank address is now a dead port
        for _ in range(3):
            out = recommend(gw, user_id=user, k=5)
            assert out.get("code") == grpc.StatusCode.UNAVAILABLE, out
            assert "rank" in out["details"]
        assert serving(gw)
        # the popularity fallback needs no downstream and still answers
        fallback = recommend(gw, user_id="fault-new-user", k=3)
        assert fallback["response"].fallback == "popularity"
    finally:
        gw.stop(0)
        rank.stop(0)


# ---- slow rank ----------------------------------------------------------------------------


def test_slow_rank_gives_deadline_exceeded_not_a_hang(bundle_dir, recall_server, user, tmp_path):
    rank = started(
        serve_rank(
            ServerOptions(port=0),
            RankOptions(bundle=str(bundle_dir), max_queue_delay_ms=20_000),
        )
    )
    gw = gateway(bundle_dir, tmp_path / "gw", [recall_server], rank, "fail")
    try:
        before = rank_deadline_count()
        out = recommend(gw, timeout=SLOW_RANK_DEADLINE_S, user_id=user, k=5)
        assert out.get("code") == grpc.StatusCode.DEADLINE_EXCEEDED, out
        # ...and it was the rank stage that ran out: the rank server's own handler gave up
        # (it waits for the same deadline, so it may count just after the gateway answered)
        until = time.monotonic() + JOIN_SLACK_S
        while rank_deadline_count() == before:
            assert time.monotonic() < until, "the request never ran out of time in rank"
            time.sleep(0.01)
        assert serving(gw)
    finally:
        gw.stop(0)
        rank.stop(0)


# ---- a recall shard down ------------------------------------------------------------------


@pytest.fixture()
def two_shards(bundle_dir, tmp_path) -> Iterator[list[RunningServer]]:
    shards = [
        started(
            serve_recall(
                ServerOptions(port=0),
                recall_options(bundle_dir, tmp_path / f"shard{i}", shard_index=i, shard_count=2),
            )
        )
        for i in range(2)
    ]
    yield shards
    for s in shards:
        s.stop(0)


@pytest.mark.parametrize("policy", ["fail", "partial"])
def test_dead_recall_shard_follows_policy(
    policy, two_shards, rank_server, bundle_dir, user, tmp_path
):
    gw = gateway(bundle_dir, tmp_path / "gw", two_shards, rank_server, policy)
    try:
        full = recommend(gw, user_id=user, k=10)["response"]
        assert not full.missing_shards
        assert {shard_of(i.id, 2) for i in full.items} == {0, 1}
        two_shards[1].stop(0)  # shard 1's address is now a dead port
        for _ in range(3):
            out = recommend(gw, user_id=user, k=10)
            if policy == "fail":
                assert out.get("code") == grpc.StatusCode.UNAVAILABLE, out
                assert "recall" in out["details"]
            else:
                response = out.get("response")
                assert response is not None, out
                assert list(response.missing_shards) == [1]
                assert response.items and {shard_of(i.id, 2) for i in response.items} == {0}
        assert serving(gw)
    finally:
        gw.stop(0)


def test_all_shards_dead_fails_even_under_partial(
    two_shards, rank_server, bundle_dir, user, tmp_path
):
    gw = gateway(bundle_dir, tmp_path / "gw", two_shards, rank_server, "partial")
    try:
        for s in two_shards:
            s.stop(0)
        out = recommend(gw, user_id=user, k=10)
        assert out.get("code") == grpc.StatusCode.UNAVAILABLE, out
    finally:
        gw.stop(0)


# ---- retries: idempotent only ---------------------------------------------------------------


class FlakyGateway(gateway_pb2_grpc.RecommendServiceServicer):
    """Counts attempts and answers every call UNAVAILABLE (a gateway mid-restart)."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()

    def Recommend(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.attempts["Recommend"] += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def RecordEvents(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.attempts["RecordEvents"] += len(request.events)
        context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")


def test_client_retries_idempotent_calls_only(recall_server):
    flaky = FlakyGateway()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    gateway_pb2_grpc.add_RecommendServiceServicer_to_server(flaky, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with RecstackClient(
            f"127.0.0.1:{port}", f"127.0.0.1:{recall_server.port}", timeout=10, max_attempts=4
        ) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.record_events([("fault-user", "i0000", "click")])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as err:
                client.recommend(user_id="fault-user", k=3)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)
    # The write reached the server exactly once (one stored event, were it to succeed);
    # the idempotent read was retried up to the client's max_attempts.
    assert flaky.attempts["RecordEvents"] == 1
    assert flaky.attempts["Recommend"] == 4


def test_failed_record_events_stores_nothing_twice(gateway_server, bundle):
    """Through the real gateway: one RecordEvents call, one stored event (no duplicate)."""
    item = next(iter(bundle.iter_catalog())).id
    with RecstackClient(f"127.0.0.1:{gateway_server.port}", timeout=10) as client:
        client.record_events([("fault-once", item, "click")])
        with grpc.insecure_channel(f"127.0.0.1:{gateway_server.port}") as channel:
            removed = (
                gateway_pb2_grpc.RecommendServiceStub(channel)
                .DeleteUser(gateway_pb2.DeleteUserRequest(user_id="fault-once"), timeout=10)
                .events_deleted
            )
    assert removed == 1
