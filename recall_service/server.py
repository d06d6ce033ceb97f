"""Recall service assembly: ``serve(...)`` starts a real server and returns it (port 0 ok)."""

from __future__ import annotations

from recall_service.core import RecallCore, load_core
from recall_service.servicer import RecallServicer
from recstack.config import OrtOptions, RecallOptions, ServerOptions
from recstack.server import CoreRef, RunningServer, ServiceSpec, start_server
from recstack.v1 import recall_pb2, recall_pb2_grpc

SERVICE_NAME = recall_pb2.DESCRIPTOR.services_by_name["RecallService"].full_name


def serve(
    server: ServerOptions, options: RecallOptions, ort: OrtOptions | None = None
) -> RunningServer:
    """Start the recall server; health turns SERVING once the bundle passes its self-check."""
    ref: CoreRef[RecallCore] = CoreRef("recall service")
    servicer = RecallServicer(ref)
    session_options = (ort or OrtOptions()).session_options()
    return start_server(
        server,
        [
            ServiceSpec(
                SERVICE_NAME,
                lambda s: recall_pb2_grpc.add_RecallServiceServicer_to_server(servicer, s),
            )
        ],
        lambda: ref.set(load_core(options, session_options)),
    )
