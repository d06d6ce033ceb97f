"""Thin gRPC servicer: protobuf <-> domain objects, then the rank core does the work."""

from __future__ import annotations

import grpc

from rank_service.core import RankCore
from recstack.domain import RankQuery
from recstack.server import CoreRef, deadline_of
from recstack.v1 import rank_pb2, rank_pb2_grpc
from recstack.vectors import unpack_rows, unpack_vector


class RankServicer(rank_pb2_grpc.RankServiceServicer):
    """recstack.v1.RankService over whichever core is loaded."""

    def __init__(self, core: CoreRef[RankCore]) -> None:
        self.core = core

    def Rank(
        self,
        request: rank_pb2.RankRequest,
        context: grpc.ServicerContext,
    ) -> rank_pb2.RankResponse:
        core = self.core.get()
        ids = tuple(request.candidate_ids)
        query = RankQuery(
            user_vector=unpack_vector(request.user_vector, core.dim, "user_vector"),
            candidate_ids=ids,
            candidate_vectors=unpack_rows(
                request.candidate_vectors, len(ids), core.dim, "candidate_vectors"
            ),
            embedding_version=request.embedding_version,
            top_k=request.top_k,
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
        i = self.core.get().info()
        return rank_pb2.RankServiceGetInfoResponse(
            bundle_version=i.bundle_version,
            dim=i.dim,
            execution_provider=i.execution_provider,
            max_candidates=i.max_candidates,
        )
