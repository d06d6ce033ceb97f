"""gRPC server bootstrap shared by the recall, rank and gateway services.

``start_server`` binds (port 0 = a free port, returned), registers the services, the
``grpc.health.v1`` servicer (Check and Watch) and server reflection, installs the error
interceptor, and loads the bundle in a background thread. Health stays NOT_SERVING until
that load (checksums + self-check) has succeeded, and goes NOT_SERVING again on drain.

``serve_forever`` is the command-line lifecycle: wait for the load, then run until SIGTERM
or SIGINT, drain (health NOT_SERVING at once, no new RPCs, in-flight RPCs finish within
``grace_seconds``) and return the exit status.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from threadpoolctl import threadpool_limits

from recstack.core import metrics
from recstack.core.config import OptionGroup, ServerOptions, add_arguments, from_args
from recstack.core.deadline import Deadline
from recstack.core.errors import (
    FIELD_METADATA_KEY,
    BundleError,
    ErrorKind,
    RecstackError,
    Unavailable,
    to_status,
)
from recstack.runtime import logs, tracing
from recstack.runtime.auth import TokenTable, authorize, server_credentials
from recstack.runtime.workers import supervise

log = logging.getLogger(__name__)
T = TypeVar("T")

# The one mapping from domain error kinds to gRPC status codes (and back, for relaying a
# downstream service's error to our caller).
STATUS_FOR_KIND: dict[ErrorKind, grpc.StatusCode] = {k: grpc.StatusCode[k.value] for k in ErrorKind}
KIND_FOR_STATUS: dict[grpc.StatusCode, ErrorKind] = {v: k for k, v in STATUS_FOR_KIND.items()}
NO_DEADLINE_S = 365 * 24 * 3600.0


class ErrorMappingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Turn domain errors raised by servicers/cores into status codes naming the field
    (with the google.rpc.Status details of ``rich_status``).

    Anything else is a bug: it is logged with its traceback and answered INTERNAL, and the
    server keeps serving. Every unary RPC is counted and timed here (per method and code).
    """

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = details.method

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            code = grpc.StatusCode.OK
            started = time.perf_counter()
            try:
                return inner(request, context)
            except RecstackError as exc:
                code = STATUS_FOR_KIND[exc.kind]
                context.abort_with_status(rich_status(exc))
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s", method)
                context.abort(code, f"internal error in {method} (logged)")
            finally:
                metrics.RPC_LATENCY.labels(method).observe(
                    time.perf_counter() - started, tracing.exemplar()
                )
                metrics.RPC_REQUESTS.labels(method, code.name).inc()

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Reject RPCs whose bearer token lacks the method's permission (see recstack.runtime.auth).

    Runs before any servicer code; the refusal is an UNAUTHENTICATED or PERMISSION_DENIED
    status on a handler of the same streaming kind as the real one.
    """

    def __init__(self, table: TokenTable) -> None:
        self.table = table

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        metadata = {k: v for k, v in details.invocation_metadata or ()}
        try:
            authorize(self.table, details.method, metadata.get("authorization"))
        except RecstackError as exc:
            code = STATUS_FOR_KIND[exc.kind]
            metrics.RPC_REQUESTS.labels(details.method, code.name).inc()
            return _refusal(continuation(details), exc)
        return continuation(details)


def rich_status(exc: RecstackError) -> grpc.Status:
    """The status of a domain error: code, message, the google.rpc.Status details in
    ``grpc-status-details-bin`` (recstack.core.errors.to_status) and, deprecated, the
    ``recstack-field`` trailer."""
    status = rpc_status.to_status(to_status(exc))
    trailers = tuple(status.trailing_metadata)
    if exc.field:
        trailers += ((FIELD_METADATA_KEY, exc.field),)
    return _Status(STATUS_FOR_KIND[exc.kind], status.details, trailers)


class _Status(
    collections.namedtuple("_Status", ("code", "details", "trailing_metadata")),
    grpc.Status,  # type: ignore[misc]
):
    """A concrete grpc.Status (grpc only defines the interface)."""


def _refusal(handler: Any, exc: RecstackError) -> Any:
    if handler is None:
        return None
    status = rich_status(exc)

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(status)

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    return grpc.stream_stream_rpc_method_handler(refuse, **serializers)


def deadline_of(context: grpc.ServicerContext) -> Deadline:
    """The caller's deadline as a transport-free Deadline (none if the caller set none).

    grpc reports "no deadline" as an enormous remaining time rather than None; passing a
    share of that downstream would overflow the next call's deadline, so it becomes None.
    """
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE_S:
        return Deadline.none()
    return Deadline.after(remaining)


class CoreRef(Generic[T]):
    """The core a servicer delegates to; empty until the bundle has loaded.

    Replacing the reference is a single attribute store, so a request sees either the old
    or the new core, never a mix (the basis for hot swap).
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._core: T | None = None

    def set(self, core: T) -> None:
        self._core = core

    def get(self) -> T:
        core = self._core
        if core is None:
            raise Unavailable(f"{self._what} is still loading its bundle", reason="LOADING")
        return core

    def peek(self) -> T | None:
        """The core, or None while loading (for shutdown paths that must not raise)."""
        return self._core


@dataclass(frozen=True)
class ServiceSpec:
    """A gRPC service to host: its full name (health/reflection) and how to register it."""

    name: str
    register: Callable[[grpc.Server], None]


