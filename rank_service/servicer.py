"""Thin gRPC servicer: protobuf <-> domain objects, then the rank core does the work."""

from __future__ import annotations

import grpc

from rank_service.core import RankCore
from recstack.core.errors import FailedPrecondition, InvalidArgument
from recstack.core.lifecycle import Lifecycle, ReloadOutcome
from recstack.runtime.pbconv import rank_query_from_pb, rank_result_to_pb
from recstack.runtime.server import deadline_of
from recstack.v1 import rank_pb2, rank_pb2_grpc


class RankServicer(rank_pb2_grpc.RankServiceServicer):
    """recstack.v1.RankService over the cores of whichever versions are loaded."""

    def __init__(self, lifecycle: Lifecycle[RankCore], *, reload_rpc: bool = True) -> None:
        self.lifecycle = lifecycle
        self.versions = lifecycle.versions
        self.reload_rpc = reload_rpc

    def Rank(
        self,
        request: rank_pb2.RankRequest,
        context: grpc.ServicerContext,
    ) -> rank_pb2.RankResponse:
        if not request.embedding_version:
            raise InvalidArgument(
                "required (the bundle version the vectors came from)", field="embedding_version"
            )
        # The core of the version the vectors came from (never another embedding space).
        with self.versions.lease(request.embedding_version) as core:
            query = rank_query_from_pb(request, core.dim)
            result = core.rank(query, deadline_of(context))
        return rank_result_to_pb(result)

    def GetInfo(
        self,
        request: rank_pb2.RankServiceGetInfoRequest,
        context: grpc.ServicerContext,
    ) -> rank_pb2.RankServiceGetInfoResponse:
        i = self.versions.primary().info()
        return rank_pb2.RankServiceGetInfoResponse(
            bundle_version=i.bundle_version,
            dim=i.dim,
            execution_provider=i.execution_provider,
            max_candidates=i.max_candidates,
            side_features=list(i.side_features),
            batching=i.batching,
            max_batch_rows=i.max_batch_rows,
            serving_versions=list(self.versions.held()),
        )

    def reload(self, expected_version: str) -> ReloadOutcome:
        """The reload of both admin RPCs (RankAdminService.ReloadBundle, deprecated Reload)."""
        if not self.reload_rpc:
            raise FailedPrecondition(
                "the reload RPC is disabled on this server (--reload-rpc)", reason="RELOAD_DISABLED"
            )
        self.versions.primary()  # UNAVAILABLE while the first bundle is still loading
        return self.lifecycle.reload(expected_version)

    def Reload(
        self,
        request: rank_pb2.RankServiceReloadRequest,
        context: grpc.ServicerContext,
    ) -> rank_pb2.RankServiceReloadResponse:
        """Deprecated alias of RankAdminService.ReloadBundle (one release)."""
        outcome = self.reload(request.expected_version)
        return rank_pb2.RankServiceReloadResponse(
            bundle_version=outcome.bundle_version,
            previous_version=outcome.previous_version,
            swapped=outcome.swapped,
        )


class RankAdminServicer(rank_pb2_grpc.RankAdminServiceServicer):
    """recstack.v1.RankAdminService: the operator RPCs, over the same reloader."""

    def __init__(self, rank: RankServicer) -> None:
        self.rank = rank

    def ReloadBundle(
        self,
        request: rank_pb2.RankAdminServiceReloadBundleRequest,
        context: grpc.ServicerContext,
    ) -> rank_pb2.RankAdminServiceReloadBundleResponse:
        outcome = self.rank.reload(request.expected_version)
        return rank_pb2.RankAdminServiceReloadBundleResponse(
            bundle_version=outcome.bundle_version,
            previous_version=outcome.previous_version,
            swapped=outcome.swapped,
        )
