"""Thin gRPC servicer: protobuf <-> domain objects, then the rank core does the work."""

from __future__ import annotations

import grpc
import numpy as np

from rank_service.core import RankCore
from recstack.domain import RankQuery
from recstack.errors import FailedPrecondition, InvalidArgument
from recstack.lifecycle import Lifecycle, ReloadOutcome
from recstack.server import deadline_of
from recstack.v1 import rank_pb2, rank_pb2_grpc
from recstack.vectors import WIRE_DTYPE, F32Array, unpack_rows, unpack_vector


def unpack_flat(data: bytes, field: str) -> F32Array | None:
    """Packed float32 bytes as a flat array (None if empty); the core checks the shape."""
    if not data:
        return None
    if len(data) % WIRE_DTYPE.itemsize:
        raise InvalidArgument(
            f"{len(data)} bytes is not a whole number of float32 values", field=field
        )
    return np.frombuffer(data, dtype=WIRE_DTYPE).astype(np.float32)


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
            ids = tuple(request.candidate_ids)
            query = RankQuery(
                user_vector=unpack_vector(request.user_vector, core.dim, "user_vector"),
                candidate_ids=ids,
                candidate_vectors=unpack_rows(
                    request.candidate_vectors, len(ids), core.dim, "candidate_vectors"
                ),
                embedding_version=request.embedding_version,
                top_k=request.top_k,
                diversity_lambda=request.diversity_lambda,
                candidate_features=unpack_flat(request.candidate_features, "candidate_features"),
            )
            result = core.rank(query, deadline_of(context))
        return rank_pb2.RankResponse(
            items=[rank_pb2.ScoredItem(id=i.id, score=i.score) for i in result.items],
            bundle_version=result.bundle_version,
        )

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
