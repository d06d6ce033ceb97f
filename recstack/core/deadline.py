"""A transport-free deadline that cores check and pass downstream (invariant 7)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from recstack.core.errors import DeadlineExceeded


@dataclass(frozen=True)
class Deadline:
    """An absolute point on the monotonic clock; ``None`` expiry means no deadline."""

    expires_at: float | None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    @classmethod
    def none(cls) -> Deadline:
        return cls(None)

    def remaining(self) -> float | None:
        """Seconds left (may be negative), or None when unbounded."""
        return None if self.expires_at is None else self.expires_at - time.monotonic()

    def check(self, stage: str) -> None:
        """Raise DeadlineExceeded if no time is left before starting ``stage``."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"deadline passed before {stage}")

    def budget(self, fraction: float = 1.0, cap: float | None = None) -> float | None:
        """Time to give a downstream call: a fraction of what is left, optionally capped."""
        left = self.remaining()
        if left is None:
            return cap
        share = max(left, 0.0) * fraction
        return share if cap is None else min(share, cap)
