"""The three service command lines export one trace over OTLP/gRPC (``--otlp-endpoint``).

A small OTLP trace receiver runs in the test (the collector's gRPC service, from
opentelemetry-proto). The batch processor's schedule is set far beyond the test's length,
so spans can only arrive through the flush each process does when it drains on SIGTERM.
The gateway samples no new traces (``--trace-sample-ratio 0``): the caller's sampled
``traceparent`` alone decides, and recall and rank follow the gateway's decision.
"""

from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from recstack.client import open_channel, recommend_request
from recstack.tools.procs import Stack
from recstack.v1 import gateway_pb2_grpc

pytestmark = pytest.mark.process

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """Collects exported spans as (service.name, name, kind, trace, span, parent) tuples."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, int, str, str, str]] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        with self.lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for s in scope.spans:
                        self.spans.append(
                            (
                                attrs.get("service.name", ""),
                                s.name,
                                s.kind,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()


def test_stack_exports_one_trace_over_otlp(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver()
    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # export only on shutdown
    endpoint = ["--otlp-endpoint", f"http://127.0.0.1:{port}"]
    stack = Stack(
        str(bundle_dir),
        tmp_path,
        {
            "recall": endpoint,
            "rank": endpoint,
            "gateway": [*endpoint, "--trace-sample-ratio", "0"],
        },
    )
    try:
        stack.start()
        stub = gateway_pb2_grpc.RecommendServiceStub(
            open_channel(f"127.0.0.1:{stack.gateway.port}", max_attempts=1)
        )
        request = recommend_request(query="a good story", k=3)
        sampled = (("traceparent", f"00-{TRACE}-{PARENT}-01"),)
        assert len(stub.Recommend(request, timeout=30, metadata=sampled).items) == 3
        stub.Recommend(request, timeout=30)  # a new root at ratio 0: not recorded
    finally:
        codes = stack.stop()
        collector.stop(0)
    assert set(codes.values()) == {0}, codes
    spans = receiver.spans
    assert spans, "nothing exported: the drain did not flush the span queue"
    assert {s[3] for s in spans} == {TRACE}, "a span of another (unsampled) trace was exported"
    by_id = {s[4]: s for s in spans}
    (gateway,) = [s for s in spans if s[1] == "recstack.v1.RecommendService/Recommend"]
    assert gateway[0] == "recstack.v1.RecommendService" and gateway[2] == SERVER
    assert gateway[5] == PARENT
    for downstream, service in (("Recall", "recstack.v1.RecallService"),
                                ("Rank", "recstack.v1.RankService")):  # fmt: skip
        name = f"{service}/{downstream}"
        (client,) = [s for s in spans if s[1] == name and s[2] == CLIENT]
        (server,) = [s for s in spans if s[1] == name and s[2] == SERVER]
        assert client[0] == "recstack.v1.RecommendService" and client[5] == gateway[4]
        assert server[0] == service and server[5] == client[4]
    assert all(s[5] in by_id for s in spans if s is not gateway)
