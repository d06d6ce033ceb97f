"""The one core lifecycle of the recall and rank services: versions, leases, hot swap.

A service holds its loaded bundles as *cores*, one per bundle version (embedding space):
the **primary** (the version its ``--bundle`` pointer names; requests that name no version
get it) and, during a rollout, **retained** older or newer versions that requests still
name. Nothing is ever mixed: a request leases exactly one core, chosen by the version it
names, and a version the service does not hold is refused with
:class:`VersionNotServed` (FAILED_PRECONDITION naming ``embedding_version``); the caller
(the gateway) then asks for a version both sides hold. Retention is what makes a rollout
fail no call whichever service swaps first (docs/deploy.md, "zero-failure roll").

Invariants (all state below is guarded by ``Versions._lock``; nothing slow runs under it):

* A lease is taken in one step under the lock (look-up + in-flight count), so a core is
  never closed while a request runs on it; a retired core is removed from the map at once
  (no new lease can find it) and closed by a daemon thread once its last lease ends.
* ``publish`` makes a core primary with one dict store: each request sees the old or the
  new primary, never a mix. The replaced primary stays as a retained version.
* A retained version is retired once no lease has named it for ``grace_s`` seconds
  (``sweep``, run by the watcher thread and at every publish). ``grace_s = 0`` retires a
  replaced primary as soon as its in-flight requests end.

:class:`Lifecycle` drives it: it resolves the pointer, builds a new core *off to the side*
(verify, load, self-check), publishes it only if every step passed (a refused bundle leaves
the serving cores untouched), and optionally also loads the root's ``PREVIOUS`` version at
start-up, so a process started mid-rollout can still serve callers of the old version.
:class:`PointerWatcher` polls the pointer and decides *when* to reload.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from recstack.core import metrics
from recstack.core.bundle import resolve_bundle_dir, resolve_previous_dir
from recstack.core.errors import BundleError, FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

VERSION_FIELD = "embedding_version"


class Core(Protocol):
    """What a service's core offers the lifecycle."""

    @property
    def version(self) -> str: ...

    @property
    def root(self) -> Path: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Core)


class VersionNotServed(FailedPrecondition):
    """A request named a bundle version this process does not hold (any more, or yet)."""

    def __init__(self, version: str, held: tuple[str, ...]) -> None:
        super().__init__(
            f"bundle version {version!r} is not served here (serving {list(held)}); "
            "ask in one of those",
            field=VERSION_FIELD,
            reason="VERSION_NOT_SERVED",
            metadata={"version": version, "serving": ",".join(held)},
        )
        self.version = version
        self.held = held


class _Slot(Generic[C]):
    __slots__ = ("core", "last_named", "leases", "retired")

    def __init__(self, core: C, now: float) -> None:
        self.core = core
        self.leases = 0
        self.last_named = now
        self.retired = False


