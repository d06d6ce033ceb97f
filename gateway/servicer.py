"""Thin gRPC servicer: protobuf <-> domain objects, then the gateway core does the work."""

from __future__ import annotations

import grpc

from gateway.core import GatewayCore
from gateway.events import Event
from recstack.domain import RecommendQuery
from recstack.pbconv import filters_from_pb
from recstack.server import CoreRef, deadline_of
from recstack.v1 import gateway_pb2, gateway_pb2_grpc


class RecommendServicer(gateway_pb2_grpc.RecommendServiceServicer):
    """recstack.v1.RecommendService over the gateway core."""

    def __init__(self, core: CoreRef[GatewayCore]) -> None:
        self.core = core

    def Recommend(
        self, request: gateway_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.RecommendResponse:
        query = RecommendQuery(
            user_id=request.user_id,
            history_item_ids=tuple(request.history_item_ids),
            query_text=request.query_text,
            k=request.k,
            include_seen=request.include_seen,
            candidate_count=request.candidate_count,
            filters=filters_from_pb(request.filters),
            diversity_lambda=request.diversity_lambda,
        )
        result = self.core.get().recommend(query, deadline_of(context))
        return gateway_pb2.RecommendResponse(
            items=[
                gateway_pb2.RecommendedItem(
                    id=i.id,
                    score=i.score,
                    title=i.title,
                    text=i.text,
                    recall_score=i.recall_score,
                    because_item_id=i.because_item_id,
                    because_title=i.because_title,
                    because_query=i.because_query,
                )
                for i in result.items
            ],
            bundle_version=result.bundle_version,
            history_length=result.history_length,
            timings=[
                gateway_pb2.StageTiming(stage=s, millis=ms) for s, ms in result.timings.items()
            ],
            fallback=result.fallback,
            missing_shards=result.missing_shards,
        )

    def RecordEvents(
        self, request: gateway_pb2.RecordEventsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.RecordEventsResponse:
        events = [Event(e.user_id, e.item_id, e.type, e.timestamp_ms) for e in request.events]
        return gateway_pb2.RecordEventsResponse(sequence=self.core.get().record_events(events))

    def DeleteUser(
        self, request: gateway_pb2.DeleteUserRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.DeleteUserResponse:
        removed = self.core.get().delete_user(request.user_id)
        return gateway_pb2.DeleteUserResponse(events_deleted=removed)
