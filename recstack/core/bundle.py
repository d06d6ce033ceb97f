"""Bundle I/O: the versioned directory that training writes and every service loads.

Layout (paths relative to the bundle directory; all listed in ``manifest.json``)::

    manifest.json          version, dim, component specs, metrics, sha256 of every file
    encoder/model.onnx     text encoder (token ids -> last_hidden_state), tokenizer.json
    ranker/model.onnx      ranker: inputs user[N,dim], item[N,dim] -> score[N]
    items/catalog.jsonl    one item per line: id, title, text, metadata (line i = label i)
    items/vectors.npy      float32 [count, dim], L2-normalised, row i = catalog line i
    index/hnsw.bin         hnswlib index (space "ip"), labels = catalog line numbers
    users/history.jsonl    user_id and item ids, most recent first (seed of user profiles)

A path given to a service may be a bundle directory or a root holding a ``CURRENT`` file
that names the version directory to use. Every file must stay inside the bundle (no "..",
absolute paths or symlinks) and match the manifest's sha256 before it is used: model files
are programs. Release tools verify every file at open (``verify="all"``); a service opens
with ``verify="on_use"``: every listed file must exist with its listed size at open, and
each file's sha256 is checked the first time the service asks for its path, so a service
hashes only the files it loads (rank does not hash the 91 MB encoder it never runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recstack.core.errors import BundleError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


CURRENT = "CURRENT"
# The version CURRENT named before the last publish (written by recstack.tools.publish): a
# service started mid-rollout also loads it, for callers still on the old version.
PREVIOUS = "PREVIOUS"


def _pointed(pointer: Path) -> Path:
    name = pointer.read_text().strip()
    if not name or "/" in name or name in (".", ".."):
        raise BundleError(f"{pointer}: invalid version name {name!r}")
    target = pointer.parent / name
    if (target / MANIFEST).is_file():
        return target
    raise BundleError(f"{pointer} names {name!r}, which has no {MANIFEST}")


def resolve_bundle_dir(path: str | os.PathLike[str]) -> Path:
    """A bundle directory, or the version a root's ``CURRENT`` pointer names."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    pointer = p / CURRENT
    if pointer.is_file():
        return _pointed(pointer)
    raise BundleError(f"{p} is neither a bundle (no {MANIFEST}) nor a root with CURRENT")


def resolve_previous_dir(path: str | os.PathLike[str]) -> Path | None:
    """The version a root's ``PREVIOUS`` pointer names; None for a bundle directory, a
    root without PREVIOUS, or one whose PREVIOUS names nothing loadable (logged by callers
    as "previous not loaded")."""
    pointer = Path(path) / PREVIOUS
    if (Path(path) / MANIFEST).is_file() or not pointer.is_file():
        return None
    try:
        return _pointed(pointer)
    except BundleError:
        return None


def safe_member(root: Path, rel: str) -> Path:
    """Resolve ``rel`` inside ``root``, refusing anything that could point outside it."""
    pure = Path(rel)
    if pure.is_absolute() or ".." in pure.parts or not rel:
        raise BundleError(f"bundle path {rel!r} must be relative and inside the bundle")
    full = root / pure
    for parent in [full, *full.parents]:
        if parent == root:
            break
        if parent.is_symlink():
            raise BundleError(f"bundle path {rel!r} is or passes through a symlink")
    return full


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record sha256 and size of every file under ``bundle_dir`` and write manifest.json."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(bundle_dir.rglob("*")):
        if path.is_symlink():
            raise BundleError(f"refusing to publish symlink {path}")
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(bundle_dir).as_posix()
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {**manifest, "format_version": FORMAT_VERSION, "files": files}
    tmp = bundle_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, bundle_dir / MANIFEST)
    return manifest


def write_pointer(root: Path, name: str, version: str) -> None:
    """Replace the pointer file ``root/name`` with ``version`` atomically."""
    tmp = root / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / name)


def point_current(root: Path, version: str) -> None:
    """Point ``root``'s CURRENT at ``version``; the version it named before becomes PREVIOUS
    (written first, so a reader never sees PREVIOUS equal to the new CURRENT). Each pointer
    is replaced atomically (write + ``os.replace``)."""
    try:
        before = (root / CURRENT).read_text().strip()
    except FileNotFoundError:
        before = ""
    if before and before != version:
        write_pointer(root, PREVIOUS, before)
    write_pointer(root, CURRENT, version)


