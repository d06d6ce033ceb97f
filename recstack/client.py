"""Typed Python clients (sync and asyncio) for the gateway and the recall service.

Defaults a caller should not have to think about: every call has a deadline (``timeout``,
default 1 s); methods the protos declare NO_SIDE_EFFECTS or IDEMPOTENT (Recommend, Recall,
RecallBatch, GetItems, Rank, GetInfo, Delete, DeleteUser) are retried with exponential
backoff on UNAVAILABLE only, by gRPC itself via the channel's service config
(recstack.runtime.contracts, the same document as protos/recstack/v1/service_config.json); other
writes (Upsert, RecordEvents) are never retried automatically. A failed call raises
``RecstackRpcError`` (a ``grpc.RpcError``: ``code()``, ``details()``) with the decoded
google.rpc details: ``reason``, ``fields`` (one per offending field), ``metadata`` and
``retry_delay_s`` (see recstack.core.errors); ``error_details(err)`` decodes any RpcError.
For TLS, mutual TLS and bearer tokens pass ``credentials=recstack.runtime.auth.channel_credentials(
ca=..., cert=..., key=..., token=...)``.

    from recstack.client import RecstackClient

    with RecstackClient("127.0.0.1:50050") as client:
        for item in client.recommend(user_id="42", k=5).items:
            print(item.id, item.title, item.score)
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recstack.core.config import GATEWAY_PORT, RECALL_PORT, ServerOptions
from recstack.core.domain import MetadataFilter
from recstack.core.errors import ErrorDetails, details_from_trailers
from recstack.core.vectors import F32Array, pack, unpack_rows, unpack_vector
from recstack.runtime import contracts
from recstack.runtime.pbconv import filters_to_pb
from recstack.v1 import gateway_pb2, gateway_pb2_grpc, recall_pb2, recall_pb2_grpc

DEFAULT_TIMEOUT_S = 1.0
R = TypeVar("R")


class RecstackRpcError(grpc.RpcError):  # type: ignore[misc]
    """A failed call: the gRPC status plus its decoded google.rpc details."""

    def __init__(self, error: grpc.RpcError) -> None:
        super().__init__(str(error))
        self.error = error
        self.rich: ErrorDetails | None = error_details(error)

    def code(self) -> grpc.StatusCode:
        return self.error.code()

    def details(self) -> str | None:
        return self.error.details()

    def trailing_metadata(self) -> Any:
        return self.error.trailing_metadata()

    @property
    def reason(self) -> str:
        """ErrorInfo.reason (stable, UPPER_SNAKE); "" when the server sent none."""
        return self.rich.reason if self.rich else ""

    @property
    def fields(self) -> tuple[str, ...]:
        """The offending request fields (BadRequest field violations)."""
        return self.rich.fields if self.rich else ()

    @property
    def metadata(self) -> Mapping[str, str]:
        """ErrorInfo.metadata, e.g. ``limit`` and ``value`` for LIMIT_EXCEEDED."""
        return self.rich.metadata if self.rich else {}

    @property
    def retry_delay_s(self) -> float | None:
        """RetryInfo: when to retry after load shedding (RESOURCE_EXHAUSTED)."""
        return self.rich.retry_delay_s if self.rich else None

    def __str__(self) -> str:
        return f"{self.code().name}: {self.details()}"


def error_details(error: grpc.RpcError) -> ErrorDetails | None:
    """The google.rpc details (grpc-status-details-bin) of any RpcError, or None."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return details_from_trailers(trailers)


def _call(method: Callable[..., R], request: Any, timeout: float) -> R:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as err:
        raise RecstackRpcError(err) from err


async def _acall(method: Callable[..., Awaitable[R]], request: Any, timeout: float) -> R:
    try:
        return await method(request, timeout=timeout)
    except grpc.RpcError as err:
        raise RecstackRpcError(err) from err


