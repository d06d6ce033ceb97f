"""Publish a built bundle version and fetch it onto a serving pod's volume.

Three subcommands (``python -m recstack.tools.publish ...``)::

    publish --bundles ROOT [--version V] --dest DIR      copy ROOT/V (default: ROOT's
                                                         CURRENT) to DIR/V, point DIR/CURRENT
    fetch   --source SRC [--version V] --dest DIR        SRC is a local bundles root or an
                                                         http(s) URL of one; copy SRC/V to
                                                         DIR/V, point DIR/CURRENT at V
    follow  --source SRC --dest DIR [--interval-s S]     keep DIR on SRC's CURRENT: install
                                                         each new version, PREVIOUS = the
                                                         one before, older ones removed

``publish`` is the release step (training output -> the shared bundle volume or a directory
served over HTTP); ``fetch`` is what each pod's initContainer runs before the service starts;
``follow`` is the optional sidecar that makes a pod take each newly published version (the
services' CURRENT watchers hot-swap to it; overlays/follow).

Invariants (both commands share ``_install``):

* Only the files listed in the source's ``manifest.json`` are copied; every listed path is
  checked with :func:`recstack.core.bundle.safe_member` (relative, no "..", no symlinks), and
  the version name must be a single path component, so nothing is written outside ``DIR``.
* A version is assembled in a hidden staging directory, verified with
  :meth:`recstack.core.bundle.Bundle.open` (sha256 of every file against the manifest, plus the
  manifest's ``version`` must equal the requested one), and only then renamed to ``DIR/V``.
  ``DIR/CURRENT`` is replaced atomically (write + ``os.replace``) last, so a reader of
  ``DIR`` sees the previous complete version or the new complete version, never a mix.
* An already present ``DIR/V`` is re-verified and reused (a restarted pod on a persistent
  volume does not download again); a corrupt one is replaced.
* HTTP(S) downloads never read more bytes than the manifest declares for a file; other
  URL schemes (``file:``, ``ftp:`` ...) are refused. No dependency beyond the stdlib.

Exit status: 0 on success, 2 on any failure (the message says which file and why), so an
initContainer that cannot deliver a verified bundle keeps the pod from starting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recstack.core.bundle import (
    CURRENT,
    MANIFEST,
    PREVIOUS,
    Bundle,
    point_current,
    safe_member,
    write_pointer,
)
from recstack.core.errors import BundleError
from recstack.runtime import logs

log = logging.getLogger("recstack.tools.publish")

HTTP_TIMEOUT_S = 60.0
HTTP_ATTEMPTS = 4
_CHUNK = 1 << 20


class PublishError(Exception):
    """A bundle could not be delivered (bad source, bad name, I/O or checksum failure)."""


def check_version_name(version: str) -> str:
    """A version is one path component: no separators, not "." or "..", not hidden."""
    name = version.strip()
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        raise PublishError(f"invalid bundle version name {version!r}")
    return name


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme.lower() in ("http", "https")


class Source:
    """Where bundle versions are read from: ``read(rel)`` and ``copy_to(rel, dest, size)``."""

    def read_text(self, rel: str) -> str:
        raise NotImplementedError

    def copy_to(self, rel: str, dest: Path, size: int | None) -> None:
        raise NotImplementedError


class LocalSource(Source):
    """A bundles root on a mounted volume (or any local directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        if not self.root.is_dir():
            raise PublishError(f"bundle source {root} is not a directory")

    def _path(self, rel: str) -> Path:
        try:
            return safe_member(self.root, rel)
        except BundleError as exc:
            raise PublishError(str(exc)) from exc

    def read_text(self, rel: str) -> str:
        try:
            return self._path(rel).read_text(encoding="utf-8")
        except OSError as exc:
            raise PublishError(f"cannot read {self.root / rel}: {exc}") from exc

    def copy_to(self, rel: str, dest: Path, size: int | None) -> None:
        src = self._path(rel)
        if not src.is_file():
            raise PublishError(f"{src}: listed in the manifest but not a regular file")
        shutil.copyfile(src, dest)


class HttpSource(Source):
    """A bundles root served over HTTP(S), e.g. an object store bucket's public URL."""

    def __init__(self, base_url: str, timeout: float = HTTP_TIMEOUT_S) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout

    def url(self, rel: str) -> str:
        # rel was checked by safe_member-style rules by the caller; quote each component.
        return self.base + "/" + "/".join(urllib.parse.quote(p) for p in rel.split("/"))

    def _open(self, rel: str) -> Any:
        url = self.url(rel)
        delay = 0.5
        for attempt in range(1, HTTP_ATTEMPTS + 1):
            try:
                return urllib.request.urlopen(
                    url, timeout=self.timeout
                )  # scheme checked in open_source
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or attempt == HTTP_ATTEMPTS:
                    raise PublishError(f"GET {url}: HTTP {exc.code}") from exc
            except (urllib.error.URLError, OSError) as exc:
                if attempt == HTTP_ATTEMPTS:
                    raise PublishError(f"GET {url}: {exc}") from exc
            log.warning("retrying download", extra={"url": url, "attempt": attempt})
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def read_text(self, rel: str) -> str:
        with self._open(rel) as resp:
            data: bytes = resp.read(64 * _CHUNK)
        return data.decode("utf-8")

    def copy_to(self, rel: str, dest: Path, size: int | None) -> None:
        written = 0
        with self._open(rel) as resp, dest.open("wb") as out:
            while chunk := resp.read(_CHUNK):
                written += len(chunk)
                if size is not None and written > size:
                    raise PublishError(f"{self.url(rel)}: larger than the manifest's {size} bytes")
                out.write(chunk)


def open_source(source: str) -> Source:
    """A local path or an http(s) URL; any other URL scheme is refused."""
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if is_url(source):
        return HttpSource(source)
    if scheme and len(scheme) > 1:  # "C:" style drive letters are not URLs; others are
        raise PublishError(f"unsupported bundle source {source!r}: use a path or http(s) URL")
    return LocalSource(Path(source))


def current_version(src: Source) -> str:
    """The version a bundles root's CURRENT pointer names."""
    return check_version_name(src.read_text(CURRENT))


def _verified(path: Path, version: str) -> Bundle:
    try:
        bundle = Bundle.open(path)
    except BundleError as exc:
        raise PublishError(str(exc)) from exc
    if bundle.version != version:
        raise PublishError(
            f"{path}: manifest says version {bundle.version!r}, expected {version!r}"
        )
    return bundle


def _install(src: Source, version: str, dest: Path, *, set_current: bool = True) -> Path:
    """Copy ``version`` from ``src`` into ``dest`` (staged, verified, renamed); see module doc."""
    version = check_version_name(version)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / version
    if final.is_symlink():
        raise PublishError(f"{final} is a symlink; refusing to write through it")
    if final.exists():
        try:
            _verified(final, version)
            log.info("bundle already present and verified", extra={"path": str(final)})
        except PublishError as exc:
            log.warning(
                "replacing corrupt bundle copy", extra={"path": str(final), "why": str(exc)}
            )
            shutil.rmtree(final)
    if not final.exists():
        manifest_text = src.read_text(f"{version}/{MANIFEST}")
        try:
            manifest = json.loads(manifest_text)
            files: dict[str, dict[str, Any]] = manifest["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PublishError(f"{version}/{MANIFEST}: not a bundle manifest ({exc})") from exc
        staging = dest / f".{version}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            (staging / MANIFEST).write_text(manifest_text, encoding="utf-8")
            for rel, meta in sorted(files.items()):
                target = _safe_target(staging, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                size = meta.get("bytes") if isinstance(meta, dict) else None
                src.copy_to(f"{version}/{rel}", target, int(size) if size is not None else None)
            _verified(staging, version)
            os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("bundle installed", extra={"version": version, "path": str(final)})
    if set_current:
        point_current(dest, version)
    return final


def _safe_target(root: Path, rel: str) -> Path:
    try:
        return safe_member(root, rel)
    except BundleError as exc:
        raise PublishError(str(exc)) from exc


def fetch(
    source: str, dest: str | os.PathLike[str], version: str = "", previous_version: str = ""
) -> Path:
    """Install ``version`` (default: the source's CURRENT) from ``source`` into ``dest``.

    ``previous_version`` (a rollout in progress): install it too and point ``PREVIOUS`` at
    it, so the service also serves callers still on that version (docs/deploy.md).
    """
    src = open_source(source)
    version = version or current_version(src)
    if not previous_version or previous_version == version:
        return _install(src, version, Path(dest))
    _install(src, previous_version, Path(dest), set_current=False)
    final = _install(src, version, Path(dest))
    # Last: _install's CURRENT update set PREVIOUS to whatever this volume served before.
    write_pointer(Path(dest), PREVIOUS, check_version_name(previous_version))
    return final


def publish(
    bundles: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    version: str = "",
    *,
    set_current: bool = True,
) -> Path:
    """Copy a built version from a local bundles root to ``dest`` (a volume or web root)."""
    src = LocalSource(Path(bundles))
    return _install(src, version or current_version(src), Path(dest), set_current=set_current)


def follow_once(source: str, dest: str | os.PathLike[str]) -> str | None:
    """One step of ``follow``: when the source's CURRENT names a version ``dest`` does not
    serve, install it and point ``dest``'s CURRENT at it (the version served before becomes
    PREVIOUS, so the service keeps answering callers on it during the roll); then remove
    every other version from ``dest``. Returns the version installed, or None."""
    dest = Path(dest)
    src = open_source(source)
    version = current_version(src)
    try:
        serving = (dest / CURRENT).read_text().strip()
    except FileNotFoundError:
        serving = ""
    installed = None
    if version != serving:
        _install(src, version, dest)
        installed = version
    keep = {version, serving} if installed else {version}
    with contextlib.suppress(FileNotFoundError):
        keep.add((dest / PREVIOUS).read_text().strip())
    for entry in dest.iterdir():
        # Only complete version directories go; hidden staging ones are _install's. A
        # service may still hold CURRENT and PREVIOUS, never an older one (its grace period
        # is far shorter than a training cycle).
        old = not entry.name.startswith(".") and entry.name not in keep
        if old and entry.is_dir() and (entry / MANIFEST).is_file():
            shutil.rmtree(entry)
            log.info("bundle removed", extra={"version": entry.name})
    return installed


def follow(
    source: str, dest: str | os.PathLike[str], interval_s: float, stop: threading.Event
) -> None:
    """Run :func:`follow_once` every ``interval_s`` until ``stop`` is set. A failed step
    (source unreachable, a corrupt copy) is logged and retried: the service keeps serving
    what it has."""
    while not stop.is_set():
        try:
            follow_once(source, dest)
        except (PublishError, OSError) as exc:
            log.warning("bundle follow step failed: %s", exc)
        stop.wait(interval_s)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recstack.tools.publish", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("publish", help="copy a built bundle version to a target directory")
    p.add_argument("--bundles", required=True, help="local bundles root (training --out)")
    p.add_argument("--version", default="", help="version to publish (default: its CURRENT)")
    p.add_argument("--dest", required=True, help="target bundles root (volume, web root)")
    p.add_argument(
        "--set-current",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="point the target's CURRENT at the version (default: yes)",
    )
    f = sub.add_parser("fetch", help="install a bundle version from a path or http(s) URL")
    f.add_argument("--source", required=True, help="bundles root: a path or an http(s) URL")
    f.add_argument("--version", default="", help="version to fetch (default: source CURRENT)")
    f.add_argument("--dest", required=True, help="local bundles root the service reads")
    f.add_argument(
        "--previous-version",
        default="",
        help="during a rollout: also install this version and point PREVIOUS at it",
    )
    w = sub.add_parser(
        "follow",
        help="keep a local bundles root on the source's CURRENT (a pod's sidecar: the "
        "services' CURRENT watchers then hot-swap)",
    )
    w.add_argument("--source", required=True, help="bundles root: a path or an http(s) URL")
    w.add_argument("--dest", required=True, help="local bundles root the service reads")
    w.add_argument(
        "--interval-s", type=float, default=30.0, help="seconds between checks (default 30)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, "recstack-publish")
    if args.command == "follow":
        if args.interval_s <= 0:
            log.error("--interval-s must be > 0")
            return 2
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        follow(args.source, args.dest, args.interval_s, stop)
        return 0
    try:
        if args.command == "publish":
            path = publish(args.bundles, args.dest, args.version, set_current=args.set_current)
        else:
            path = fetch(args.source, args.dest, args.version, args.previous_version)
    except (PublishError, OSError) as exc:
        log.error("bundle delivery failed: %s", exc)
        return 2
    log.info("done", extra={"command": args.command, "path": str(path)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
