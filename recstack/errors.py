"""Domain errors: the one place that says what can go wrong for a caller.

Cores raise these; the gRPC error interceptor (recstack.server) maps each ``kind`` to a
status code. This module does not import grpc, so cores stay transport-free.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    """What class of failure an error is; maps 1:1 to a gRPC status code."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"


class RecstackError(Exception):
    """Base of all errors a caller may see; ``field`` names the offending request field."""

    kind: ErrorKind = ErrorKind.INVALID_ARGUMENT

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class InvalidArgument(RecstackError):
    kind = ErrorKind.INVALID_ARGUMENT


class NotFound(RecstackError):
    kind = ErrorKind.NOT_FOUND


class FailedPrecondition(RecstackError):
    kind = ErrorKind.FAILED_PRECONDITION


class ResourceExhausted(RecstackError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class Unavailable(RecstackError):
    kind = ErrorKind.UNAVAILABLE


class DeadlineExceeded(RecstackError):
    kind = ErrorKind.DEADLINE_EXCEEDED


class Unauthenticated(RecstackError):
    kind = ErrorKind.UNAUTHENTICATED


class PermissionDenied(RecstackError):
    kind = ErrorKind.PERMISSION_DENIED


class BundleError(Exception):
    """A bundle is missing, malformed, or fails its checksums or self-check (startup error)."""


def error_for_kind(kind: ErrorKind, message: str) -> RecstackError:
    """Rebuild a domain error from its kind, e.g. when relaying a downstream service's status."""
    for cls in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unauthenticated,
        PermissionDenied,
    ):
        if cls.kind is kind:
            return cls(message)
    raise ValueError(kind)
