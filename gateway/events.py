"""User profiles: the bundle's seed histories plus durably recorded interaction events.

Events go to one table (SQLite by default, PostgreSQL when gateways share it; see
recstack.core.storage) and are acknowledged only after commit. A user's history is their
recorded events, newest first, followed by their seed history from the bundle; a deleted
user's events are removed and a tombstone hides their seed history from then on (also
after they come back and record new events: the seed predates the deletion). The learning
loop reads the table back with :meth:`EventStore.export` and :meth:`EventStore.deleted_users`
(``training.live``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from recstack.core.errors import InvalidArgument, limit_exceeded
from recstack.core.storage import POSTGRES, Database

EVENT_TYPES = ("view", "click", "like", "purchase")


@dataclass(frozen=True)
class Profile:
    """A user's stored history (distinct item ids, most recent first) and the Unix time in
    seconds of their newest interaction (0: unknown, e.g. a seed user of an older bundle)."""

    items: tuple[str, ...]
    last_seen_s: int = 0


@dataclass(frozen=True)
class Event:
    """One interaction; ``timestamp_ms`` 0 means "now" (set when recorded)."""

    user_id: str
    item_id: str
    type: str = "view"
    timestamp_ms: int = 0


class EventStore:
    """Durable events + seed histories + popularity, behind one lock per connection."""

    def __init__(
        self,
        dsn: str,
        seed: Iterable[tuple[str, list[str]]] = (),
        max_batch: int = 1000,
        seed_last_seen: Mapping[str, int] | None = None,
    ) -> None:
        self.db = Database(dsn)
        self.max_batch = max_batch
        self._seed = {user: tuple(dict.fromkeys(items)) for user, items in seed}
        self._seed_last = dict(seed_last_seen or {})
        # Popularity from the bundle's interaction histories: how many users had each item.
        self.popularity = Counter(i for items in self._seed.values() for i in items)
        key = (
            "BIGSERIAL PRIMARY KEY"
            if self.db.backend == POSTGRES
            else ("INTEGER PRIMARY KEY AUTOINCREMENT")
        )
        with self.db.lock, self.db.begin():
            self.db.conn.execute(
                f"CREATE TABLE IF NOT EXISTS user_events (sequence {key}, user_id TEXT NOT NULL,"
                " item_id TEXT NOT NULL, type TEXT NOT NULL, timestamp_ms BIGINT NOT NULL)"
            )
            self.db.conn.execute(
                "CREATE INDEX IF NOT EXISTS user_events_by_user ON "
                "user_events (user_id, timestamp_ms)"
            )
            self.db.conn.execute(
                "CREATE TABLE IF NOT EXISTS deleted_users (user_id TEXT PRIMARY KEY)"
            )

    def validate(self, events: Sequence[Event]) -> None:
        if not events:
            raise InvalidArgument("at least one event is required", field="events")
        if len(events) > self.max_batch:
            raise limit_exceeded("events", len(events), self.max_batch, "events")
        for i, e in enumerate(events):
            if not e.user_id:
                raise InvalidArgument("must not be empty", field=f"events[{i}].user_id")
            if not e.item_id:
                raise InvalidArgument("must not be empty", field=f"events[{i}].item_id")
            if e.type not in EVENT_TYPES:
                raise InvalidArgument(
                    f"must be one of {EVENT_TYPES}, got {e.type!r}", field=f"events[{i}].type"
                )
            if e.timestamp_ms < 0:
                raise InvalidArgument("must be >= 0", field=f"events[{i}].timestamp_ms")

    def record(self, events: Sequence[Event]) -> int:
        """Commit the events; returns the sequence of the last one."""
        self.validate(events)
        now = int(time.time() * 1000)
        rows = [(e.user_id, e.item_id, e.type, e.timestamp_ms or now) for e in events]
        db = self.db
        with db.lock, db.begin():
            cur = db.conn.cursor()
            cur.executemany(
                db.sql(
                    "INSERT INTO user_events (user_id, item_id, type, "
                    "timestamp_ms) VALUES (?, ?, ?, ?)"
                ),
                rows,
            )
            cur.execute("SELECT max(sequence) FROM user_events")
            row = cur.fetchone()
        return int(row[0])

    def profile(self, user_id: str, limit: int) -> Profile | None:
        """At most ``limit`` distinct item ids, most recent first, and the newest
        interaction's time; None if the user is entirely unknown."""
        db = self.db
        with db.lock:
            rows = db.conn.execute(
                db.sql(
                    "SELECT item_id, timestamp_ms FROM user_events WHERE user_id = ? ORDER BY"
                    " timestamp_ms DESC, sequence DESC LIMIT ?"
                ),
                (user_id, limit),
            ).fetchall()
            deleted = db.conn.execute(
                db.sql("SELECT 1 FROM deleted_users WHERE user_id = ?"), (user_id,)
            ).fetchone()
        seed = () if deleted else self._seed.get(user_id, ())
        if not rows and not seed:
            return None if not deleted and user_id not in self._seed else Profile(())
        # Rows are newest first; an event's time may predate the seed's (a backfill).
        last = max(
            int(rows[0][1]) // 1000 if rows else 0, self._seed_last.get(user_id, 0) if seed else 0
        )
        items = tuple(dict.fromkeys([r[0] for r in rows] + list(seed)))[:limit]
        return Profile(items, last)

    def delete_user(self, user_id: str) -> int:
        """Remove the user's events and hide their seed history; returns events removed."""
        if not user_id:
            raise InvalidArgument("must not be empty", field="user_id")
        db = self.db
        with db.lock, db.begin():
            cur = db.conn.execute(db.sql("DELETE FROM user_events WHERE user_id = ?"), (user_id,))
            removed = cur.rowcount
            db.conn.execute(db.sql("DELETE FROM deleted_users WHERE user_id = ?"), (user_id,))
            db.conn.execute(db.sql("INSERT INTO deleted_users (user_id) VALUES (?)"), (user_id,))
        return int(removed)

    def export(
        self, types: Sequence[str] = EVENT_TYPES, page: int = 10_000
    ) -> Iterator[tuple[str, str, str, int]]:
        """Every recorded event of the given types as (user_id, item_id, type,
        timestamp_ms), in (timestamp_ms, sequence) order, read in pages of ``page`` rows
        (keyset on the sequence, so concurrent writes never skip or repeat a row)."""
        unknown = [t for t in types if t not in EVENT_TYPES]
        if unknown or not types:
            raise InvalidArgument(f"event types must be some of {EVENT_TYPES}", field="types")
        db = self.db
        with db.lock:
            row = db.conn.execute("SELECT max(sequence) FROM user_events").fetchone()
        last, after = int(row[0] or 0), 0
        rows: list[tuple[int, int, str, str, str]] = []
        marks = ", ".join("?" for _ in types)
        while after < last:
            with db.lock:
                got = db.conn.execute(
                    db.sql(
                        "SELECT sequence, timestamp_ms, user_id, item_id, type FROM user_events"
                        f" WHERE sequence > ? AND sequence <= ? AND type IN ({marks})"
                        " ORDER BY sequence LIMIT ?"
                    ),
                    (after, last, *types, page),
                ).fetchall()
            if not got:
                break
            rows.extend((int(q), int(t), u, i, k) for q, t, u, i, k in got)
            after = int(got[-1][0])
        for _, ts, user, item, kind in sorted(rows, key=lambda r: (r[1], r[0])):
            yield user, item, kind, ts

    def deleted_users(self) -> set[str]:
        """Every user ever deleted with :meth:`delete_user` (their tombstones)."""
        db = self.db
        with db.lock:
            return {r[0] for r in db.conn.execute("SELECT user_id FROM deleted_users").fetchall()}

    def most_popular(self, k: int, exclude: Iterable[str] = ()) -> list[tuple[str, int]]:
        skip = set(exclude)
        return [(i, n) for i, n in self.popularity.most_common(k + len(skip)) if i not in skip][:k]

    def close(self) -> None:
        self.db.close()
