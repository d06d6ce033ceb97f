"""The durable, ordered catalog log: the system of record for live item writes.

Each write is one row with a strictly increasing ``sequence``. ``append`` returns only
after the transaction has committed (SQLite: WAL with ``synchronous=FULL``; PostgreSQL:
a normal commit), so an acknowledged sequence survives a crash (invariant 3), and a batch
is one transaction, so a write never half-applies.

Ordering: readers tail the log by ``sequence > last_applied``. That is only safe if
sequences become visible in order. SQLite has one writer at a time, so it holds; on
PostgreSQL concurrent transactions could commit out of sequence order, so ``append`` takes
a transaction-scoped advisory lock first: appends are serialised and commit in order.

DSNs and connections: see recstack.core.storage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from recstack.core.storage import POSTGRES, Database
from recstack.core.vectors import WIRE_DTYPE, F32Array

UPSERT = "upsert"
DELETE = "delete"
_ADVISORY_KEY = 0x7265637374616B  # "recstak": the catalog log's append lock


@dataclass(frozen=True)
class LogWrite:
    """One write before it has a sequence: an upsert (with its vector) or a delete."""

    op: str
    item_id: str
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: F32Array | None = None
    embedding_version: str = ""


@dataclass(frozen=True)
class LogEntry:
    """A committed write."""

    sequence: int
    write: LogWrite


class CatalogLog(Protocol):
    """Append-only log of item writes."""

    def append(self, writes: Sequence[LogWrite]) -> int:
        """Commit ``writes`` atomically; return the sequence of the last one."""
        ...

    def read_after(self, sequence: int, limit: int) -> list[LogEntry]:
        """Up to ``limit`` committed entries with sequence > ``sequence``, in order."""
        ...

    def last_sequence(self) -> int:
        """Highest committed sequence (0 for an empty log)."""
        ...

    def close(self) -> None: ...


def _row(w: LogWrite) -> tuple[Any, ...]:
    vec = None if w.vector is None else np.asarray(w.vector, dtype=WIRE_DTYPE).tobytes()
    return (
        w.op,
        w.item_id,
        w.title,
        w.text,
        json.dumps(w.metadata, sort_keys=True),
        vec,
        w.embedding_version,
    )


def _entry(row: Sequence[Any]) -> LogEntry:
    seq, op, item_id, title, text, metadata, vec, version = row
    vector = None if vec is None else np.frombuffer(bytes(vec), dtype=WIRE_DTYPE).astype(np.float32)
    return LogEntry(
        int(seq), LogWrite(op, item_id, title, text, json.loads(metadata), vector, version)
    )


_COLUMNS = "sequence, op, item_id, title, text, metadata, vector, embedding_version"
_INSERT = (
    "INSERT INTO catalog_log (op, item_id, title, text, metadata, vector,"
    " embedding_version) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class SqlCatalogLog:
    """The catalog log in SQLite (embedded default) or PostgreSQL (shared by replicas)."""

    def __init__(self, dsn: str) -> None:
        self.db = Database(dsn)
        postgres = self.db.backend == POSTGRES
        with self.db.lock, self.db.begin():
            self.db.conn.execute(
                "CREATE TABLE IF NOT EXISTS catalog_log ("
                + (
                    "sequence BIGSERIAL PRIMARY KEY"
                    if postgres
                    else "sequence INTEGER PRIMARY KEY AUTOINCREMENT"
                )
                + ", op TEXT NOT NULL, item_id TEXT NOT NULL, title TEXT NOT NULL,"
                " text TEXT NOT NULL, metadata TEXT NOT NULL, vector "
                + ("BYTEA" if postgres else "BLOB")
                + ", embedding_version TEXT NOT NULL)"
            )

    def append(self, writes: Sequence[LogWrite]) -> int:
        db = self.db
        with db.lock, db.begin():
            if db.backend == POSTGRES:
                db.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
            cur = db.conn.cursor()
            cur.executemany(db.sql(_INSERT), [_row(w) for w in writes])
            cur.execute("SELECT max(sequence) FROM catalog_log")
            row = cur.fetchone()
        return int(row[0])

    def read_after(self, sequence: int, limit: int) -> list[LogEntry]:
        with self.db.lock:
            rows = self.db.conn.execute(
                self.db.sql(
                    f"SELECT {_COLUMNS} FROM catalog_log WHERE sequence > ? ORDER BY sequence"
                    " LIMIT ?"
                ),
                (sequence, limit),
            ).fetchall()
        return [_entry(r) for r in rows]

    def last_sequence(self) -> int:
        with self.db.lock:
            row = self.db.conn.execute("SELECT max(sequence) FROM catalog_log").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        self.db.close()


def open_log(dsn: str) -> CatalogLog:
    """The log a DSN names (see recstack.core.storage)."""
    return SqlCatalogLog(dsn)
