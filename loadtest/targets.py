"""gRPC side of the harness: which hosts may be loaded, channels, senders, readiness.

Channels are the client library's (``recstack.client.open_channel``), with TLS, mutual
TLS and a bearer token when asked for (``--tls-ca``, ``--tls-cert``/``--tls-key``,
``--token-file``), exactly as an application would connect.

Only loopback addresses are accepted unless the caller allows a host explicitly
(``--allow-host``) or any host (``--allow-remote``): a load test is a small, deliberate
denial of service and must not reach a shared system by a typo.

A sender wraps one unary method. ``call`` blocks; ``submit`` uses the stub's ``future``
so the open-loop dispatcher never waits for an answer. Every answer is also checked: an OK
status whose response is empty or carries another bundle version than the workload's is
counted as ``BAD_RESPONSE(...)``, not as a success; so is a Recommend answered without
some recall shards (``missing_shards``, the gateway's "partial" policy).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from recstack import client
from recstack.core.config import GATEWAY_PORT, RANK_PORT, RECALL_PORT
from recstack.runtime.auth import channel_credentials
from recstack.v1 import gateway_pb2_grpc, rank_pb2_grpc, recall_pb2_grpc

DEFAULT_PORTS = {"recall": RECALL_PORT, "rank": RANK_PORT, "recommend": GATEWAY_PORT}
Done = Callable[[str], None]


class TargetError(ValueError):
    """An address that is malformed or not allowed."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"target {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_target(address: str, *, allow_remote: bool, allowed_hosts: Iterable[str] = ()) -> None:
    """Raise ``TargetError`` unless ``address`` is loopback or explicitly allowed."""
    host, _ = split_address(address)
    if allow_remote or host in set(allowed_hosts) or _is_loopback(host):
        return
    raise TargetError(
        f"refusing to load {address}: not a loopback address; pass --allow-host {host} "
        "(or --allow-remote) if this host is meant to take the load"
    )


def _empty(service: str, response: Any) -> bool:
    if service == "recall":
        return len(response.ids) == 0
    return len(response.items) == 0


class GrpcSender:
    """The harness's ``Sender`` for one service's main method."""

    def __init__(
        self,
        channel: grpc.Channel,
        service: str,
        bundle_version: str,
        accept_versions: Iterable[str] = (),
    ) -> None:
        """A response in another bundle version than ``bundle_version`` (or one of
        ``accept_versions``: a rollout under test) counts as BAD_RESPONSE."""
        if service == "recall":
            method = recall_pb2_grpc.RecallServiceStub(channel).Recall
        elif service == "rank":
            method = rank_pb2_grpc.RankServiceStub(channel).Rank
        elif service == "recommend":
            method = gateway_pb2_grpc.RecommendServiceStub(channel).Recommend
        else:
            raise TargetError(f"unknown service {service!r}")
        self.method: Any = method
        self.service = service
        self.versions = frozenset((bundle_version, *accept_versions))
        # Responses per bundle version (a rollout's progress); one lock: callbacks run on
        # gRPC's threads.
        self.answered: Counter[str] = Counter()
        self._lock = threading.Lock()

    def outcome(self, response: Any) -> str:
        with self._lock:
            self.answered[response.bundle_version] += 1
        if response.bundle_version not in self.versions:
            return "BAD_RESPONSE(version_mismatch)"
        if _empty(self.service, response):
            return "BAD_RESPONSE(empty)"
        if getattr(response, "missing_shards", None):
            return "BAD_RESPONSE(missing_shards)"
        return "OK"

    def call(self, message: Any, timeout: float) -> str:
        try:
            response = self.method(message, timeout=timeout)
        except grpc.RpcError as exc:
            return _code_name(exc)
        return self.outcome(response)

    def submit(self, message: Any, timeout: float, done: Done) -> None:
        future = self.method.future(message, timeout=timeout)

        def finished(f: Any) -> None:
            try:
                outcome = self.outcome(f.result())
            except grpc.RpcError as exc:
                outcome = _code_name(exc)
            except Exception as exc:
                outcome = f"CLIENT_ERROR({type(exc).__name__})"
            done(outcome)

        future.add_done_callback(finished)


def _code_name(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code.name if code is not None else "UNKNOWN"


def open_channel(
    address: str, *, ca: str = "", cert: str = "", key: str = "", token_file: str = ""
) -> grpc.Channel:
    """The project's one channel (recstack.client.open_channel) without automatic retries
    (a retried request would hide the failure and distort its latency); TLS with ``ca``,
    mutual TLS with ``cert``/``key``, a bearer token read from ``token_file``."""
    token = Path(token_file).read_text().strip() if token_file else ""
    try:
        credentials = channel_credentials(ca, cert, key, token)
    except ValueError as exc:
        raise TargetError(f"{exc} (--tls-ca)") from exc
    return client.open_channel(address, max_attempts=1, credentials=credentials)
