"""Recall service assembly: ``serve(...)`` starts a real server and returns it (port 0 ok)."""

from __future__ import annotations

from recall_service.replica import Replica
from recall_service.servicer import RecallAdminServicer, RecallServicer
from recstack.core.config import OrtOptions, RecallOptions, ServerOptions
from recstack.runtime import contracts
from recstack.runtime.server import RunningServer, ServiceSpec, start_server
from recstack.v1 import recall_pb2_grpc

SERVICE_NAME = contracts.RECALL_SERVICE
ADMIN_SERVICE_NAME = contracts.RECALL_ADMIN_SERVICE


def services(replica: Replica) -> list[ServiceSpec]:
    """RecallService and RecallAdminService over ``replica``."""
    servicer = RecallServicer(replica)
    admin = RecallAdminServicer(replica)
    return [
        ServiceSpec(
            SERVICE_NAME,
            lambda s: recall_pb2_grpc.add_RecallServiceServicer_to_server(servicer, s),
        ),
        ServiceSpec(
            ADMIN_SERVICE_NAME,
            lambda s: recall_pb2_grpc.add_RecallAdminServiceServicer_to_server(admin, s),
        ),
    ]


def serve(
    server: ServerOptions, options: RecallOptions, ort: OrtOptions | None = None
) -> RunningServer:
    """Start the recall server; health turns SERVING once the bundle is loaded, the log
    replayed and the self-check passed. ``running.replica`` is the replica."""
    replica = Replica(options, (ort or OrtOptions()).session_options())
    return start_server(server, services(replica), replica.load, on_stop=replica.close)