def copy_bundle(src: Path, dst: Path, *, version: str | None = None) -> Path:
    """Copy a bundle directory, optionally under another version name (a distinct
    embedding space to the services: rollout drills and tests), re-writing its manifest."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest.pop("files", None)
    if version:
        manifest["version"] = version
    write_manifest(dst, manifest)
    return dst


@dataclass(frozen=True)
class CatalogItem:
    """One catalog entry as stored in the bundle."""

    id: str
    title: str
    text: str
    metadata: dict[str, Any]

    @property
    def display_title(self) -> str:
        """What stands for the item in a user text: its title, else its text."""
        return self.title or self.text


class Bundle:
    """A verified bundle: its manifest and the paths of its parts."""

    def __init__(self, root: Path, manifest: dict[str, Any], *, verify_on_use: bool) -> None:
        self.root = root
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.dim: int = int(manifest["dim"])
        self._verify_on_use = verify_on_use
        # Files whose sha256 matched (on_use mode); _verify_lock makes each check once.
        self.verified: set[str] = set()
        self._verify_lock = threading.Lock()

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, verify: Literal["all", "on_use", "none"] = "all"
    ) -> Bundle:
        """Open the bundle, verifying every file (``all``), each file when first used
        (``on_use``: the services), or none (``none``: tests reading their own output)."""
        root = resolve_bundle_dir(path).resolve()
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"{root / MANIFEST}: unreadable manifest: {exc}") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{root}: bundle format {manifest.get('format_version')!r}, "
                f"this build reads {FORMAT_VERSION}"
            )
        for key in ("version", "dim", "files", "encoder", "ranker", "items", "index"):
            if key not in manifest:
                raise BundleError(f"{root / MANIFEST}: missing key {key!r}")
        bundle = cls(root, manifest, verify_on_use=verify == "on_use")
        if verify == "all":
            bundle.verify()
        elif verify == "on_use":
            bundle.check_present()
        return bundle

    def check_present(self) -> None:
        """Every manifest file exists, stays inside and has its listed size (no hashing)."""
        for rel, meta in self.manifest["files"].items():
            full = safe_member(self.root, rel)
            if not full.is_file():
                raise BundleError(f"bundle {self.version}: missing file {rel}")
            size = meta.get("bytes")
            if size is not None and full.stat().st_size != int(size):
                raise BundleError(
                    f"bundle {self.version}: checksum mismatch for {rel} (it has "
                    f"{full.stat().st_size} bytes, the manifest says {size})"
                )

    def verify(self) -> None:
        """Check that every manifest file exists, stays inside, and matches its sha256."""
        for rel in self.manifest["files"]:
            self._check_sha256(rel)

    def _check_sha256(self, rel: str) -> Path:
        full = safe_member(self.root, rel)
        if not full.is_file():
            raise BundleError(f"bundle {self.version}: missing file {rel}")
        want = self.manifest["files"][rel]["sha256"]
        digest = sha256_file(full)
        if digest != want:
            raise BundleError(
                f"bundle {self.version}: checksum mismatch for {rel} "
                f"(manifest {want[:12]}, file {digest[:12]})"
            )
        return full

    def path(self, rel: str) -> Path:
        """Absolute path of a manifest-listed file (refuses unlisted or escaping paths);
        in on_use mode its sha256 is checked on the first call."""
        if rel not in self.manifest["files"]:
            raise BundleError(f"bundle {self.version}: {rel} is not listed in the manifest")
        if not self._verify_on_use:
            return safe_member(self.root, rel)
        with self._verify_lock:
            if rel not in self.verified:
                self._check_sha256(rel)
                self.verified.add(rel)
        return safe_member(self.root, rel)

    def section(self, name: str) -> dict[str, Any]:
        value = self.manifest.get(name)
        if not isinstance(value, dict):
            raise BundleError(f"bundle {self.version}: manifest section {name!r} missing")
        return value

    def iter_catalog(self) -> Iterator[CatalogItem]:
        with self.path(self.section("items")["catalog"]).open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    yield CatalogItem(
                        str(d["id"]),
                        d.get("title") or "",
                        d.get("text") or "",
                        d.get("metadata") or {},
                    )

    def load_vectors(self) -> np.ndarray:
        vectors = np.load(self.path(self.section("items")["vectors"]), allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.dtype != np.float32:
            raise BundleError(
                f"bundle {self.version}: vectors {vectors.shape} {vectors.dtype}, "
                f"expected (N, {self.dim}) float32"
            )
        return vectors

    def iter_user_profiles(self) -> Iterator[tuple[str, list[str], int]]:
        """(user id, item ids most recent first, newest interaction's Unix time in seconds
        or 0 when the bundle does not say) per seed user (``users/history.jsonl``)."""
        users = self.manifest.get("users")
        if not users:
            return
        with self.path(users["history"]).open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    last = d.get("last_time", 0)
                    if not isinstance(last, int) or isinstance(last, bool) or last < 0:
                        raise BundleError(
                            f"bundle {self.version}: user {d['user_id']}'s last_time "
                            f"{last!r} is not a Unix time in seconds"
                        )
                    yield str(d["user_id"]), [str(i) for i in d["items"]], last

    def iter_user_histories(self) -> Iterator[tuple[str, list[str]]]:
        """(user id, item ids most recent first) per seed user."""
        for user, items, _ in self.iter_user_profiles():
            yield user, items
