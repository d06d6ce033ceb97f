"""Export the live stores to the generic data format: the learning loop's input.

What a build from live data learns from (``python -m training build --from-live``):

- **items**: the serving bundle's catalog, then every item of the base data it lacks, then
  the recall service's catalog log applied in sequence order (an upsert adds or replaces an
  item's title, text and metadata; a delete removes it). That is the catalog recall serves.
- **interactions**: the base data (the data the serving bundle was trained from, or the
  previous export: merging is idempotent) plus the gateway's recorded events of the chosen
  types (default: all of ``view``, ``click``, ``like``, ``purchase``; each counts as one
  implicit positive, as a CSV interaction does). Event times are milliseconds and become
  Unix seconds (the recency features count in seconds); events keep their recorded order
  within a second. An interaction identical to one already there (same user, item and
  second) is kept once. Interactions on items no longer in the catalog are dropped.
- **deleted users** (``DeleteUser``): every base interaction of a user with a tombstone is
  dropped, and their recorded events were deleted with them, so nothing they did before
  the deletion reaches any exported set. Events such a user records *after* the deletion
  are new data and are exported.

The result is written with :func:`training.data.write_dataset` plus ``export.json`` (what
was read, kept and dropped, with counts), and is validated by loading it back.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.data import (
    DataError,
    Interaction,
    Item,
    load_dataset,
    write_dataset,
)

EXPORT_SUMMARY = "export.json"
LOG_PAGE = 5_000


def _require_store(dsn: str, what: str, flag: str) -> None:
    """A SQLite DSN must name an existing file: opening would silently create an empty one."""
    from recstack.core.storage import SQLITE, parse_dsn

    backend, target = parse_dsn(dsn)
    if backend == SQLITE and not Path(target).is_file():
        raise DataError(f"{flag} {dsn}: no {what} database there")


def live_catalog(
    bundle_root: Path, base_items: Sequence[Item], catalog_dsn: str
) -> tuple[list[Item], dict[str, int]]:
    """The bundle's catalog + base items it lacks, with the catalog log applied in order."""
    from recall_service.catalog_log import DELETE, UPSERT, open_log
    from recstack.core.bundle import Bundle

    bundle = Bundle.open(bundle_root, verify="on_use")
    items: dict[str, Item] = {
        it.id: Item(it.id, it.title or it.text, it.text, dict(it.metadata))
        for it in bundle.iter_catalog()
    }
    stats = {"bundle_items": len(items), "upserts": 0, "deletes": 0}
    for it in base_items:
        items.setdefault(it.id, it)
    _require_store(catalog_dsn, "catalog log", "--catalog-dsn")
    log = open_log(catalog_dsn)
    try:
        after = 0
        while True:
            entries = log.read_after(after, LOG_PAGE)
            if not entries:
                break
            for entry in entries:
                w = entry.write
                if w.op == UPSERT:
                    # Replacing keeps the item's first position (dicts keep insertion order).
                    items[w.item_id] = Item(w.item_id, w.title or w.text, w.text, dict(w.metadata))
                    stats["upserts"] += 1
                elif w.op == DELETE:
                    items.pop(w.item_id, None)
                    stats["deletes"] += 1
            after = entries[-1].sequence
        stats["log_sequence"] = after
    finally:
        log.close()
    return list(items.values()), stats


def export_live(
    base_dir: Path,
    bundle_root: Path,
    events_dsn: str,
    catalog_dsn: str,
    out_dir: Path,
    event_types: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[int]]:
    """Write the merged live dataset to ``out_dir`` (generic format + ``export.json``);
    return the summary and the times (seconds) of the exported events."""
    from gateway.events import EVENT_TYPES, EventStore

    types = tuple(event_types or EVENT_TYPES)
    base = load_dataset(base_dir)
    items, catalog_stats = live_catalog(bundle_root, base.items, catalog_dsn)
    known = {it.id for it in items}

    _require_store(events_dsn, "events", "--events-dsn")
    store = EventStore(events_dsn)
    try:
        deleted = store.deleted_users()
        events = list(store.export(types))
    finally:
        store.close()

    dropped: Counter[str] = Counter()
    # (user, item, second) -> kept once; rows carry a sort key that keeps event order.
    seen: set[tuple[str, str, int]] = set()
    rows: list[tuple[int, int, Interaction]] = []
    for user, seq in base.user_interactions.items():
        if user in deleted:
            dropped["base_deleted_user"] += len(seq)
            continue
        for x in seq:
            if x.item_id not in known:
                dropped["base_deleted_item"] += 1
            elif (x.user_id, x.item_id, x.timestamp) not in seen:
                seen.add((x.user_id, x.item_id, x.timestamp))
                rows.append((x.timestamp * 1000, len(rows), x))
            else:
                dropped["duplicate"] += 1
    by_type: Counter[str] = Counter()
    n_base = len(rows)  # rows from here on are recorded events
    for user, item, kind, ts_ms in events:
        second = ts_ms // 1000
        if item not in known:
            dropped["event_unknown_item"] += 1
        elif (user, item, second) in seen:
            dropped["duplicate"] += 1
        else:
            seen.add((user, item, second))
            by_type[kind] += 1
            rows.append((ts_ms, len(rows), Interaction(user, item, second)))
    rows.sort(key=lambda r: (r[2].user_id, r[0], r[1]))
    interactions = [r[2] for r in rows]
    if not interactions:
        raise DataError("the export has no interactions (base data and events are empty)")

    # Staged next to out_dir and swapped in whole: out_dir may be the base data itself (the
    # previous export), and a reader never sees half of a new export.
    out_dir = Path(out_dir)
    stage = out_dir.with_name(f".{out_dir.name}.new")
    shutil.rmtree(stage, ignore_errors=True)
    write_dataset(stage, items, interactions)
    exported = load_dataset(stage)  # the format's own validation
    newest = max(x.timestamp for x in interactions)
    summary: dict[str, Any] = {
        "exported_at": int(time.time()),
        "base": {
            "path": str(base_dir),
            "items": len(base.items),
            "interactions": base.n_interactions,
        },
        "bundle": str(bundle_root),
        "catalog": {**catalog_stats, "items": len(items)},
        "events": {
            "types": list(types),
            "read": len(events),
            "kept": sum(by_type.values()),
            "kept_by_type": dict(sorted(by_type.items())),
            "newest_timestamp_ms": max((e[3] for e in events), default=None),
        },
        "deleted_users": len(deleted),
        "dropped": dict(sorted(dropped.items())),
        "interactions": exported.n_interactions,
        "users": len(exported.user_interactions),
        "newest_timestamp": newest,
        "fingerprint": exported.fingerprint,
    }
    (stage / EXPORT_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    stage.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    event_seconds = [r[2].timestamp for r in rows if r[1] >= n_base]
    return summary, event_seconds
