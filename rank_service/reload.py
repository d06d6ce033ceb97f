"""Hot swap of the rank service's bundle (no grpc here).

``BundleReloader`` owns the ``CoreRef`` the servicer reads. ``reload()`` resolves the
configured ``--bundle`` path again (a root's ``CURRENT`` pointer may now name another
version), and if it names a different bundle directory, builds a complete new core *off
to the side*: ``Bundle.open`` verifies every checksum, the ORT session is created, the
self-check runs (through the batcher too). Only then is the new core published with one
``CoreRef.set`` (a single reference store: each request sees the old or the new core,
never a mix), and the old core is retired in the background: requests already inside it
finish on it, then its batcher stops. A bundle that fails any step is refused and logged;
the old core keeps serving untouched.

Triggers: ``start_watching(poll_s)`` polls the pointer from a daemon thread, and the
``Reload`` admin RPC calls ``reload()`` directly. ``_lock`` serialises reloads, so two
triggers never build two cores at once; requests never take it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from rank_service.core import RankCore, load_core, publish_metrics
from recstack import metrics
from recstack.batcher import BeforeRunHook
from recstack.bundle import resolve_bundle_dir
from recstack.config import RankOptions
from recstack.errors import BundleError, FailedPrecondition
from recstack.hotswap import PointerWatcher
from recstack.ort import SessionOptions
from recstack.server import CoreRef

log = logging.getLogger(__name__)

RETIRE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: the version now served, the one before, whether it changed."""

    bundle_version: str
    previous_version: str
    swapped: bool


class BundleReloader:
    """Loads, verifies and atomically swaps rank cores (see module docstring)."""

    def __init__(
        self,
        ref: CoreRef[RankCore],
        options: RankOptions,
        ort: SessionOptions,
        *,
        before_batch: BeforeRunHook | None = None,
    ) -> None:
        self.ref = ref
        self.options = options
        self.ort = ort
        self._before_batch = before_batch
        self._lock = threading.Lock()  # one load/swap at a time
        self._current: RankCore | None = None
        self._watcher = PointerWatcher(
            options.bundle, self._serving_root, self.reload, "rank-bundle-watch"
        )

    def load_initial(self) -> None:
        """First load at startup (errors propagate: the server reports the load failure)."""
        with self._lock:
            core = load_core(self.options, self.ort, before_batch=self._before_batch)
            self._publish(core)

    def _publish(self, core: RankCore) -> RankCore | None:
        old = self._current
        self.ref.set(core)  # the atomic swap: new requests now reach the new core
        self._current = core
        publish_metrics(core, serving=True)
        if old is not None:
            if (old.version, old.provider) != (core.version, core.provider):
                publish_metrics(old, serving=False)
            threading.Thread(
                target=old.retire,
                args=(RETIRE_TIMEOUT_S,),
                name=f"rank-retire-{old.version}",
                daemon=True,
            ).start()
        return old

    def reload(self, expected_version: str = "") -> ReloadOutcome:
        """Swap to what ``--bundle`` names now, if it differs; refuse a bad bundle.

        ``expected_version``: if set, the resolved bundle must have that version, else
        FailedPrecondition and nothing changes (guards rollouts against a stale pointer).
        """
        with self._lock:
            current = self._current
            previous = current.version if current is not None else ""
            try:
                target = resolve_bundle_dir(self.options.bundle).resolve()
            except BundleError as exc:
                metrics.RANK_RELOADS.labels("refused").inc()
                log.error("reload refused: %s", exc)
                raise FailedPrecondition(f"reload refused: {exc}", field="bundle") from exc
            if current is not None and target == current.root:
                self._check_expected(expected_version, current.version)
                metrics.RANK_RELOADS.labels("unchanged").inc()
                return ReloadOutcome(current.version, previous, swapped=False)
            log.info("loading bundle for hot swap", extra={"path": str(target)})
            try:
                core = load_core(
                    self.options, self.ort, path=str(target), before_batch=self._before_batch
                )
            except Exception as exc:  # any failure to build a verified core: refuse it
                metrics.RANK_RELOADS.labels("refused").inc()
                log.error(
                    "reload refused, still serving %s: %s",
                    previous,
                    exc,
                    extra={"path": str(target)},
                )
                raise FailedPrecondition(
                    f"bundle at {target.name} refused ({exc}); still serving {previous!r}",
                    field="bundle",
                ) from exc
            try:
                self._check_expected(expected_version, core.version)
            except FailedPrecondition:
                core.retire(timeout=5)
                metrics.RANK_RELOADS.labels("refused").inc()
                raise
            self._publish(core)
            metrics.RANK_RELOADS.labels("swapped").inc()
            log.info("hot-swapped ranker", extra={"from": previous, "to": core.version})
            return ReloadOutcome(core.version, previous, swapped=True)

    @staticmethod
    def _check_expected(expected: str, actual: str) -> None:
        if expected and expected != actual:
            raise FailedPrecondition(
                f"the bundle pointer names version {actual!r}, not the expected {expected!r}",
                field="expected_version",
            )

    # ---- pointer watcher ----

    def start_watching(self, poll_s: float) -> None:
        """Poll the ``--bundle`` pointer every ``poll_s`` seconds (daemon thread)."""
        self._watcher.start(poll_s)

    def _serving_root(self) -> Path | None:
        # A single reference load without the lock: a stale value only causes one redundant
        # reload() call, which re-checks under the lock.
        current = self._current
        return None if current is None else current.root

    def close(self) -> None:
        """Stop watching and retire the serving core (server shutdown)."""
        self._watcher.stop()
        with self._lock:
            if self._current is not None:
                self._current.retire(timeout=5)
