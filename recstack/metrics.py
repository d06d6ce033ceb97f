"""Prometheus metrics shared by all services, served over HTTP on ``--metrics-port``.

Metric objects are module-level (one registry per process); servers in the same process
(tests) share them and are told apart by the ``method`` label, which is the full gRPC
method name. Service-specific gauges and histograms are defined here too, so every metric
name in the project is listed in one place.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

RPC_REQUESTS = Counter(
    "recstack_rpc_requests_total", "RPCs handled, by method and status code", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "recstack_rpc_latency_seconds",
    "RPC handling time by method",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)
BUNDLE_INFO = Gauge(
    "recstack_bundle_info",
    "1 for the bundle version being served",
    ["service", "version", "provider"],
)
INDEX_ITEMS = Gauge("recstack_index_items", "items in the recall index")
STAGE_LATENCY = Histogram(
    "recstack_stage_latency_seconds", "gateway time per stage", ["stage"], buckets=_LATENCY_BUCKETS
)


def start_metrics_server(port: int, host: str) -> int:
    """Serve /metrics on ``host:port`` (port 0 = off); returns the port or 0."""
    if port <= 0:
        return 0
    server, _thread = start_http_server(port, addr=host)
    bound = int(server.server_port)
    log.info("metrics listening", extra={"address": f"{host}:{bound}"})
    return bound
