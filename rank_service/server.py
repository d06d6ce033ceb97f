"""Rank service assembly: ``serve(...)`` starts a real server and returns it (port 0 ok).

The first bundle load runs in the background (health NOT_SERVING until it passes its
self-check; the root's PREVIOUS version too, with ``--load-previous``); then the bundle
pointer watcher starts (``--bundle-poll-s``). Hot swap, the versions held during a rollout
and their retirement are :class:`recstack.core.lifecycle.Lifecycle`'s. Stopping the server
closes every core (their batcher threads) after the gRPC server has finished its
in-flight RPCs.
"""

from __future__ import annotations

from rank_service.core import RankCore, rank_lifecycle
from rank_service.servicer import RankAdminServicer, RankServicer
from recstack.core.config import OrtOptions, RankOptions, ServerOptions
from recstack.core.lifecycle import Lifecycle
from recstack.models.batcher import BeforeRunHook
from recstack.runtime import contracts
from recstack.runtime.server import RunningServer, ServiceSpec, start_server
from recstack.v1 import rank_pb2_grpc

SERVICE_NAME = contracts.RANK_SERVICE
ADMIN_SERVICE_NAME = contracts.RANK_ADMIN_SERVICE


def services(lifecycle: Lifecycle[RankCore], options: RankOptions) -> list[ServiceSpec]:
    """RankService and RankAdminService over ``lifecycle``'s cores."""
    servicer = RankServicer(lifecycle, reload_rpc=options.reload_rpc)
    admin = RankAdminServicer(servicer)
    return [
        ServiceSpec(
            SERVICE_NAME, lambda s: rank_pb2_grpc.add_RankServiceServicer_to_server(servicer, s)
        ),
        ServiceSpec(
            ADMIN_SERVICE_NAME,
            lambda s: rank_pb2_grpc.add_RankAdminServiceServicer_to_server(admin, s),
        ),
    ]


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
    lifecycle = rank_lifecycle(options, ort, before_batch=before_batch)

    def load() -> None:
        lifecycle.load_initial()
        lifecycle.start_watching(options.bundle_poll_s)

    running = start_server(server, services(lifecycle, options), load)
    stop_grpc = running.stop

    def stop(grace: float | None = None) -> None:
        # gRPC first (drain, in-flight RPCs finish on their cores), then our threads.
        stop_grpc(grace)
        lifecycle.close()

    running.stop = stop  # type: ignore[method-assign]
    return running
