"""The recstack.v1 contract as data, read from the proto descriptors (the one source).

Each RPC's ``idempotency_level`` option in protos/recstack/v1/*.proto decides:

- its permission (recstack.runtime.auth): NO_SIDE_EFFECTS methods need ``read``, every other
  recstack.v1 method (writes, admin) needs ``write``;
- whether clients retry it (the service config): NO_SIDE_EFFECTS and IDEMPOTENT methods
  are retried on UNAVAILABLE with exponential backoff, others never automatically.

``service_config`` builds the gRPC service config (retry policy + round_robin) from those
levels. The Python client uses it directly; scripts/gen_protos.py writes the same document
to protos/recstack/v1/service_config.json for callers in other languages (``--check``
fails if it drifts from the protos).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2

from recstack.v1 import gateway_pb2, rank_pb2, recall_pb2

Level = descriptor_pb2.MethodOptions.IdempotencyLevel
NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
IDEMPOTENT = descriptor_pb2.MethodOptions.IDEMPOTENT
PACKAGE = "recstack.v1"
# Defaults of the shipped service config (and of the Python client).
# Full service names, from the generated descriptors (what health checks and reflection
# name; a client needs no service's internals to know them).
RECALL_SERVICE = recall_pb2.DESCRIPTOR.services_by_name["RecallService"].full_name
RECALL_ADMIN_SERVICE = recall_pb2.DESCRIPTOR.services_by_name["RecallAdminService"].full_name
RANK_SERVICE = rank_pb2.DESCRIPTOR.services_by_name["RankService"].full_name
RANK_ADMIN_SERVICE = rank_pb2.DESCRIPTOR.services_by_name["RankAdminService"].full_name
GATEWAY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name

MAX_ATTEMPTS = 4
INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0


@dataclass(frozen=True)
class Method:
    """One RPC of the contract and its declared idempotency."""

    service: str  # full name, e.g. recstack.v1.RecallService
    name: str
    idempotency: int  # a descriptor_pb2.MethodOptions.IdempotencyLevel value
    deprecated: bool = False

    @property
    def path(self) -> str:
        """The full method name as gRPC sends it: ``/pkg.Service/Method``."""
        return f"/{self.service}/{self.name}"

    @property
    def read_only(self) -> bool:
        return self.idempotency == NO_SIDE_EFFECTS

    @property
    def retryable(self) -> bool:
        return self.idempotency in (NO_SIDE_EFFECTS, IDEMPOTENT)


def methods_of(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> list[Method]:
    """Every RPC of the recstack.v1 files among ``files``, in declaration order."""
    found = []
    for f in files:
        if f.package != PACKAGE:
            continue
        for service in f.service:
            for m in service.method:
                found.append(
                    Method(
                        f"{f.package}.{service.name}",
                        m.name,
                        m.options.idempotency_level,
                        m.options.deprecated,
                    )
                )
    return found


@functools.cache
def methods() -> tuple[Method, ...]:
    """The RPCs of the generated stubs this process runs with."""

    files = []
    for module in (gateway_pb2, recall_pb2, rank_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(proto)
    return tuple(methods_of(files))


@functools.cache
def method_table() -> dict[str, Method]:
    """Methods by full path (``/recstack.v1.RecallService/Recall``)."""
    return {m.path: m for m in methods()}


def service_config(
    contract: Iterable[Method] | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    initial_backoff_s: float = INITIAL_BACKOFF_S,
) -> dict[str, Any]:
    """Round-robin over the resolved addresses; retry UNAVAILABLE with exponential backoff
    on the retryable methods. ``max_attempts`` counts the first try; 1 disables retries."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    pool = methods() if contract is None else contract
    retryable = sorted((m for m in pool if m.retryable), key=lambda m: m.path)
    if max_attempts >= 2 and retryable:
        config["methodConfig"] = [
            {
                "name": [{"service": m.service, "method": m.name} for m in retryable],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": f"{initial_backoff_s}s",
                    "maxBackoff": f"{MAX_BACKOFF_S}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return config


def service_config_json(contract: Iterable[Method] | None = None) -> str:
    """The shipped document (protos/recstack/v1/service_config.json), default settings."""
    return json.dumps(service_config(contract), indent=2) + "\n"