def service_config(
    max_attempts: int = contracts.MAX_ATTEMPTS,
    initial_backoff_s: float = contracts.INITIAL_BACKOFF_S,
) -> str:
    """Retry UNAVAILABLE with backoff on the methods the protos declare idempotent;
    round-robin over addresses (recstack.runtime.contracts). ``max_attempts`` counts the first
    try; 1 disables retries."""
    return json.dumps(
        contracts.service_config(max_attempts=max_attempts, initial_backoff_s=initial_backoff_s)
    )


def channel_options(
    max_attempts: int = contracts.MAX_ATTEMPTS,
    initial_backoff_s: float = contracts.INITIAL_BACKOFF_S,
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
    max_attempts: int = contracts.MAX_ATTEMPTS,
    initial_backoff_s: float = contracts.INITIAL_BACKOFF_S,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.Channel:
    """A retrying channel; TLS (and a bearer token) when ``credentials`` are given
    (see recstack.runtime.auth.channel_credentials)."""
    options = channel_options(max_attempts, initial_backoff_s)
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


def open_aio_channel(
    address: str,
    max_attempts: int = contracts.MAX_ATTEMPTS,
    initial_backoff_s: float = contracts.INITIAL_BACKOFF_S,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    options = channel_options(max_attempts, initial_backoff_s)
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)


def wait_serving(
    channel: grpc.Channel,
    service: str = "",
    timeout_s: float = 120.0,
    *,
    alive: Callable[[], None] | None = None,
    what: str = "",
) -> None:
    """Poll ``grpc.health.v1`` Check until ``service`` ("" = the whole server) is SERVING
    (the one health wait of the project: the gateway waiting for its downstreams, launchers,
    the load generator, benches). ``alive()``, called between polls, may raise to stop
    waiting (a launcher whose process died). TimeoutError names the last status seen."""
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    end = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        if alive is not None:
            alive()
        try:
            status = stub.Check(request, timeout=2).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        except grpc.RpcError as exc:
            last = exc.code().name if hasattr(exc, "code") else type(exc).__name__
        if time.monotonic() >= end:
            name = f"{what}: " if what else ""
            raise TimeoutError(
                f"{name}{service or 'server'} not SERVING within {timeout_s:g}s (last: {last})"
            )
        time.sleep(0.1)


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


EventTuple = tuple[str, str, str] | tuple[str, str, str, int]


def events_request(events: Iterable[EventTuple]) -> gateway_pb2.RecordEventsRequest:
    """(user_id, item_id, type[, timestamp_ms]) tuples; without a time (or 0) the gateway
    stamps the event on arrival."""
    return gateway_pb2.RecordEventsRequest(
        events=[
            gateway_pb2.Event(
                user_id=e[0], item_id=e[1], type=e[2], timestamp_ms=e[3] if len(e) > 3 else 0
            )
            for e in events
        ]
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


def _sequence(response: Any) -> int:
    return int(response.sequence)


class _Rpcs:
    """Every RPC of RecommendService and RecallService, defined once: the request each
    method builds and what it returns from the answer. :class:`RecstackClient` runs them
    blocking, :class:`AsyncRecstackClient` returns an awaitable of the same value; the
    subclasses differ only in ``_run`` and the channels they open."""

    timeout: float
    gateway: gateway_pb2_grpc.RecommendServiceStub
    recall_stub: recall_pb2_grpc.RecallServiceStub

    def _run(
        self,
        method: Callable[..., Any],
        request: Any,
        timeout: float | None,
        finish: Callable[[Any], Any] | None = None,
    ) -> Any:
        raise NotImplementedError

    _open_channel: Callable[..., Any]  # open_channel or open_aio_channel

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
            self._open_channel(gateway, max_attempts, credentials=credentials),
            self._open_channel(recall, max_attempts, credentials=credentials),
        ]
        self.gateway = gateway_pb2_grpc.RecommendServiceStub(self._channels[0])
        self.recall_stub = recall_pb2_grpc.RecallServiceStub(self._channels[1])

    # RecommendService
    def recommend(
        self,
        user_id: str = "",
        history: Sequence[str] = (),
        query: str = "",
        k: int = 10,
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """A RecommendResponse (``recommend_request`` names the options)."""
        request = recommend_request(user_id, history, query, k, **options)
        return self._run(self.gateway.Recommend, request, timeout)

    def record_events(self, events: Iterable[EventTuple], *, timeout: float | None = None) -> Any:
        """Store (user_id, item_id, type[, timestamp_ms]) events; the committed sequence."""
        return self._run(self.gateway.RecordEvents, events_request(events), timeout, _sequence)

    def delete_user(self, user_id: str, *, timeout: float | None = None) -> Any:
        """Delete a user's stored events (and hide their seed history); how many."""
        request = gateway_pb2.DeleteUserRequest(user_id=user_id)
        return self._run(self.gateway.DeleteUser, request, timeout, lambda r: int(r.events_deleted))

    # RecallService
    def recall(self, request: recall_pb2.RecallRequest, *, timeout: float | None = None) -> Any:
        """A RecallResponse (``candidate_vectors``/``candidate_scores`` unpack it)."""
        return self._run(self.recall_stub.Recall, request, timeout)

    def recall_batch(
        self, requests: Sequence[recall_pb2.RecallRequest], *, timeout: float | None = None
    ) -> Any:
        """One RecallResponse per request, in order."""
        request = recall_pb2.RecallBatchRequest(requests=list(requests))
        return self._run(
            self.recall_stub.RecallBatch, request, timeout, lambda r: list(r.responses)
        )

    def get_items(self, ids: Sequence[str], *, timeout: float | None = None) -> Any:
        """A GetItemsResponse: the items as the replica serves them now."""
        return self._run(
            self.recall_stub.GetItems, recall_pb2.GetItemsRequest(ids=list(ids)), timeout
        )

    def upsert(self, items: Sequence[recall_pb2.ItemWrite], *, timeout: float | None = None) -> Any:
        """Add or replace items (``item_write`` builds one); the committed sequence."""
        request = recall_pb2.UpsertRequest(items=list(items))
        return self._run(self.recall_stub.Upsert, request, timeout, _sequence)

    def delete(self, ids: Sequence[str], *, timeout: float | None = None) -> Any:
        """Remove items; the committed sequence."""
        request = recall_pb2.DeleteRequest(ids=list(ids))
        return self._run(self.recall_stub.Delete, request, timeout, _sequence)

    def recall_info(self, *, timeout: float | None = None) -> Any:
        """The recall service's RecallServiceGetInfoResponse (bundle, versions, counts)."""
        request = recall_pb2.RecallServiceGetInfoRequest()
        return self._run(self.recall_stub.GetInfo, request, timeout)


class RecstackClient(_Rpcs):
    """Blocking client for the gateway and a recall service (every method of
    :class:`_Rpcs`, returning its value)."""

    _open_channel = staticmethod(open_channel)

    def _run(
        self,
        method: Callable[..., Any],
        request: Any,
        timeout: float | None,
        finish: Callable[[Any], Any] | None = None,
    ) -> Any:
        response = _call(method, request, timeout or self.timeout)
        return response if finish is None else finish(response)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> RecstackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRecstackClient(_Rpcs):
    """asyncio client (grpc.aio), same methods and defaults as :class:`RecstackClient`:
    each returns an awaitable of the same value."""

    _open_channel = staticmethod(open_aio_channel)

    def _run(
        self,
        method: Callable[..., Any],
        request: Any,
        timeout: float | None,
        finish: Callable[[Any], Any] | None = None,
    ) -> Any:
        async def call() -> Any:
            response = await _acall(method, request, timeout or self.timeout)
            return response if finish is None else finish(response)

        return call()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)

    async def __aenter__(self) -> AsyncRecstackClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
