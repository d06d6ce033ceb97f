"""Bearer-token authorisation and TLS credentials for servers and clients.

Tokens file (one per service, ``--auth-tokens-file``): one token per line as
``<token> <permission>[,<permission>]`` with permissions ``read`` and/or ``write``; ``#``
starts a comment. The permission of a recstack.v1 method comes from its declared
``idempotency_level`` (recstack.runtime.contracts): NO_SIDE_EFFECTS methods (Recall, RecallBatch,
GetItems, Rank, Recommend, GetInfo) need ``read``; all others (Upsert, Delete, RecordEvents,
DeleteUser and the admin services' ReloadBundle) need ``write``. Other services (server
reflection) need ``read``. ``grpc.health.v1.Health`` is exempt so that Kubernetes probes,
which cannot send tokens, keep working; health reveals nothing but serving status.

Tokens are compared with ``hmac.compare_digest`` against every configured token (no early
exit), so response time does not reveal how much of a guess was right.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

from recstack.core.errors import BundleError, PermissionDenied, Unauthenticated
from recstack.runtime.contracts import method_table

READ, WRITE = "read", "write"
EXEMPT_SERVICES = frozenset({"grpc.health.v1.Health"})


@dataclass(frozen=True)
class TokenTable:
    """Configured tokens and their permissions."""

    entries: tuple[tuple[bytes, frozenset[str]], ...]

    @classmethod
    def load(cls, path: str) -> TokenTable:
        entries = []
        for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            perms = frozenset(parts[1].split(",")) if len(parts) == 2 else frozenset()
            if len(parts) != 2 or not perms or not perms <= {READ, WRITE}:
                raise BundleError(f"{path}:{number}: expected '<token> read|write|read,write'")
            entries.append((parts[0].encode(), perms))
        if not entries:
            raise BundleError(f"{path}: no tokens configured")
        return cls(tuple(entries))

    def permissions(self, token: str) -> frozenset[str]:
        presented = token.encode()
        found: frozenset[str] = frozenset()
        for secret, perms in self.entries:
            if hmac.compare_digest(secret, presented):
                found = perms
        return found


def required_permission(method: str) -> str | None:
    """``read``/``write`` for a full method name ``/pkg.Service/Method``; None if exempt."""
    _, service, _name = method.split("/", 2) if method.count("/") >= 2 else ("", "", method)
    if service in EXEMPT_SERVICES:
        return None
    declared = method_table().get(method)
    return WRITE if declared is not None and not declared.read_only else READ


def authorize(table: TokenTable, method: str, authorization: str | None) -> None:
    """Raise Unauthenticated / PermissionDenied unless the bearer token allows ``method``."""
    needed = required_permission(method)
    if needed is None:
        return
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthenticated(
            "missing bearer token (metadata 'authorization: Bearer <token>')",
            reason="MISSING_TOKEN",
        )
    perms = table.permissions(authorization[len("Bearer ") :].strip())
    if not perms:
        raise Unauthenticated("invalid bearer token", reason="INVALID_TOKEN")
    if needed not in perms:
        raise PermissionDenied(
            f"token lacks '{needed}' permission for {method}",
            reason="MISSING_PERMISSION",
            metadata={"permission": needed, "method": method},
        )


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS with the server's certificate; mutual TLS when ``client_ca`` is given."""
    ca = Path(client_ca).read_bytes() if client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def channel_credentials(
    ca: str = "", cert: str = "", key: str = "", token: str = ""
) -> grpc.ChannelCredentials | None:
    """Client TLS (``ca`` to verify the server, ``cert``/``key`` for mutual TLS) plus an
    optional bearer token; None for a plaintext channel (no ``ca``)."""
    if not ca:
        if token:
            raise ValueError("a bearer token needs TLS (set the CA certificate)")
        return None
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return creds
