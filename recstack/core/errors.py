"""Domain errors: the one place that says what can go wrong for a caller.

Cores raise these; the gRPC error interceptor (recstack.runtime.server) maps each ``kind`` to a
status code and sends the error's rich details as a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer (the standard every gRPC language decodes):

- ``google.rpc.ErrorInfo``: ``reason`` (stable, UPPER_SNAKE: callers branch on it, never on
  the message), ``domain`` = ``recstack.dev``, and ``metadata`` (e.g. ``limit``/``value``
  for LIMIT_EXCEEDED, ``expected``/``got`` for a version mismatch);
- ``google.rpc.BadRequest``: one field violation per offending request field (a request
  that needs one of three fields names all three);
- ``google.rpc.RetryInfo``: only for load shedding (RESOURCE_EXHAUSTED), the delay after
  which a retry is sensible.

The pre-``google.rpc`` ``recstack-field`` trailer (the fields joined by ``|``) is still sent
for one release and is deprecated: read the BadRequest detail instead.

Status codes: INVALID_ARGUMENT for a malformed value, OUT_OF_RANGE for a value or count
above a server limit (k above max_k, too many candidates; reason LIMIT_EXCEEDED),
FAILED_PRECONDITION / NOT_FOUND for state, RESOURCE_EXHAUSTED only for load (a full queue).

This module imports protobuf messages but not grpc, so cores stay transport-free;
``to_status`` / ``from_status`` are the one encoding and decoding of the details (the
server, the gateway's relay of downstream errors and the Python client all use them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "recstack.dev"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Deprecated (one release): the offending fields joined by "|"; use BadRequest instead.
FIELD_METADATA_KEY = "recstack-field"
# Hint sent in RetryInfo when a queue is full: roughly one batching window plus one model
# run, i.e. when the queue has moved on. Clients should still back off exponentially.
OVERLOAD_RETRY_DELAY_S = 0.1
# Byte caps on what the status repeats (messages may echo request values: ids, versions).
# Message, descriptions and metadata all travel in the trailers, and gRPC clients refuse
# trailers over 8 KiB by default (the call then fails RESOURCE_EXHAUSTED instead).
MAX_MESSAGE_BYTES = 400
MAX_DETAIL_BYTES = 160


class ErrorKind(Enum):
    """What class of failure an error is; maps 1:1 to a gRPC status code."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"


class RecstackError(Exception):
    """Base of all errors a caller may see.

    ``field`` names the offending request field, or several (a sequence) when the request
    needs one of them; ``reason`` overrides the class's stable ErrorInfo reason;
    ``metadata`` goes to ErrorInfo.metadata; ``retry_after_s`` becomes RetryInfo.
    """

    kind: ErrorKind = ErrorKind.INVALID_ARGUMENT
    default_reason: str = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        field: str | Sequence[str] | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.fields: tuple[str, ...] = (field,) if isinstance(field, str) else tuple(field or ())
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.retry_after_s = retry_after_s
        super().__init__(f"{self.field}: {message}" if self.fields else message)

    @property
    def field(self) -> str | None:
        """The fields joined by ``|`` (the deprecated ``recstack-field`` trailer value)."""
        return "|".join(self.fields) if self.fields else None


class InvalidArgument(RecstackError):
    kind = ErrorKind.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class OutOfRange(RecstackError):
    kind = ErrorKind.OUT_OF_RANGE
    default_reason = "LIMIT_EXCEEDED"


class NotFound(RecstackError):
    kind = ErrorKind.NOT_FOUND
    default_reason = "NOT_FOUND"


class FailedPrecondition(RecstackError):
    kind = ErrorKind.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(RecstackError):
    """Load shedding only (a full queue); carries a RetryInfo delay."""

    kind = ErrorKind.RESOURCE_EXHAUSTED
    default_reason = "OVERLOADED"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("retry_after_s", OVERLOAD_RETRY_DELAY_S)
        super().__init__(message, **kwargs)


