"""A recall replica's lifecycle: load, replay, snapshots, background tailing, hot swap.

Start-up: open the catalog log; load the newest valid snapshot taken for this bundle
version and shard (else the bundle's own index), then replay the log from the snapshot's
sequence. A snapshot that fails its checksums is logged and ignored: the log is the system
of record, so falling back to bundle + full replay is always correct, only slower.

Background: a tailer thread applies log entries written by other replicas every
``log_poll_s`` and writes a snapshot every ``snapshot_every`` applied writes; a watcher
polls the bundle root's ``CURRENT`` every ``bundle_poll_s`` and hot-swaps to a new version.

Hot swap (:class:`recstack.core.lifecycle.Lifecycle`, shared with rank): the new core is built
and replayed while the old one serves. Writes run under ``_write_gate`` on the primary
core; a swap takes the gate, applies the last entries to the new core, publishes it and
releases the gate, so no write acknowledged by the old core can be missing from the new
one. The replaced core stays loaded while requests still name its version
(``RecallRequest.embedding_version``, a rollout) and the tailer keeps it caught up with the
log in its own embedding space; requests that hold it finish on it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from recall_service.catalog_log import CatalogLog, open_log
from recall_service.core import ItemWrite, RecallCore
from recall_service.index import IndexParams, ItemIndex
from recstack.core import metrics
from recstack.core.bundle import Bundle
from recstack.core.config import RecallOptions
from recstack.core.deadline import Deadline
from recstack.core.domain import RecallQuery, RecallResult
from recstack.core.errors import BundleError, InvalidArgument
from recstack.core.lifecycle import Lifecycle, ReloadOutcome
from recstack.models.encoder import TextEncoder
from recstack.models.ort import SessionOptions
from recstack.models.user_tower import UserTower

log = logging.getLogger(__name__)
SNAPSHOT_POINTER = "SNAPSHOT"


class Replica:
    """Owns the current RecallCore and everything that replaces or feeds it."""

    def __init__(self, options: RecallOptions, ort: SessionOptions) -> None:
        self.options = options
        self.ort = ort
        self.state_dir = Path(options.state_dir)
        self._write_gate = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._catalog: CatalogLog | None = None
        self._snapshot_seq = 0
        self.lifecycle: Lifecycle[RecallCore] = Lifecycle(
            "recall",
            options.bundle,
            lambda path: self._build(Bundle.open(path, verify="on_use")),
            grace_s=options.version_grace_s,
            load_previous=options.load_previous,
            publishing=self._publishing,
            on_serving=_bundle_gauge,
        )
        self.versions = self.lifecycle.versions

    # -- start-up ------------------------------------------------------------------------

    def load(self) -> None:
        """Build the first core(s) (blocking) and start the background threads."""
        o = self.options
        if not 0 <= o.shard_index < o.shard_count:
            raise BundleError(f"--shard-index {o.shard_index} is not in [0, {o.shard_count})")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        dsn = o.catalog_dsn or f"sqlite:///{self.state_dir.resolve()}/catalog.db"
        try:
            self._catalog = open_log(dsn)
            self.lifecycle.load_initial()
        except sqlite3.DatabaseError as exc:
            # A damaged SQLite file: refuse to serve (exit 3) rather than guess at the
            # system of record; the operator restores it or moves it away.
            raise BundleError(f"catalog log {dsn} is unreadable: {exc}") from exc
        self._start("log-tailer", self._tail, o.log_poll_s)
        self.lifecycle.start_watching(o.bundle_poll_s)

    @contextmanager
    def _publishing(self, core: RecallCore) -> Iterator[None]:
        # Under the write gate no write can commit between this catch-up and the publish.
        with self._write_gate:
            core.catch_up()
            yield
        metrics.INDEX_ITEMS.set(len(core.index))

    def _build(self, bundle: Bundle) -> RecallCore:
        """A self-checked core for ``bundle``, caught up with the whole log."""
        assert self._catalog is not None
        o = self.options
        started = time.perf_counter()
        index = self._from_snapshot(bundle) or ItemIndex.from_bundle(
            bundle, o.shard_index, o.shard_count, o.exact_threshold
        )
        from_seq = index.applied_sequence
        index.full_scan_threshold = o.full_scan_threshold
        core = RecallCore(
            bundle,
            index,
            TextEncoder(bundle, self.ort),
            UserTower(bundle, self.ort),
            self._catalog,
            o,
            TextEncoder(bundle, self.ort, int8=True) if o.query_encoder_int8 else None,
        )
        try:
            core.load_directory(from_seq)
            replayed = core.catch_up()
            core.self_check()
        except BaseException:
            core.close()  # a refused core must not leave its encoder batcher running
            raise
        log.info(
            "recall core ready",
            extra={
                "version": core.version,
                "shard": f"{o.shard_index}/{o.shard_count}",
                "snapshot_sequence": from_seq,
                "replayed": replayed,
                "applied_sequence": index.applied_sequence,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return core

    def _snapshot_meta(self, bundle: Bundle) -> dict[str, object]:
        o = self.options
        return {
            "bundle_version": bundle.version,
            "shard_index": o.shard_index,
            "shard_count": o.shard_count,
        }

    def _from_snapshot(self, bundle: Bundle) -> ItemIndex | None:
        pointer = self.state_dir / SNAPSHOT_POINTER
        if not pointer.is_file():
            return None
        directory = self.state_dir / pointer.read_text().strip()
        params = IndexParams.of(bundle)
        try:
            meta = json.loads((directory / "meta.json").read_text())
            want = self._snapshot_meta(bundle)
            if any(meta.get(k) != v for k, v in want.items()):
                log.info(
                    "snapshot is for another bundle or shard; not used",
                    extra={"snapshot": str(directory)},
                )
                return None
            index, _ = ItemIndex.load_snapshot(directory, params, self.options.exact_threshold)
        except (OSError, ValueError, KeyError, BundleError, RuntimeError) as exc:
            log.error(
                "snapshot unusable, rebuilding from bundle + log",
                extra={"snapshot": str(directory), "error": str(exc)},
            )
            return None
        self._snapshot_seq = index.applied_sequence
        return index

    # -- background ----------------------------------------------------------------------

    def _start(self, name: str, loop: object, interval: float) -> None:
        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    loop()  # type: ignore[operator]
                except Exception:
                    log.exception("%s iteration failed; retrying", name)

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _tail(self) -> None:
        # Every held version applies the log in its own embedding space (retained cores
        # serve pinned reads during a rollout); the primary alone is snapshotted.
        with self.versions.lease_all() as cores:
            for core in cores:
                core.catch_up()
        with self.versions.lease() as primary:
            applied = primary.index.applied_sequence
        if self._catalog is not None:
            metrics.REPLAY_LAG.set(self._catalog.last_sequence() - applied)
        every = self.options.snapshot_every
        if every and applied - self._snapshot_seq >= every:
            self.snapshot()

    def snapshot(self) -> Path:
        """Write a snapshot of the primary core and point SNAPSHOT at it; prune old ones."""
        with self.versions.lease() as core:
            return self._snapshot(core)

    def _snapshot(self, core: RecallCore) -> Path:
        name = f"snapshot-{core.version}-{core.index.applied_sequence}-{time.time_ns()}"
        tmp = self.state_dir / (name + ".tmp")
        core.index.save(tmp, self._snapshot_meta(core.bundle))
        final = self.state_dir / name
        os.replace(tmp, final)
        pointer_tmp = self.state_dir / (SNAPSHOT_POINTER + ".tmp")
        pointer_tmp.write_text(name + "\n")
        os.replace(pointer_tmp, self.state_dir / SNAPSHOT_POINTER)
        for old in self.state_dir.glob("snapshot-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        self._snapshot_seq = core.index.applied_sequence
        log.info(
            "snapshot written", extra={"path": str(final), "applied_sequence": self._snapshot_seq}
        )
        return final

    # -- requests ------------------------------------------------------------------------

    def recall_batch(
        self, queries: Sequence[RecallQuery], deadline: Deadline
    ) -> list[RecallResult]:
        """Recalls in the embedding space the queries name ("" = the primary's)."""
        with self.versions.lease(batch_version(q.embedding_version for q in queries)) as core:
            return core.recall_batch(queries, deadline)

    def upsert(self, items: Sequence[ItemWrite]) -> int:
        with self._write_gate, self.versions.lease() as core:
            return core.upsert(items)

    def delete(self, ids: Sequence[str]) -> int:
        with self._write_gate, self.versions.lease() as core:
            return core.delete(ids)

    def reload(self, expected_version: str = "") -> ReloadOutcome:
        """Load what the bundle path points to now; swap if it is a new, good version."""
        return self.lifecycle.reload(expected_version)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.lifecycle.close()
        if self._catalog is not None:
            self._catalog.close()


def batch_version(versions: Iterable[str]) -> str:
    """The one embedding version a batch of recalls names (one space per batch)."""
    named = set(versions)
    if len(named) > 1:
        raise InvalidArgument(
            f"every request of a batch must name the same version, got {sorted(named)}",
            field="requests.embedding_version",
        )
    return named.pop() if named else ""


def _bundle_gauge(core: RecallCore, serving: bool) -> None:
    metrics.BUNDLE_INFO.labels("recall", core.version, core.encoder.provider).set(int(serving))
