"""Typed Python clients (sync and asyncio) for the gateway and the recall service.

Defaults a caller should not have to think about: every call has a deadline (``timeout``,
default 1 s); idempotent reads (Recommend, Recall, RecallBatch, GetItems, Rank, GetInfo) are retried
with exponential backoff on UNAVAILABLE only, by gRPC itself via the channel's service
config; writes (Upsert, Delete, RecordEvents) are never retried automatically. Errors
arrive as ``grpc.RpcError`` with the status code and a message naming the bad field.
For TLS, mutual TLS and bearer tokens pass ``credentials=recstack.auth.channel_credentials(
ca=..., cert=..., key=..., token=...)``.

    from recstack.client import RecstackClient

    with RecstackClient("127.0.0.1:50050") as client:
        for item in client.recommend(user_id="42", k=5).items:
            print(item.id, item.title, item.score)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
import grpc.aio

from recstack.config import GATEWAY_PORT, RECALL_PORT, ServerOptions
from recstack.domain import MetadataFilter
from recstack.pbconv import filters_to_pb
from recstack.v1 import gateway_pb2, gateway_pb2_grpc, recall_pb2, recall_pb2_grpc
from recstack.vectors import F32Array, pack, unpack_rows, unpack_vector

DEFAULT_TIMEOUT_S = 1.0
IDEMPOTENT = {
    "recstack.v1.RecommendService": ["Recommend"],
    "recstack.v1.RecallService": ["Recall", "RecallBatch", "GetItems", "GetInfo"],
    "recstack.v1.RankService": ["Rank", "GetInfo"],
}


def service_config(max_attempts: int = 4, initial_backoff_s: float = 0.05) -> str:
    """Retry UNAVAILABLE with backoff on idempotent methods; round-robin over addresses.

    ``max_attempts`` counts the first try; 1 disables retries.
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if max_attempts >= 2:
        names = [{"service": s, "method": m} for s, methods in IDEMPOTENT.items() for m in methods]
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": f"{initial_backoff_s}s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def channel_options(
    max_attempts: int = 4, initial_backoff_s: float = 0.05
) -> list[tuple[str, Any]]:
    """Our servers' message-size/keepalive settings plus the retrying service config."""
    config = service_config(max_attempts, initial_backoff_s)
    return [
        *ServerOptions().grpc_options(),
        ("grpc.service_config", config),
        ("grpc.enable_retries", 1),
    ]


