"""Rank service assembly: ``serve(...)`` starts a real server and returns it (port 0 ok).

The first bundle load runs in the background (health NOT_SERVING until it passes its
self-check); then the bundle pointer watcher starts (``--bundle-poll-s``). Stopping the
server stops the watcher and retires the serving core (its batcher thread) after the gRPC
server has finished its in-flight RPCs.
"""

from __future__ import annotations

from rank_service.core import RankCore
from rank_service.reload import BundleReloader
from rank_service.servicer import RankAdminServicer, RankServicer
from recstack.batcher import BeforeRunHook
from recstack.config import OrtOptions, RankOptions, ServerOptions
from recstack.server import CoreRef, RunningServer, ServiceSpec, start_server
from recstack.v1 import rank_pb2, rank_pb2_grpc

SERVICE_NAME = rank_pb2.DESCRIPTOR.services_by_name["RankService"].full_name
ADMIN_SERVICE_NAME = rank_pb2.DESCRIPTOR.services_by_name["RankAdminService"].full_name


def serve(
    server: ServerOptions,
    options: RankOptions,
    ort: OrtOptions | None = None,
    *,
    before_batch: BeforeRunHook | None = None,
) -> RunningServer:
    """Start the rank server; health turns SERVING once the ranker passes its self-check.

    ``before_batch`` (tests only) is called by the batcher's worker before each merged run.
    """
    ref: CoreRef[RankCore] = CoreRef("rank service")
    session_options = (ort or OrtOptions()).session_options(options.optimized_model_path or None)
    reloader = BundleReloader(ref, options, session_options, before_batch=before_batch)
    servicer = RankServicer(ref, reloader if options.reload_rpc else None)
    admin = RankAdminServicer(servicer)

    def load() -> None:
        reloader.load_initial()
        reloader.start_watching(options.bundle_poll_s)

    running = start_server(
        server,
        [
            ServiceSpec(
                SERVICE_NAME, lambda s: rank_pb2_grpc.add_RankServiceServicer_to_server(servicer, s)
            ),
            ServiceSpec(
                ADMIN_SERVICE_NAME,
                lambda s: rank_pb2_grpc.add_RankAdminServiceServicer_to_server(admin, s),
            ),
        ],
        load,
    )
    stop_grpc = running.stop

    def stop(grace: float | None = None) -> None:
        # gRPC first (drain, in-flight RPCs finish on their cores), then our threads.
        stop_grpc(grace)
        reloader.close()

    running.stop = stop  # type: ignore[method-assign]
    return running
