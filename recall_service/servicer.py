"""Thin gRPC servicer: protobuf <-> domain objects, then the recall core does the work."""

from __future__ import annotations

import grpc

from recall_service.core import RecallCore
from recstack.domain import RecallQuery
from recstack.server import CoreRef, deadline_of
from recstack.v1 import recall_pb2, recall_pb2_grpc
from recstack.vectors import pack, unpack_vector


class RecallServicer(recall_pb2_grpc.RecallServiceServicer):
    """recstack.v1.RecallService over whichever core is loaded."""

    def __init__(self, core: CoreRef[RecallCore]) -> None:
        self.core = core

    def Recall(
        self,
        request: recall_pb2.RecallRequest,
        context: grpc.ServicerContext,
    ) -> recall_pb2.RecallResponse:
        core = self.core.get()
        query = RecallQuery(
            k=request.k,
            query_text=request.query_text,
            history_item_ids=tuple(request.history_item_ids),
            query_vector=(
                unpack_vector(request.query_vector, core.dim, "query_vector")
                if request.query_vector
                else None
            ),
            exclude_ids=tuple(request.exclude_ids),
            omit_vectors=request.omit_vectors,
        )
        result = core.recall(query, deadline_of(context))
        return recall_pb2.RecallResponse(
            candidates=[
                recall_pb2.Candidate(
                    id=c.id,
                    score=c.score,
                    title=c.title,
                    text=c.text,
                    vector=b"" if c.vector is None else pack(c.vector),
                )
                for c in result.candidates
            ],
            query_vector=pack(result.query_vector),
            dim=core.dim,
            bundle_version=result.bundle_version,
        )

    def GetInfo(
        self,
        request: recall_pb2.RecallServiceGetInfoRequest,
        context: grpc.ServicerContext,
    ) -> recall_pb2.RecallServiceGetInfoResponse:
        i = self.core.get().info()
        return recall_pb2.RecallServiceGetInfoResponse(
            bundle_version=i.bundle_version,
            dim=i.dim,
            item_count=i.item_count,
            hnsw_m=i.hnsw_m,
            hnsw_ef_construction=i.hnsw_ef_construction,
            hnsw_ef_search=i.hnsw_ef_search,
            encoder_provider=i.encoder_provider,
            max_k=i.max_k,
        )
