"""The harness's clock: monotonic seconds and sleeping until an absolute time.

Runners take a ``Clock`` so that the open-loop schedule and the coordinated-omission
correction can be exercised deterministically with ``ManualClock`` (time advances only when
told), while real runs use ``MonotonicClock`` (``time.perf_counter``).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (the origin is arbitrary)."""
        ...

    def sleep_until(self, t: float) -> None:
        """Return once ``now() >= t`` (at once if that time has passed)."""
        ...


class MonotonicClock:
    """Wall-clock monotonic time (``time.perf_counter``); sleeps without spinning.

    A sleep may overshoot by the OS timer slack (tens of microseconds); an open-loop run
    measures from the intended time, so the overshoot is counted, never hidden.
    """

    def now(self) -> float:
        return time.perf_counter()

    def sleep_until(self, t: float) -> None:
        left = t - time.perf_counter()
        while left > 0:
            time.sleep(left)
            left = t - time.perf_counter()


class ManualClock:
    """A clock that moves only by ``advance``/``sleep_until``: deterministic simulations."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        with self._lock:
            self._now += seconds

    def sleep_until(self, t: float) -> None:
        with self._lock:
            self.sleeps.append(t)
            self._now = max(self._now, t)