class Unavailable(RecstackError):
    kind = ErrorKind.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(RecstackError):
    kind = ErrorKind.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unauthenticated(RecstackError):
    kind = ErrorKind.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(RecstackError):
    kind = ErrorKind.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


_CLASSES: tuple[type[RecstackError], ...] = (
    InvalidArgument,
    OutOfRange,
    NotFound,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    Unauthenticated,
    PermissionDenied,
)


def limit_exceeded(field: str, value: int, limit: int, what: str = "") -> OutOfRange:
    """A value or count above a server limit: OUT_OF_RANGE, reason LIMIT_EXCEEDED."""
    noun = f" {what}" if what else ""
    return OutOfRange(
        f"{value}{noun} exceeds the limit of {limit}",
        field=field,
        metadata={"limit": str(limit), "value": str(value)},
    )


class BundleError(Exception):
    """A bundle is missing, malformed, or fails its checksums or self-check (startup error)."""


def error_for_kind(kind: ErrorKind, message: str, **kwargs: Any) -> RecstackError:
    """Rebuild a domain error from its kind, e.g. when relaying a downstream service's status."""
    for cls in _CLASSES:
        if cls.kind is kind:
            return cls(message, **kwargs)
    raise ValueError(kind)


@dataclass(frozen=True)
class ErrorDetails:
    """The decoded rich details of a failed call (what ``to_status`` encoded)."""

    code: str
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: tuple[tuple[str, str], ...] = ()  # (field, description), one per field
    retry_delay_s: float | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.violations)

    def to_error(self, prefix: str = "") -> RecstackError:
        """The domain error these details describe (the gateway relays downstream errors so)."""
        # A relayed message keeps its own "field: " prefix once; the fields travel as such.
        message = self.message
        joined = "|".join(self.fields)
        if joined and message.startswith(joined + ": "):
            message = message[len(joined) + 2 :]
        return error_for_kind(
            ErrorKind(self.code),
            prefix + message,
            field=self.fields,
            reason=self.reason or None,
            metadata=self.metadata,
            retry_after_s=self.retry_delay_s,
        )


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary), "..." marking
    a cut."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def to_status(exc: RecstackError) -> status_pb2.Status:
    """The ``google.rpc.Status`` of a domain error: ErrorInfo, then BadRequest, RetryInfo.

    Texts are clipped (MAX_MESSAGE_BYTES, MAX_DETAIL_BYTES) so the trailers stay small."""
    metadata = {k: clip(v, MAX_DETAIL_BYTES) for k, v in exc.metadata.items()}
    details = [error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=metadata)]
    if exc.fields:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=f, description=clip(exc.message, MAX_DETAIL_BYTES), reason=exc.reason
                    )
                    for f in exc.fields
                ]
            )
        )
    if exc.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(exc.retry_after_s * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for message in details:
        wrapped = any_pb2.Any()
        wrapped.Pack(message)
        packed.append(wrapped)
    code: int = code_pb2.Code.Value(exc.kind.value)
    return status_pb2.Status(code=code, message=clip(str(exc), MAX_MESSAGE_BYTES), details=packed)


def from_status(status: status_pb2.Status) -> ErrorDetails:
    """Decode a ``google.rpc.Status`` (unknown detail types are skipped)."""
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    retry = error_details_pb2.RetryInfo()
    has_retry = False
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
        elif detail.Is(retry.DESCRIPTOR):
            detail.Unpack(retry)
            has_retry = True
    return ErrorDetails(
        code=code_pb2.Code.Name(status.code),
        message=status.message,
        reason=info.reason,
        domain=info.domain,
        metadata=dict(info.metadata),
        violations=tuple((v.field, v.description) for v in bad.field_violations),
        retry_delay_s=retry.retry_delay.ToNanoseconds() / 1e9 if has_retry else None,
    )


def details_from_trailers(trailers: Iterable[Any] | None) -> ErrorDetails | None:
    """The rich details in a call's trailing metadata ((key, value) pairs), or None."""
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY:
            return from_status(status_pb2.Status.FromString(bytes(value)))
    return None
