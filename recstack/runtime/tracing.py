"""Distributed tracing (OpenTelemetry): off unless configured, W3C ``traceparent`` over gRPC.

Tracing is an optional extra (``pip install 'recstack[tracing]'``): the servers import
nothing from OpenTelemetry unless ``--otlp-endpoint`` is set (or a test/embedder calls
``install``). While it is off no interceptor is installed and no channel is wrapped, so
the serving path pays nothing; ``log_fields`` and ``exemplar`` return empty at once.

When on:
- every unary RPC a server handles (except grpc.health.v1 and reflection) is a SERVER
  span named ``package.Service/Method``; a ``traceparent`` in the caller's metadata
  becomes its parent (W3C Trace Context), so a caller's trace continues through recstack;
- every call on a channel passed through ``instrument`` (the gateway's channels to recall
  and rank) is a CLIENT span whose context is injected as ``traceparent``;
- sampling is parent-based: a caller's sampled flag is obeyed, root spans are kept with
  probability ``--trace-sample-ratio``;
- JSON log lines written inside a span carry ``trace_id`` and ``span_id``; latency
  histograms carry the trace as an OpenMetrics exemplar.

Spans live in ``contextvars``; work handed to another thread must run in a copy of the
caller's context: ``ContextThreadPool`` does that for every task (the gateway's shard
fan-out uses it).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc

from recstack.core.errors import BundleError

log = logging.getLogger(__name__)

# Methods of these services are not traced: probes and tooling, not requests.
UNTRACED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
# Server-side codes that mean "the server failed" (OpenTelemetry gRPC conventions); client
# spans are errors for every non-OK code.
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
INSTALL_HINT = "pip install 'recstack[tracing]'"


@dataclass(frozen=True)
class _Tracing:
    """The installed provider and the OpenTelemetry entry points used per request."""

    provider: Any
    tracer: Any
    propagator: Any
    trace: Any  # the opentelemetry.trace module
    owned: bool  # built by configure (shut down by shutdown) rather than installed


_state: _Tracing | None = None


def enabled() -> bool:
    return _state is not None


def install(provider: Any, *, owned: bool = False) -> None:
    """Trace with ``provider`` (an ``opentelemetry.sdk.trace.TracerProvider``) from now on.

    For tests and embedders with their own exporter; servers use ``configure``. Replaces
    any provider installed before (without shutting it down).
    """
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    global _state
    _state = _Tracing(
        provider=provider,
        tracer=provider.get_tracer("recstack"),
        propagator=TraceContextTextMapPropagator(),
        trace=trace,
        owned=owned,
    )


def uninstall() -> None:
    """Turn tracing off again (servers started afterwards install no interceptor)."""
    global _state
    _state = None


def configure(endpoint: str, sample_ratio: float, service_name: str) -> None:
    """Export spans over OTLP/gRPC to ``endpoint`` (empty = tracing stays off).

    Idempotent per process: servers sharing a process (tests, embedders) share the first
    provider. ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` override the service
    name and add resource attributes, as everywhere in OpenTelemetry.
    """
    if not endpoint or _state is not None:
        return
    if not 0.0 <= sample_ratio <= 1.0:
        raise BundleError(f"--trace-sample-ratio {sample_ratio} is not within [0, 1]")
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise BundleError(
            f"--otlp-endpoint needs OpenTelemetry, which is not installed ({INSTALL_HINT})"
        ) from exc
    import os

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(
        resource=Resource.create(attributes),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    # The batch processor exports from its own thread; a slow or absent collector costs
    # the request path nothing (spans are dropped once its queue is full).
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    install(provider, owned=True)
    log.info("tracing on", extra={"otlp_endpoint": endpoint, "sample_ratio": sample_ratio})


def shutdown() -> None:
    """Flush and stop a provider built by ``configure`` (on server exit)."""
    state = _state
    if state is not None and state.owned:
        state.provider.shutdown()


def log_fields() -> dict[str, str]:
    """``trace_id``/``span_id`` (hex) of the current span, for JSON logs; {} when none."""
    state = _state
    if state is None:
        return {}
    ctx = state.trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


def exemplar() -> dict[str, str] | None:
    """The current sampled span as a Prometheus exemplar (labels), or None."""
    state = _state
    if state is None:
        return None
    ctx = state.trace.get_current_span().get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


class ServerTracingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """A SERVER span around each unary RPC, child of the caller's ``traceparent``.

    It runs outermost, so the span covers authentication and error mapping, and its
    status is the code the caller receives.
    """

    def __init__(self, state: _Tracing) -> None:
        self.state = state

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        method: str = details.method
        if handler is None or handler.unary_unary is None or method.startswith(UNTRACED_PREFIXES):
            return handler
        state = self.state
        inner = handler.unary_unary
        carrier = {k: v for k, v in details.invocation_metadata or () if isinstance(v, str)}
        parent = state.propagator.extract(carrier)
        name = method.lstrip("/")
        attributes = _rpc_attributes(method)

        def wrapped(request: Any, context: Any) -> Any:
            # This runs in the RPC thread: the span becomes current there. (``context`` is
            # a grpc.ServicerContext; its code()/details() are missing from the stubs.)
            with state.tracer.start_as_current_span(
                name,
                context=parent,
                kind=state.trace.SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                failed = True
                try:
                    response = inner(request, context)
                    failed = False
                    return response
                finally:
                    code = context.code() or (
                        grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
                    )
                    _finish(state, span, code, code in SERVER_ERROR_CODES, context.details())

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _finish(state: _Tracing, span: Any, code: grpc.StatusCode, error: bool, details: Any) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if error:
        text = details.decode(errors="replace") if isinstance(details, bytes) else details
        span.set_status(state.trace.Status(state.trace.StatusCode.ERROR, f"{code.name}: {text}"))


class _CallDetails(NamedTuple):
    """grpc.ClientCallDetails with our metadata added (the documented way to rewrite it)."""

    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class ClientTracingInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """A CLIENT span around each unary call, sent downstream as ``traceparent``."""

    def __init__(self, state: _Tracing) -> None:
        self.state = state

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        state = self.state
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else method
        span = state.tracer.start_span(
            method.lstrip("/"),
            kind=state.trace.SpanKind.CLIENT,
            attributes=_rpc_attributes(method),
        )
        carrier: dict[str, str] = {}
        state.propagator.inject(carrier, context=state.trace.set_span_in_context(span))
        details = _CallDetails(
            client_call_details.method,
            client_call_details.timeout,
            [*(client_call_details.metadata or ()), *carrier.items()],
            client_call_details.credentials,
            getattr(client_call_details, "wait_for_ready", None),
            getattr(client_call_details, "compression", None),
        )
        call = continuation(details, request)

        def done(finished: Any) -> None:
            code = finished.code() or grpc.StatusCode.UNKNOWN
            _finish(state, span, code, code != grpc.StatusCode.OK, finished.details())
            span.end()

        # Blocking calls are complete here (the callback runs at once); futures end the
        # span when they complete.
        call.add_done_callback(done)
        return call


class ContextThreadPool(ThreadPoolExecutor):
    """A thread pool whose tasks run in a copy of the submitting thread's context.

    So a span current at ``submit`` is the parent of spans the task starts. One copy per
    task: a context cannot be entered by two threads at once.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


def server_interceptors() -> list[grpc.ServerInterceptor]:
    """The tracing interceptor to put first in a server's chain; none while off."""
    return [] if _state is None else [ServerTracingInterceptor(_state)]


def instrument(channel: grpc.Channel) -> grpc.Channel:
    """``channel`` with client spans and ``traceparent`` injection; unchanged while off."""
    if _state is None:
        return channel
    return grpc.intercept_channel(channel, ClientTracingInterceptor(_state))
