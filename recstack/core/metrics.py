"""Prometheus metrics shared by all services, served over HTTP on ``--metrics-port``.

Metric objects are module-level (one registry per process); servers in the same process
(tests) share them and are told apart by the ``method`` label, which is the full gRPC
method name. Service-specific gauges and histograms are defined here too, so every metric
name in the project is listed in one place (deploy/k8s/monitoring's dashboard and alert
rules use these names; tests/deploy/test_monitoring.py checks them against a live scrape).
Latency histograms carry the current trace as an exemplar (OpenMetrics exposition, asked
for with ``Accept: application/openmetrics-text``) when tracing is on.
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
SERVING = Gauge(
    "recstack_serving",
    "1 while health reports SERVING for the service, 0 while loading, after a failed load "
    "and while draining (grpc_service: the gRPC service name the health check names)",
    ["grpc_service"],
)
INDEX_ITEMS = Gauge("recstack_index_items", "items in the recall index")
APPLIED_SEQUENCE = Gauge(
    "recstack_catalog_applied_sequence",
    "highest catalog log sequence applied by this recall replica",
)
REPLAY_LAG = Gauge("recstack_catalog_replay_lag", "committed log entries not yet applied here")
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


# --- rank service: dynamic batching, ORT runs, provider, hot swap ---
_BATCH_ROW_BUCKETS = (1, 10, 50, 100, 200, 500, 1000, 2000, 4000, 8000, 16000)
_BATCH_REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RANK_BATCH_ROWS = Histogram(
    "recstack_rank_batch_rows",
    "candidate rows per ORT run of the ranker (after dynamic batching)",
    buckets=_BATCH_ROW_BUCKETS,
)
RANK_BATCH_REQUESTS = Histogram(
    "recstack_rank_batch_requests",
    "Rank requests merged into one ORT run",
    buckets=_BATCH_REQUEST_BUCKETS,
)
RANK_QUEUE_DELAY = Histogram(
    "recstack_rank_queue_delay_seconds",
    "time a Rank request waited in the batch queue before its ORT run started",
    buckets=_LATENCY_BUCKETS,
)
RANK_ORT_RUN = Histogram(
    "recstack_rank_ort_run_seconds",
    "ONNX Runtime run time of the ranker, per run",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
)
RANK_QUEUE_DEPTH = Gauge("recstack_rank_queue_depth", "Rank requests waiting for the batcher")
RANK_DROPPED = Counter(
    "recstack_rank_dropped_total",
    "Rank requests not run by the batcher, by reason (queue_full, deadline)",
    ["reason"],
)
ENCODER_BATCH_TEXTS = Histogram(
    "recstack_encoder_batch_texts",
    "query texts per ORT run of the recall service's encoder (after dynamic batching)",
    buckets=_BATCH_REQUEST_BUCKETS,
)
ENCODER_BATCH_REQUESTS = Histogram(
    "recstack_encoder_batch_requests",
    "encode requests (recalls, upserts) merged into one ORT run of the encoder",
    buckets=_BATCH_REQUEST_BUCKETS,
)
ENCODER_QUEUE_DELAY = Histogram(
    "recstack_encoder_queue_delay_seconds",
    "time an encode request waited in the batch queue before its ORT run started",
    buckets=_LATENCY_BUCKETS,
)
ENCODER_QUEUE_DEPTH = Gauge(
    "recstack_encoder_queue_depth", "encode requests waiting for the encoder's batcher"
)
ENCODER_DROPPED = Counter(
    "recstack_encoder_dropped_total",
    "encode requests not run by the batcher, by reason (queue_full, deadline)",
    ["reason"],
)
RANK_PROVIDER = Gauge(
    "recstack_rank_execution_provider",
    "1 for the ONNX Runtime execution provider the ranker runs on",
    ["provider", "requested_device", "io_binding"],
)
BUNDLE_RELOADS = Counter(
    "recstack_bundle_reloads_total",
    "bundle hot-swap attempts, by service and outcome (swapped, unchanged, refused)",
    ["service", "outcome"],
)
VERSION_FALLBACKS = Counter(
    "recstack_gateway_version_fallbacks_total",
    "Recommends that re-asked recall in a bundle version rank serves (a rollout in "
    "progress), by outcome (pinned, none_common)",
    ["outcome"],
)
