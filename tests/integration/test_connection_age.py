"""--max-connection-age-s: the server closes (GOAWAY) a client connection once it is that
old, so clients reconnect (and reach replicas added since); calls keep succeeding."""

from __future__ import annotations

import threading

import grpc

from rank_service.server import serve
from recstack.core.config import RankOptions, ServerOptions
from recstack.v1 import rank_pb2, rank_pb2_grpc
from tests.conftest import READY_TIMEOUT_S

WAIT_S = 60.0


def test_server_options_carry_the_connection_age():
    options = dict(
        ServerOptions(max_connection_age_s=2.5, max_connection_age_grace_s=4).server_grpc_options()
    )
    assert options["grpc.max_connection_age_ms"] == 2500
    assert options["grpc.max_connection_age_grace_ms"] == 4000
    assert "grpc.max_connection_age_ms" not in dict(
        ServerOptions(max_connection_age_s=0).server_grpc_options()
    )
    # clients get the shared transport options only
    assert "grpc.max_connection_age_ms" not in dict(ServerOptions().grpc_options())


def test_an_old_connection_is_closed_and_the_client_reconnects(bundle_dir):
    running = serve(
        ServerOptions(port=0, max_connection_age_s=1.0, max_connection_age_grace_s=1.0),
        RankOptions(bundle=str(bundle_dir), bundle_poll_s=0),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    left_ready = threading.Event()
    seen: list[grpc.ChannelConnectivity] = []

    def watch(state: grpc.ChannelConnectivity) -> None:
        seen.append(state)
        if grpc.ChannelConnectivity.READY in seen and state != grpc.ChannelConnectivity.READY:
            left_ready.set()

    try:
        running.wait_ready(READY_TIMEOUT_S)
        stub = rank_pb2_grpc.RankServiceStub(channel)
        channel.subscribe(watch, try_to_connect=True)
        info = stub.GetInfo(rank_pb2.RankServiceGetInfoRequest(), timeout=WAIT_S)
        # the server ends the connection by itself: the channel leaves READY without us
        # closing it or the server stopping
        assert left_ready.wait(WAIT_S), f"connection never closed by the server: {seen}"
        again = stub.GetInfo(rank_pb2.RankServiceGetInfoRequest(), timeout=WAIT_S)
        assert again.bundle_version == info.bundle_version
    finally:
        channel.unsubscribe(watch)
        channel.close()
        running.stop(0)