class Versions(Generic[C]):
    """Cores by bundle version: one primary plus retained versions (see module docstring)."""

    def __init__(
        self,
        what: str,
        grace_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_retire: Callable[[C], None] | None = None,
    ) -> None:
        self.what = what
        self.grace_s = grace_s
        self._clock = clock
        self._on_retire = on_retire
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot[C]] = {}  # insertion order = load order
        self._primary: str | None = None

    # -- requests ------------------------------------------------------------------------

    @contextmanager
    def lease(self, version: str = "") -> Iterator[C]:
        """The core of ``version`` ("" = the primary) for the duration of the block."""
        slot = self._acquire(version)
        try:
            yield slot.core
        finally:
            self._release(slot)

    def _acquire(self, version: str) -> _Slot[C]:
        with self._lock:
            if self._primary is None:
                raise Unavailable(f"{self.what} is still loading its bundle")
            slot = self._slots.get(version or self._primary)
            if slot is None:
                raise VersionNotServed(version, self._held())
            slot.leases += 1
            slot.last_named = self._clock()
            return slot

    def _release(self, slot: _Slot[C]) -> None:
        with self._lock:
            slot.leases -= 1
            done = slot.retired and slot.leases == 0
        if done:
            self._close_later(slot.core)

    def primary(self) -> C:
        """The primary core, without a lease (for metadata such as dim and info)."""
        with self._lock:
            if self._primary is None:
                raise Unavailable(f"{self.what} is still loading its bundle")
            return self._slots[self._primary].core

    def peek(self) -> C | None:
        """The primary core, or None while loading (shutdown paths that must not raise)."""
        with self._lock:
            return None if self._primary is None else self._slots[self._primary].core

    def held(self) -> tuple[str, ...]:
        """Versions served now: the primary first, then retained ones, newest loaded first."""
        with self._lock:
            return self._held()

    def _held(self) -> tuple[str, ...]:
        others = [v for v in reversed(self._slots) if v != self._primary]
        return ((self._primary,) if self._primary else ()) + tuple(others)

    @contextmanager
    def lease_all(self) -> Iterator[list[C]]:
        """Every held core, leased (e.g. to apply catalog writes to each embedding space)."""
        with self._lock:
            slots = list(self._slots.values())
            for s in slots:
                s.leases += 1
        try:
            yield [s.core for s in slots]
        finally:
            for s in slots:
                self._release(s)

    # -- changes -------------------------------------------------------------------------

    def publish(self, core: C) -> str | None:
        """Make ``core`` the primary; returns the version it replaced as primary (if any).

        A core of the same version as a held one replaces it (the old one retires); the
        replaced primary of another version is retained (``grace_s`` > 0) or retired.
        """
        with self._lock:
            before = self._primary
            retire = [self._slots.pop(core.version)] if core.version in self._slots else []
            self._slots[core.version] = _Slot(core, self._clock())
            self._primary = core.version
            if before is not None and before != core.version:
                if self.grace_s <= 0:
                    retire.append(self._slots.pop(before))
                else:
                    # The grace period of a replaced primary starts now, not at its last
                    # request: a caller still on that version must find it after the swap.
                    self._slots[before].last_named = self._clock()
            closing = self._retire_locked(retire)
        self._close_all(closing)
        self.sweep()
        return before

    def retain(self, core: C) -> bool:
        """Hold ``core`` as a retained (non-primary) version; False if that version is held."""
        with self._lock:
            if core.version in self._slots:
                return False
            self._slots[core.version] = _Slot(core, self._clock())
            return True

    def sweep(self) -> list[str]:
        """Retire retained versions no request has named for ``grace_s``; their names."""
        with self._lock:
            now = self._clock()
            stale = [
                v
                for v, s in self._slots.items()
                if v != self._primary and now - s.last_named >= self.grace_s
            ]
            closing = self._retire_locked([self._slots.pop(v) for v in stale])
        self._close_all(closing)
        for v in stale:
            log.info(
                "retained bundle version retired",
                extra={"role": self.what, "version": v, "grace_s": self.grace_s},
            )
        return stale

    def close(self) -> None:
        """Retire every core (shutdown: the server has already finished its RPCs)."""
        with self._lock:
            closing = self._retire_locked(list(self._slots.values()))
            self._slots.clear()
            self._primary = None
        for core in closing:
            self._close(core)

    def _retire_locked(self, slots: list[_Slot[C]]) -> list[C]:
        """Mark retired; the cores with no lease left, to close now (outside the lock)."""
        for s in slots:
            s.retired = True
        return [s.core for s in slots if s.leases == 0]

    def _close_all(self, cores: list[C]) -> None:
        for core in cores:
            self._close_later(core)

    def _close_later(self, core: C) -> None:
        # Closing can wait for a batcher to drain: never on a request thread or under a lock.
        threading.Thread(
            target=self._close, args=(core,), name=f"retire-{core.version}", daemon=True
        ).start()

    def _close(self, core: C) -> None:
        try:
            if self._on_retire is not None:
                self._on_retire(core)
            core.close()
        except Exception:
            log.exception("closing a retired core failed", extra={"version": core.version})


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: the version now primary, the one before, whether it changed."""

    bundle_version: str
    previous_version: str
    swapped: bool


class Lifecycle(Generic[C]):
    """Builds, verifies and publishes the cores of the bundles ``path`` names.

    ``build(dir)`` returns a self-checked core for a bundle directory or raises.
    ``publishing(core)`` is entered around the publish step (recall takes its write gate
    there and catches the new core up with the catalog log, so no acknowledged write is
    missing from the new primary). ``_lock`` serialises loads: two triggers never build two
    cores at once; requests never take it.
    """

    def __init__(
        self,
        service: str,
        path: str,
        build: Callable[[Path], C],
        *,
        grace_s: float,
        load_previous: bool,
        publishing: Callable[[C], AbstractContextManager[object]] | None = None,
        on_serving: Callable[[C, bool], None] | None = None,
    ) -> None:
        self.service = service
        self.path = path
        self._build = build
        self._load_previous = load_previous
        self._publishing = publishing or (lambda core: nullcontext())
        self._on_serving = on_serving
        self.versions: Versions[C] = Versions(
            f"{service} service", grace_s, on_retire=self._retired
        )
        self._lock = threading.Lock()
        self._watcher = PointerWatcher(path, self._serving_root, self.reload, f"{service}-watch")

    def _retired(self, core: C) -> None:
        if self._on_serving is not None:
            self._on_serving(core, False)

    def _publish(self, core: C) -> str | None:
        with self._publishing(core):
            before = self.versions.publish(core)
        if self._on_serving is not None:
            self._on_serving(core, True)
        return before

    def load_initial(self) -> None:
        """First load (errors propagate: the server reports the load failure), then the
        root's PREVIOUS version if asked and present (a failure there is only logged)."""
        with self._lock:
            target = resolve_bundle_dir(self.path).resolve()
            self._publish(self._build(target))
            previous = resolve_previous_dir(self.path) if self._load_previous else None
            if previous is None or previous.resolve() == target:
                return
            try:
                core = self._build(previous.resolve())
            except Exception as exc:
                log.warning(
                    "previous bundle version not loaded; serving only the current one",
                    extra={"role": self.service, "path": str(previous), "error": str(exc)},
                )
                return
            if self.versions.retain(core):
                if self._on_serving is not None:
                    self._on_serving(core, True)
                log.info(
                    "previous bundle version retained for rollouts",
                    extra={"role": self.service, "version": core.version},
                )
            else:
                core.close()

    def reload(self, expected_version: str = "") -> ReloadOutcome:
        """Publish what the pointer names now, if it differs; refuse a bad bundle.

        ``expected_version``: if set, the resolved bundle must have that version, else
        FailedPrecondition and nothing changes (guards rollouts against a stale pointer).
        """
        with self._lock:
            current = self.versions.peek()
            previous = current.version if current is not None else ""
            try:
                target = resolve_bundle_dir(self.path).resolve()
            except BundleError as exc:
                self._count("refused")
                log.error("reload refused: %s", exc, extra={"role": self.service})
                raise FailedPrecondition(f"reload refused: {exc}", field="bundle") from exc
            if current is not None and target == current.root:
                self._check_expected(expected_version, current.version)
                self._count("unchanged")
                return ReloadOutcome(current.version, previous, swapped=False)
            log.info("loading bundle for hot swap", extra={"path": str(target)})
            try:
                core = self._build(target)
            except Exception as exc:  # any failure to build a verified core: refuse it
                self._count("refused")
                log.error(
                    "reload refused, still serving %s: %s",
                    previous,
                    exc,
                    extra={"role": self.service, "path": str(target)},
                )
                raise FailedPrecondition(
                    f"bundle at {target.name} refused ({exc}); still serving {previous!r}",
                    field="bundle",
                ) from exc
            try:
                self._check_expected(expected_version, core.version)
            except FailedPrecondition:
                core.close()
                self._count("refused")
                raise
            self._publish(core)
            self._count("swapped")
            log.info(
                "bundle hot-swapped",
                extra={
                    "role": self.service,
                    "from": previous,
                    "to": core.version,
                    "held": list(self.versions.held()),
                },
            )
            return ReloadOutcome(core.version, previous, swapped=True)

    def _count(self, outcome: str) -> None:
        metrics.BUNDLE_RELOADS.labels(self.service, outcome).inc()

    @staticmethod
    def _check_expected(expected: str, actual: str) -> None:
        if expected and expected != actual:
            raise FailedPrecondition(
                f"the bundle pointer names version {actual!r}, not the expected {expected!r}",
                field="expected_version",
            )

    def start_watching(self, poll_s: float) -> None:
        """Poll the pointer every ``poll_s`` seconds (and sweep retained versions)."""
        self._watcher.start(poll_s, self.versions.sweep)

    def _serving_root(self) -> Path | None:
        # No lock: a stale value only causes one redundant reload(), which re-checks.
        current = self.versions.peek()
        return None if current is None else current.root

    def close(self) -> None:
        """Stop watching and close every core (server shutdown)."""
        self._watcher.stop()
        with self._lock:
            self.versions.close()


class PointerWatcher:
    """A daemon thread polling ``path`` every ``poll_s`` seconds (0 = never).

    It only decides *when* to reload: when the path resolves to a bundle directory other
    than the one serving and other than the last one refused (a bad version is reported
    once, not at every poll). Each poll also runs ``every_poll`` (the retention sweep).
    """

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

    def start(self, poll_s: float, every_poll: Callable[[], object] | None = None) -> None:
        if poll_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, args=(poll_s, every_poll), name=self.name, daemon=True
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

    def _run(self, poll_s: float, every_poll: Callable[[], object] | None) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.check()
                if every_poll is not None:
                    every_poll()
            except Exception:
                log.exception("%s: unexpected error while hot-swapping", self.name)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
