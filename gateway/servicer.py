"""Thin gRPC servicer: protobuf <-> domain objects, then the gateway core does the work."""

from __future__ import annotations

import grpc

from gateway.core import GatewayCore
from gateway.events import Event
from recstack.runtime.pbconv import recommend_query_from_pb, recommend_result_to_pb
from recstack.runtime.server import CoreRef, deadline_of
from recstack.v1 import gateway_pb2, gateway_pb2_grpc


class RecommendServicer(gateway_pb2_grpc.RecommendServiceServicer):
    """recstack.v1.RecommendService over the gateway core."""

    def __init__(self, core: CoreRef[GatewayCore]) -> None:
        self.core = core

    def Recommend(
        self, request: gateway_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.RecommendResponse:
        query = recommend_query_from_pb(request)
        result = self.core.get().recommend(query, deadline_of(context))
        return recommend_result_to_pb(result)

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
