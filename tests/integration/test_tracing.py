"""OpenTelemetry traces across the real stack: gateway -> two recall shards + rank.

The three services run in this process with an in-memory exporter installed (the same
interceptors and channel instrumentation ``--otlp-endpoint`` turns on). One Recommend must
produce one trace: the gateway's SERVER span (child of the caller's ``traceparent``), a
CLIENT span per downstream call (the shard fan-out runs in threads) and each downstream's
SERVER span as the child of the matching CLIENT span.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.server import serve as serve_gateway
from rank_service.server import serve as serve_rank
from recall_service.server import serve as serve_recall
from recstack.client import open_channel, recommend_request
from recstack.core.config import GatewayOptions, RankOptions, ServerOptions
from recstack.runtime import tracing
from recstack.runtime.server import RunningServer
from recstack.tools.procs import free_port
from recstack.v1 import gateway_pb2_grpc
from tests.conftest import READY_TIMEOUT_S, recall_options

RECOMMEND = "recstack.v1.RecommendService/Recommend"
RECALL = "recstack.v1.RecallService/Recall"
RANK = "recstack.v1.RankService/Rank"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


class Stack:
    def __init__(self, exporter: InMemorySpanExporter, gateway: RunningServer) -> None:
        self.exporter = exporter
        self.gateway = gateway
        self.stub = gateway_pb2_grpc.RecommendServiceStub(
            open_channel(f"127.0.0.1:{gateway.port}", max_attempts=1)
        )

    def recommend(self, metadata: tuple[tuple[str, str], ...] = (), **request: Any) -> Any:
        self.exporter.clear()
        return self.stub.Recommend(
            recommend_request(**request), timeout=30, metadata=metadata or None
        )

    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture(scope="module")
def stack(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)  # before the servers start: they pick up the interceptors
    state = tmp_path_factory.mktemp("traced")
    running: list[RunningServer] = []
    try:
        for i in range(2):
            options = recall_options(bundle_dir, state / f"shard{i}", shard_index=i, shard_count=2)
            running.append(serve_recall(ServerOptions(port=0), options))
        running.append(serve_rank(ServerOptions(port=0), RankOptions(bundle=str(bundle_dir))))
        for server in running:
            server.wait_ready(READY_TIMEOUT_S)
        gateway = serve_gateway(
            ServerOptions(port=0, metrics_port=free_port()),
            GatewayOptions(
                recall_address=",".join(f"127.0.0.1:{s.port}" for s in running[:2]),
                rank_address=f"127.0.0.1:{running[2].port}",
                bundle=str(bundle_dir),
                state_dir=str(state / "gateway"),
            ),
        )
        running.append(gateway)
        gateway.wait_ready(READY_TIMEOUT_S)
        yield Stack(exporter, gateway)
    finally:
        for server in reversed(running):
            server.stop(0)
        tracing.uninstall()
        provider.shutdown()


def hexid(value: int, width: int) -> str:
    return f"{value:0{width}x}"


def one(spans: list[Any], name: str, kind: SpanKind) -> Any:
    found = [s for s in spans if s.name == name and s.kind == kind]
    assert len(found) == 1, f"{name} {kind}: {[(s.name, s.kind) for s in spans]}"
    return found[0]


def assert_one_trace(spans: list[Any], root_parent: str | None) -> str:
    """The Recommend trace's shape; returns its trace id."""
    gateway = one(spans, RECOMMEND, SpanKind.SERVER)
    trace_id = gateway.context.trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}, "spans of more than one trace"
    if root_parent is None:
        assert gateway.parent is None
    else:
        assert gateway.parent is not None and gateway.parent.is_remote
        assert hexid(gateway.parent.span_id, 16) == root_parent
    by_id = {s.context.span_id: s for s in spans}
    recall_clients = [s for s in spans if s.name == RECALL and s.kind == SpanKind.CLIENT]
    recall_servers = [s for s in spans if s.name == RECALL and s.kind == SpanKind.SERVER]
    assert len(recall_clients) == len(recall_servers) == 2  # one per shard, from threads
    for client in [*recall_clients, one(spans, RANK, SpanKind.CLIENT)]:
        assert client.parent is not None and client.parent.span_id == gateway.context.span_id
    assert sorted(s.parent.span_id for s in recall_servers) == sorted(
        c.context.span_id for c in recall_clients
    )
    rank_server = one(spans, RANK, SpanKind.SERVER)
    assert rank_server.parent.span_id == one(spans, RANK, SpanKind.CLIENT).context.span_id
    for span in spans:
        if span is not gateway:  # every other span hangs off a span of this trace
            assert span.parent is not None and span.parent.span_id in by_id, span.name
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.grpc.status_code"] == 0
    return hexid(trace_id, 32)


def test_a_callers_traceparent_becomes_the_parent(stack: Stack) -> None:
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    response = stack.recommend((("traceparent", traceparent),), query="a good story", k=3)
    assert len(response.items) == 3
    assert assert_one_trace(stack.spans(), root_parent=CALLER_SPAN) == CALLER_TRACE


def test_without_traceparent_the_gateway_starts_the_trace(stack: Stack) -> None:
    stack.recommend(query="a good story", k=3)
    trace_id = assert_one_trace(stack.spans(), root_parent=None)
    assert trace_id != CALLER_TRACE


def test_an_unsampled_caller_is_not_recorded(stack: Stack) -> None:
    stack.recommend((("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"),), query="x", k=3)
    assert stack.spans() == []


def test_a_bad_request_is_traced_with_its_code_but_not_as_a_server_error(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stack.recommend(query="a good story", k=10_000)  # above the gateway's --max-k
    code = err.value.code()
    assert code != grpc.StatusCode.OK and code not in tracing.SERVER_ERROR_CODES
    span = one(stack.spans(), RECOMMEND, SpanKind.SERVER)
    assert span.attributes["rpc.grpc.status_code"] == code.value[0]
    assert span.status.status_code == StatusCode.UNSET  # the caller's mistake, not ours


def test_latency_histogram_carries_the_trace_as_exemplar(stack: Stack) -> None:
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    stack.recommend((("traceparent", traceparent),), query="a good story", k=3)
    gateway_span = one(stack.spans(), RECOMMEND, SpanKind.SERVER)
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.gateway.metrics_port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("recstack_rpc_latency_seconds_bucket")
        and f'method="/{RECOMMEND}"' in line
        and f'trace_id="{CALLER_TRACE}"' in line
    ]
    assert lines, "no exemplar with the caller's trace id on the Recommend latency buckets"
    assert f'span_id="{hexid(gateway_span.context.span_id, 16)}"' in lines[0]