class RunningServer:
    """A started server: its bound port, readiness and shutdown."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        names: Sequence[str],
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.health = health_servicer
        self.names = list(names)
        self.metrics_port = 0
        self.health_server: grpc.Server | None = None
        self.health_port = 0
        self._on_stop = on_stop
        self._loaded = threading.Event()
        self.load_error: BaseException | None = None

    def _set_health(self, status: int) -> None:
        for name in ["", *self.names]:
            self.health.set(name, status)
        self._set_serving_metric(status == health_pb2.HealthCheckResponse.SERVING)

    def _set_serving_metric(self, serving: bool) -> None:
        for name in self.names:
            metrics.SERVING.labels(name).set(1 if serving else 0)

    def _load(self, load: Callable[[], None]) -> None:
        try:
            load()
        except BaseException as exc:
            self.load_error = exc
            log.error("bundle load failed: %s", exc, exc_info=not isinstance(exc, RecstackError))
        else:
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("serving", extra={"port": self.port, "services": self.names})
        finally:
            self._loaded.set()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the bundle is loaded; re-raise its load error; TimeoutError if slow."""
        if not self._loaded.wait(timeout):
            raise TimeoutError(f"server on port {self.port} not ready after {timeout}s")
        if self.load_error is not None:
            raise self.load_error

    def drain(self) -> None:
        """Report NOT_SERVING to every health check and watcher (first step of shutdown)."""
        self.health.enter_graceful_shutdown()
        self._set_serving_metric(False)

    def stop(self, grace: float | None = None) -> None:
        """Drain, refuse new RPCs, give in-flight ones ``grace`` seconds, then close."""
        self.drain()
        self.server.stop(grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        if self._on_stop is not None:
            self._on_stop()


def start_server(
    options: ServerOptions,
    services: Sequence[ServiceSpec],
    load: Callable[[], None],
    on_stop: Callable[[], None] | None = None,
) -> RunningServer:
    """Bind, register and start; ``load`` runs in the background and gates health;
    ``on_stop`` runs once the server has stopped (release files and threads)."""
    if options.blas_threads > 0:
        # Process-wide; numpy's BLAS pool otherwise spins on every core for tiny products.
        threadpool_limits(options.blas_threads, user_api="blas")
    names = [s.name for s in services]
    tracing.configure(options.otlp_endpoint, options.trace_sample_ratio, names[0])
    # Tracing (when on) runs outermost, so its span covers authentication and error mapping.
    interceptors: list[grpc.ServerInterceptor] = tracing.server_interceptors()
    if options.auth_tokens_file:
        interceptors.append(AuthInterceptor(TokenTable.load(options.auth_tokens_file)))
    interceptors.append(ErrorMappingInterceptor())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="rpc"),
        interceptors=interceptors,
        options=options.server_grpc_options(),
        maximum_concurrent_rpcs=options.max_concurrent_rpcs,
    )
    for spec in services:
        spec.register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{options.host}:{options.port}"
    if options.tls_cert:
        credentials = server_credentials(options.tls_cert, options.tls_key, options.tls_client_ca)
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    running = RunningServer(server, port, health_servicer, names, on_stop)
    if options.health_port >= 0:
        running.health_server, running.health_port = _health_only_server(options, health_servicer)
    running.metrics_port = metrics.start_metrics_server(options.metrics_port, options.host)
    running._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    log.info("listening", extra={"address": f"{options.host}:{port}"})
    if options.port_file:
        _write_atomic(Path(options.port_file), f"{port}\n")
    threading.Thread(target=running._load, args=(load,), name="bundle-load", daemon=True).start()
    return running


def _health_only_server(
    options: ServerOptions, health_servicer: health.HealthServicer
) -> tuple[grpc.Server, int]:
    """A plaintext server exposing only the (shared) health servicer, for probes that
    cannot speak TLS or send tokens. It reports exactly what the main port reports."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{options.host}:{options.health_port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    server.start()
    log.info("health-only port listening", extra={"address": f"{options.host}:{port}"})
    return server, port


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def serve_forever(running: RunningServer, options: ServerOptions) -> int:
    """Run until SIGTERM/SIGINT, then drain and stop within the grace period; exit status."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not running._loaded.wait(0.2):
        if stop.is_set():
            break
    if running.load_error is not None:
        running.server.stop(0)
        return 3
    while not stop.wait(0.5):
        pass
    log.info(
        "draining",
        extra={"signal": received[0] if received else None, "grace_seconds": options.grace_seconds},
    )
    running.stop(options.grace_seconds)
    tracing.shutdown()  # flush spans still queued for the collector
    log.info("stopped")
    return 0


def cli_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    default_port: int,
    groups: Sequence[OptionGroup],
    serve: Callable[..., RunningServer],
    module: str = "",
) -> int:
    """Shared command-line entry: flags from the option dataclasses, JSON logs, lifecycle.

    ``serve`` is called as ``serve(server_options, *group_options)`` in ``groups`` order.
    ``module`` (``python -m`` name) enables ``--processes N`` for stateless services.
    """
    # No abbreviations: with prefixed groups, --recall-bundle would silently mean
    # --recall-bundle-poll-s.
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    add_arguments(parser, ServerOptions, "server", {"port": default_port})
    for group in groups:
        add_arguments(parser, group)
    args = parser.parse_args(argv)
    server_options = from_args(ServerOptions, args)
    logs.configure(server_options.log_level, prog)
    if server_options.processes > 1:
        if not module:
            log.error("--processes > 1 is for stateless services; run more replicas instead")
            return 2
        return supervise(module, list(argv if argv is not None else sys.argv[1:]), server_options)
    try:
        running = serve(server_options, *(from_args(group, args) for group in groups))
    except (OSError, BundleError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    return serve_forever(running, server_options)
