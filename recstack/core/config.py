"""Every server option, with its default, in one place.

Each service builds its argparse CLI from these dataclasses (``add_arguments``) and reads
them back (``from_args``), so a default is written once: here. Environment variables
``RECSTACK_<FLAG>`` (e.g. ``RECSTACK_MAX_WORKERS``) override defaults, which is how the
Kubernetes manifests configure pods; explicit command-line flags override both.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

from recstack.models.ort import DEVICES, SessionOptions

MiB = 1 << 20
T = TypeVar("T")

# Well-known ports of the command-line entry points (tests bind port 0 instead).
GATEWAY_PORT = 50050
RECALL_PORT = 50051
RANK_PORT = 50052


def _env_default(name: str, default: Any) -> Any:
    raw = os.environ.get("RECSTACK_" + name.upper())
    if raw is None:
        return default
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


@dataclass(frozen=True)
class OptionGroup:
    """One option dataclass on a command line: its flags are ``--<prefix>-<field>`` (just
    ``--<field>`` without a prefix) and its environment variables ``RECSTACK_<PREFIX>_<FIELD>``;
    fields in ``skip`` get no flag (the entry point sets them) and keep their defaults."""

    cls: type[Any]
    title: str
    prefix: str = ""
    skip: frozenset[str] = frozenset()

    def dest(self, name: str) -> str:
        return f"{self.prefix}_{name}" if self.prefix else name


def add_arguments(
    parser: argparse.ArgumentParser,
    group: OptionGroup | type[Any],
    title: str = "",
    overrides: dict[str, Any] | None = None,
) -> None:
    """Add one ``--flag`` per dataclass field; help text comes from ``metadata["help"]``.

    ``group`` is an :class:`OptionGroup` or a bare dataclass (no prefix, titled ``title``).
    ``overrides`` replaces a field's default for one service (e.g. its well-known port).
    """
    spec = group if isinstance(group, OptionGroup) else OptionGroup(group, title)
    arg_group = parser.add_argument_group(spec.title)
    for f in dataclasses.fields(spec.cls):
        if f.name in spec.skip:
            continue
        dest = spec.dest(f.name)
        flag = "--" + dest.replace("_", "-")
        default = _env_default(dest, (overrides or {}).get(f.name, f.default))
        help_text = f.metadata.get("help", "") + " (default: %(default)s)"
        if isinstance(f.default, bool):
            arg_group.add_argument(
                flag,
                dest=dest,
                default=default,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            kind = type(f.default) if f.default is not None else str
            arg_group.add_argument(
                flag,
                dest=dest,
                default=default,
                type=kind,
                choices=f.metadata.get("choices"),
                help=help_text,
            )


def from_args(group: OptionGroup | type[T], args: argparse.Namespace) -> T:
    """Build the group's dataclass from the parsed flags that ``add_arguments`` declared."""
    spec = group if isinstance(group, OptionGroup) else OptionGroup(group, "")
    values = vars(args)
    return spec.cls(  # type: ignore[no-any-return]
        **{
            f.name: values[spec.dest(f.name)]
            for f in dataclasses.fields(spec.cls)
            if f.name not in spec.skip and spec.dest(f.name) in values
        }
    )


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class ServerOptions:
    """gRPC server transport settings shared by all three services."""

    host: str = _opt("127.0.0.1", "interface to bind; 0.0.0.0 in containers")
    port: int = _opt(0, "port to bind; 0 picks a free port (reported in the log/port file)")
    max_workers: int = _opt(8, "RPC handler threads")
    max_concurrent_rpcs: int = _opt(64, "RPCs in flight before RESOURCE_EXHAUSTED")
    max_message_bytes: int = _opt(16 * MiB, "max request/response message size")
    keepalive_time_s: float = _opt(30.0, "ping idle client connections every N seconds")
    keepalive_timeout_s: float = _opt(10.0, "close a connection whose ping is unanswered")
    max_connection_age_s: float = _opt(
        300.0,
        "send GOAWAY to a client connection after this many seconds (jittered by gRPC), so "
        "clients reconnect and re-balance onto replicas added since (0 = never)",
    )
    max_connection_age_grace_s: float = _opt(
        30.0, "after that GOAWAY, time the connection's in-flight RPCs get to finish"
    )
    grace_seconds: float = _opt(10.0, "on SIGTERM, time in-flight RPCs get to finish")
    port_file: str = _opt("", "write the bound port to this file once listening")
    metrics_port: int = _opt(0, "HTTP port serving Prometheus /metrics (0 = off)")
    log_level: str = _opt("INFO", "log level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    tls_cert: str = _opt("", "PEM certificate (chain) of this server; enables TLS")
    tls_key: str = _opt("", "PEM private key of --tls-cert")
    tls_client_ca: str = _opt("", "PEM CA that client certificates must chain to (mutual TLS)")
    auth_tokens_file: str = _opt(
        "",
        "bearer tokens and their read/write permissions "
        "(see recstack/runtime/auth.py); empty = no authentication",
    )
    processes: int = _opt(
        1, "worker processes sharing --port via SO_REUSEPORT (stateless services only)"
    )
    reuse_port: bool = _opt(False, "bind with SO_REUSEPORT (set for workers by --processes)")
    blas_threads: int = _opt(
        1,
        "numpy BLAS threads in this process (0 = the library's default, one per core); "
        "per-request matrix products are small, and BLAS threads only fight the RPC threads",
    )
    otlp_endpoint: str = _opt(
        "",
        "OTLP/gRPC collector receiving trace spans, e.g. http://otel-collector:4317 "
        "(http:// = plaintext); empty = tracing off. Needs recstack[tracing]",
    )
    trace_sample_ratio: float = _opt(
        1.0,
        "share of new traces kept (0..1); a caller's traceparent sampled flag always wins",
    )
    health_port: int = _opt(
        -1,
        "extra plaintext port serving only grpc.health.v1, for probes "
        "when TLS is on (-1 = off, 0 = any free port)",
    )

    def grpc_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.so_reuseport", 1 if self.reuse_port else 0),
        ]

    def server_grpc_options(self) -> list[tuple[str, Any]]:
        """``grpc_options`` plus the server-only connection-age limits (docs/deploy.md)."""
        options = self.grpc_options()
        if self.max_connection_age_s > 0:
            options += [
                ("grpc.max_connection_age_ms", int(self.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(self.max_connection_age_grace_s * 1000)),
            ]
        return options


@dataclass(frozen=True)
class OrtOptions:
    """ONNX Runtime settings for the encoder (recall) and the ranker (rank)."""

    device: str = _opt("auto", "execution provider: auto, cpu or cuda", choices=list(DEVICES))
    allow_cpu_fallback: bool = _opt(True, "with --device cuda, fall back to CPU if no GPU")
    intra_op_threads: int = _opt(
        1,
        "ORT intra-op threads per session (0 = one per core); 1 is fastest when concurrent "
        "requests already fill the cores (docs/benchmarks.md)",
    )
    inter_op_threads: int = _opt(1, "ORT inter-op threads")

    def session_options(self, optimized_model_path: str | None = None) -> SessionOptions:
        return SessionOptions(
            self.device,
            self.allow_cpu_fallback,
            self.intra_op_threads,
            self.inter_op_threads,
            optimized_model_path,
        )


@dataclass(frozen=True)
class RecallOptions:
    """Recall service limits and index settings."""

    bundle: str = _opt("bundles", "bundle directory, or a root with a CURRENT pointer")
    max_k: int = _opt(1000, "largest k a Recall may ask for")
    ef_search: int = _opt(0, "HNSW ef at query time (0 = the bundle's value)")
    max_text_chars: int = _opt(2000, "longest query_text accepted")
    max_history: int = _opt(200, "most history_item_ids accepted")
    max_exclude: int = _opt(5000, "most exclude_ids accepted")
    max_batch: int = _opt(256, "most requests in a RecallBatch / items in an Upsert or Delete")
    query_encoder_int8: bool = _opt(
        False,
        "encode query texts with the bundle's int8 encoder (faster; item texts keep the fp32 "
        "one: docs/model-quality.md, int8)",
    )
    encoder_batching: bool = _opt(
        True, "merge concurrent texts to encode (queries, upserts) into one ORT run"
    )
    encoder_max_batch: int = _opt(32, "most texts in one merged encoder run")
    encoder_max_delay_ms: float = _opt(
        0.5, "longest a queued text waits for others to join its encoder run"
    )
    encoder_max_queue: int = _opt(256, "encode requests waiting before RESOURCE_EXHAUSTED")
    search_threads: int = _opt(1, "hnswlib threads per batched search")
    full_scan_threshold: int = _opt(
        4096,
        "a shard of at most this many live items is searched exactly, by scanning every "
        "vector, instead of through HNSW (cheaper there; 0 = always HNSW)",
    )
    exact_threshold: int = _opt(20000, "filters matching at most this many items search exactly")
    shard_index: int = _opt(0, "shard served by this replica (items with hash(id) mod N == i)")
    shard_count: int = _opt(1, "number of recall shards N")
    state_dir: str = _opt("state/recall", "writable directory for snapshots and the SQLite log")
    catalog_dsn: str = _opt(
        "", "catalog log: sqlite:///path or postgresql://... (default: SQLite in --state-dir)"
    )
    snapshot_every: int = _opt(10000, "write a snapshot after this many applied writes (0 = never)")
    log_poll_s: float = _opt(0.5, "how often to apply log entries written by other replicas")
    bundle_poll_s: float = _opt(
        10.0, "how often to check the bundle's CURRENT for a new version (0 = only on ReloadBundle)"
    )
    version_grace_s: float = _opt(
        60.0,
        "keep a replaced bundle version loaded until no request has named it for this long, "
        "so callers on either side of a rollout are served (0 = drop it at once)",
    )
    load_previous: bool = _opt(
        True,
        "at start-up also load the version the bundle root's PREVIOUS names (a process "
        "started mid-rollout serves callers of the old version too)",
    )
    read_wait_s: float = _opt(5.0, "longest wait for min_sequence when the caller set no deadline")


@dataclass(frozen=True)
class RankOptions:
    """Rank service limits, dynamic batching, hot swap and ORT extras."""

    bundle: str = _opt("bundles", "bundle directory, or a root with a CURRENT pointer")
    max_candidates: int = _opt(2000, "most candidates one Rank may carry")
    batching: bool = _opt(True, "merge concurrent Rank requests into one ORT run")
    max_batch_rows: int = _opt(4096, "most candidate rows in one merged ORT run")
    max_queue_delay_ms: float = _opt(
        1.0, "longest a queued request waits for others to join its batch"
    )
    max_queue_requests: int = _opt(
        256, "requests waiting for the batcher before RESOURCE_EXHAUSTED"
    )
    io_binding: bool = _opt(True, "on CUDA, run with IO binding and pinned host buffers")
    optimized_model_path: str = _opt(
        "", "save the graph-optimised ranker to this file at load (empty = do not)"
    )
    bundle_poll_s: float = _opt(
        10.0, "how often to check the bundle's CURRENT for a new version (0 = only on Reload)"
    )
    version_grace_s: float = _opt(
        60.0,
        "keep a replaced bundle version loaded until no request has named it for this long, "
        "so callers on either side of a rollout are served (0 = drop it at once)",
    )
    load_previous: bool = _opt(
        True,
        "at start-up also load the version the bundle root's PREVIOUS names (a process "
        "started mid-rollout serves callers of the old version too)",
    )
    reload_rpc: bool = _opt(
        True, "enable the Reload admin RPC (re-reads --bundle; requests cannot name a path)"
    )


@dataclass(frozen=True)
class GatewayOptions:
    """Gateway downstream addresses, defaults and limits."""

    recall_address: str = _opt(
        f"127.0.0.1:{RECALL_PORT}",
        "recall host:port; comma-separated shard targets in shard order when sharded "
        "(an ipv4:A,B target is one shard over replicas A and B)",
    )
    rank_address: str = _opt(f"127.0.0.1:{RANK_PORT}", "rank service host:port")
    bundle: str = _opt("", "bundle seeding user profiles, popularity and titles (optional)")
    state_dir: str = _opt("state/gateway", "writable directory for the SQLite event store")
    events_dsn: str = _opt(
        "", "user-event store: sqlite:///path or postgresql://... (default: SQLite in --state-dir)"
    )
    shard_failure_policy: str = _opt(
        "fail",
        "when a recall shard fails: fail the call, or "
        "answer from the others and list it in missing_shards",
        choices=["fail", "partial"],
    )
    max_events: int = _opt(1000, "most events in one RecordEvents")
    downstream_tls_ca: str = _opt("", "PEM CA verifying recall/rank servers (enables TLS to them)")
    downstream_tls_cert: str = _opt("", "PEM client certificate for mutual TLS to recall/rank")
    downstream_tls_key: str = _opt("", "PEM key of --downstream-tls-cert")
    downstream_token_file: str = _opt("", "file holding the bearer token sent to recall/rank")
    default_k: int = _opt(10, "k when a request leaves it 0")
    max_k: int = _opt(100, "largest k a Recommend may ask for")
    default_candidates: int = _opt(100, "recall candidates ranked when a request leaves it 0")
    max_candidates: int = _opt(1000, "largest candidate_count a Recommend may ask for")
    default_timeout_s: float = _opt(2.0, "deadline used when the caller sets none")
    recall_share: float = _opt(0.6, "fraction of the remaining deadline given to recall")
    max_history: int = _opt(200, "most history_item_ids accepted")
    version_pin_s: float = _opt(
        1.0,
        "during a rollout, after rank refused recall's bundle version: ask recall directly "
        "in the version rank served, for this long, before trying recall's own again",
    )
