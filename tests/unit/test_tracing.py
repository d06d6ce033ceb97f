"""recstack.runtime.tracing off and on: nothing is wrapped while off, servers run without
OpenTelemetry installed, JSON logs carry the current trace."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from recstack.runtime import tracing
from recstack.runtime.logs import JsonFormatter


def test_off_by_default_nothing_is_wrapped() -> None:
    assert not tracing.enabled()
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        assert tracing.instrument(channel) is channel
        assert tracing.server_interceptors() == []
        assert tracing.log_fields() == {} and tracing.exemplar() is None
    finally:
        channel.close()


def test_configure_without_endpoint_stays_off() -> None:
    tracing.configure("", 1.0, "recstack.v1.RankService")
    assert not tracing.enabled()


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, message, None, None)


def test_json_logs_and_exemplars_carry_the_current_trace() -> None:
    provider = TracerProvider()
    tracing.install(provider)
    try:
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("work") as span:
            line = json.loads(JsonFormatter().format(record("inside")))
            ctx = span.get_span_context()
            assert line["trace_id"] == f"{ctx.trace_id:032x}"
            assert line["span_id"] == f"{ctx.span_id:016x}"
            assert tracing.exemplar() == {"trace_id": line["trace_id"], "span_id": line["span_id"]}
        outside = json.loads(JsonFormatter().format(record("outside")))
        assert "trace_id" not in outside and tracing.exemplar() is None
    finally:
        tracing.uninstall()
        provider.shutdown()


def test_sample_ratio_out_of_range_is_refused() -> None:
    from recstack.core.errors import BundleError

    with pytest.raises(BundleError, match="trace-sample-ratio"):
        tracing.configure("http://127.0.0.1:4317", 1.5, "x")
    assert not tracing.enabled()


def test_servers_need_no_opentelemetry_unless_tracing_is_asked_for() -> None:
    # A fresh interpreter in which every opentelemetry import fails, as on a plain install.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None
        from recstack.runtime import server, tracing
        from recstack.core.errors import BundleError
        from recstack.runtime.logs import JsonFormatter
        import logging
        tracing.configure("", 1.0, "x")
        assert server.tracing.server_interceptors() == []
        JsonFormatter().format(logging.LogRecord("t", 20, "f", 1, "m", None, None))
        try:
            tracing.configure("http://127.0.0.1:4317", 1.0, "x")
        except BundleError as exc:
            print(exc)
        else:
            raise SystemExit("configure with an endpoint should have failed")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "recstack[tracing]" in done.stdout


def test_context_thread_pool_runs_tasks_in_the_submitters_context() -> None:
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")
    with tracing.ContextThreadPool(max_workers=2) as pool:
        assert [f.result() for f in [pool.submit(var.get) for _ in range(4)]] == ["caller"] * 4
    with ThreadPoolExecutor(max_workers=1) as plain:  # what the fan-out would see without it
        assert plain.submit(var.get).result() == "unset"