def open_channel(
    address: str,
    max_attempts: int = 4,
    initial_backoff_s: float = 0.05,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.Channel:
    """A retrying channel; TLS (and a bearer token) when ``credentials`` are given
    (see recstack.auth.channel_credentials)."""
    options = channel_options(max_attempts, initial_backoff_s)
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


def open_aio_channel(
    address: str,
    max_attempts: int = 4,
    initial_backoff_s: float = 0.05,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    options = channel_options(max_attempts, initial_backoff_s)
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)


def recommend_request(
    user_id: str = "",
    history: Sequence[str] = (),
    query: str = "",
    k: int = 10,
    include_seen: bool = False,
    filters: Iterable[MetadataFilter] = (),
    diversity: float = 0.0,
    candidates: int = 0,
) -> gateway_pb2.RecommendRequest:
    return gateway_pb2.RecommendRequest(
        user_id=user_id,
        history_item_ids=list(history),
        query_text=query,
        k=k,
        include_seen=include_seen,
        filters=filters_to_pb(filters),
        diversity_lambda=diversity,
        candidate_count=candidates,
    )


def events_request(events: Iterable[tuple[str, str, str]]) -> gateway_pb2.RecordEventsRequest:
    """(user_id, item_id, type) tuples, timestamped by the gateway on arrival."""
    return gateway_pb2.RecordEventsRequest(
        events=[gateway_pb2.Event(user_id=u, item_id=i, type=t) for u, i, t in events]
    )


def item_write(
    item_id: str,
    *,
    title: str = "",
    text: str = "",
    metadata: dict[str, Any] | None = None,
    vector: F32Array | None = None,
    embedding_version: str = "",
) -> recall_pb2.ItemWrite:
    return recall_pb2.ItemWrite(
        id=item_id,
        title=title,
        text=text,
        metadata_json=json.dumps(metadata or {}),
        vector=b"" if vector is None else pack(vector),
        embedding_version=embedding_version,
    )


def candidate_vectors(response: recall_pb2.RecallResponse) -> F32Array:
    """The candidates' vectors as one (n, dim) array (requires omit_vectors=False)."""
    return unpack_rows(response.vectors, len(response.ids), response.dim, "vectors")


def candidate_scores(response: recall_pb2.RecallResponse) -> F32Array:
    """The candidates' scores (inner products with the query vector), best first."""
    return unpack_rows(response.scores, 1, len(response.ids), "scores")[0]


def query_vector(response: recall_pb2.RecallResponse) -> F32Array:
    return unpack_vector(response.query_vector, response.dim, "query_vector")


class RecstackClient:
    """Blocking client for the gateway (and, optionally, a recall service)."""

    def __init__(
        self,
        gateway: str = f"127.0.0.1:{GATEWAY_PORT}",
        recall: str = f"127.0.0.1:{RECALL_PORT}",
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = 4,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.timeout = timeout
        self._channels = [
            open_channel(gateway, max_attempts, credentials=credentials),
            open_channel(recall, max_attempts, credentials=credentials),
        ]
        self.gateway = gateway_pb2_grpc.RecommendServiceStub(self._channels[0])
        self.recall_stub = recall_pb2_grpc.RecallServiceStub(self._channels[1])

    def recommend(
        self,
        user_id: str = "",
        history: Sequence[str] = (),
        query: str = "",
        k: int = 10,
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> gateway_pb2.RecommendResponse:
        request = recommend_request(user_id, history, query, k, **options)
        return self.gateway.Recommend(request, timeout=timeout or self.timeout)

    def record_events(
        self, events: Iterable[tuple[str, str, str]], *, timeout: float | None = None
    ) -> int:
        """Store (user_id, item_id, type) events now; returns the committed sequence."""
        request = events_request(events)
        return int(self.gateway.RecordEvents(request, timeout=timeout or self.timeout).sequence)

    def recall(
        self, request: recall_pb2.RecallRequest, *, timeout: float | None = None
    ) -> recall_pb2.RecallResponse:
        return self.recall_stub.Recall(request, timeout=timeout or self.timeout)

    def upsert(self, items: Sequence[recall_pb2.ItemWrite], *, timeout: float | None = None) -> int:
        request = recall_pb2.UpsertRequest(items=list(items))
        return int(self.recall_stub.Upsert(request, timeout=timeout or self.timeout).sequence)

    def delete(self, ids: Sequence[str], *, timeout: float | None = None) -> int:
        request = recall_pb2.DeleteRequest(ids=list(ids))
        return int(self.recall_stub.Delete(request, timeout=timeout or self.timeout).sequence)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> RecstackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRecstackClient:
    """asyncio client for the gateway (grpc.aio), same defaults as RecstackClient."""

    def __init__(
        self,
        gateway: str = f"127.0.0.1:{GATEWAY_PORT}",
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = 4,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.timeout = timeout
        self._channel = open_aio_channel(gateway, max_attempts, credentials=credentials)
        self.gateway = gateway_pb2_grpc.RecommendServiceStub(self._channel)

    async def recommend(
        self,
        user_id: str = "",
        history: Sequence[str] = (),
        query: str = "",
        k: int = 10,
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> gateway_pb2.RecommendResponse:
        request = recommend_request(user_id, history, query, k, **options)
        response: gateway_pb2.RecommendResponse = await self.gateway.Recommend(
            request, timeout=timeout or self.timeout
        )
        return response

    async def record_events(
        self, events: Iterable[tuple[str, str, str]], *, timeout: float | None = None
    ) -> int:
        request = events_request(events)
        response = await self.gateway.RecordEvents(request, timeout=timeout or self.timeout)
        return int(response.sequence)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncRecstackClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
