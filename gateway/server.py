"""Gateway assembly: ``serve(...)`` starts a real server and returns it (port 0 ok).

Loading means: read the user profiles (if a bundle is given) and wait until both
downstream services answer their health checks as SERVING, so the gateway only reports
SERVING when a Recommend can succeed.
"""

from __future__ import annotations

from pathlib import Path

from gateway.clients import GrpcRank, GrpcRecall, ShardedRecall, shard_targets
from gateway.core import GatewayCore, assemble, open_events
from gateway.events import EventStore
from gateway.servicer import RecommendServicer
from recstack.client import open_channel, wait_serving
from recstack.core.bundle import Bundle
from recstack.core.config import GatewayOptions, ServerOptions
from recstack.runtime import contracts, tracing
from recstack.runtime.auth import channel_credentials
from recstack.runtime.server import CoreRef, RunningServer, ServiceSpec, start_server
from recstack.v1 import gateway_pb2_grpc

SERVICE_NAME = contracts.GATEWAY_SERVICE
DOWNSTREAM_WAIT_S = 300.0


def service(ref: CoreRef[GatewayCore]) -> ServiceSpec:
    """RecommendService over the gateway core ``ref`` will hold once loaded."""
    servicer = RecommendServicer(ref)
    return ServiceSpec(
        SERVICE_NAME, lambda s: gateway_pb2_grpc.add_RecommendServiceServicer_to_server(servicer, s)
    )


def serve(server: ServerOptions, options: GatewayOptions) -> RunningServer:
    """Start the gateway; health turns SERVING when profiles are loaded and every recall
    shard and the rank service are SERVING."""
    ref: CoreRef[GatewayCore] = CoreRef("gateway")
    addresses = shard_targets(options.recall_address)
    token = (
        Path(options.downstream_token_file).read_text().strip()
        if options.downstream_token_file
        else ""
    )
    credentials = channel_credentials(
        options.downstream_tls_ca, options.downstream_tls_cert, options.downstream_tls_key, token
    )
    recall_channels = [open_channel(a, credentials=credentials) for a in addresses]
    rank_channel = open_channel(options.rank_address, credentials=credentials)

    state: dict[str, EventStore] = {}

    def load() -> None:
        # One verified read of the bundle seeds profiles, popularity and fallback titles.
        bundle = Bundle.open(options.bundle, verify="on_use") if options.bundle else None
        events = state["events"] = open_events(options, bundle)
        for channel in recall_channels:
            wait_serving(channel, contracts.RECALL_SERVICE, DOWNSTREAM_WAIT_S)
        wait_serving(rank_channel, contracts.RANK_SERVICE, DOWNSTREAM_WAIT_S)
        # Instrumented here, after start_server has configured tracing (a no-op when off).
        recall = ShardedRecall(
            [GrpcRecall(tracing.instrument(c)) for c in recall_channels],
            options.shard_failure_policy,
        )
        rank = GrpcRank(tracing.instrument(rank_channel))
        ref.set(
            assemble(options, bundle, recall, rank, events, rank.side_features(DOWNSTREAM_WAIT_S))
        )

    def close() -> None:
        if "events" in state:
            state["events"].close()

    return start_server(server, [service(ref)], load, on_stop=close)
