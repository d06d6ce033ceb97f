"""Rank service assembly: ``serve(...)`` starts a real server and returns it (port 0 ok)."""

from __future__ import annotations

from rank_service.core import RankCore, load_core
from rank_service.servicer import RankServicer
from recstack.config import OrtOptions, RankOptions, ServerOptions
from recstack.server import CoreRef, RunningServer, ServiceSpec, start_server
from recstack.v1 import rank_pb2, rank_pb2_grpc

SERVICE_NAME = rank_pb2.DESCRIPTOR.services_by_name["RankService"].full_name


def serve(
    server: ServerOptions, options: RankOptions, ort: OrtOptions | None = None
) -> RunningServer:
    """Start the rank server; health turns SERVING once the ranker passes its self-check."""
    ref: CoreRef[RankCore] = CoreRef("rank service")
    servicer = RankServicer(ref)
    session_options = (ort or OrtOptions()).session_options()
    return start_server(
        server,
        [
            ServiceSpec(
                SERVICE_NAME, lambda s: rank_pb2_grpc.add_RankServiceServicer_to_server(servicer, s)
            )
        ],
        lambda: ref.set(load_core(options, session_options)),
    )
