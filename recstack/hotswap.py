"""Watch a bundle root's ``CURRENT`` pointer and trigger a hot swap when it moves.

Shared by the recall and rank services: each owns its own ``reload()`` (verify, build and
self-check the new bundle off to the side, then swap atomically, raising
FailedPrecondition when it refuses one). The watcher only decides *when* to call it: when
the configured path resolves to a bundle directory other than the one serving and other
than the last one refused (a bad version is reported once, not at every poll).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from recstack.bundle import resolve_bundle_dir
from recstack.errors import BundleError, FailedPrecondition

log = logging.getLogger(__name__)


class PointerWatcher:
    """A daemon thread polling ``path`` every ``poll_s`` seconds (0 = never)."""

    def __init__(
        self,
        path: str,
        serving_root: Callable[[], Path | None],
        reload: Callable[[], object],
        name: str,
    ) -> None:
        self.path = path
        self.serving_root = serving_root
        self.reload = reload
        self.name = name
        self._refused: Path | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, poll_s: float) -> None:
        if poll_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, args=(poll_s,), name=self.name, daemon=True
        )
        self._thread.start()

    def check(self) -> None:
        """One poll: reload if the pointer names a new, not yet refused bundle."""
        try:
            target = resolve_bundle_dir(self.path).resolve()
        except BundleError as exc:
            log.warning("bundle pointer unreadable; keeping the current bundle: %s", exc)
            return
        if target in (self.serving_root(), self._refused):
            return
        try:
            self.reload()
        except FailedPrecondition as exc:
            self._refused = target
            log.error(
                "new bundle refused; still serving the old one",
                extra={"bundle": str(target), "error": str(exc)},
            )

    def _run(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.check()
            except Exception:
                log.exception("%s: unexpected error while hot-swapping", self.name)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
