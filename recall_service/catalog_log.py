"""The durable, ordered catalog log: the system of record for live item writes.

Each write is one row with a strictly increasing ``sequence``. ``append`` returns only
after the transaction has committed (SQLite: WAL with ``synchronous=FULL``; PostgreSQL:
a normal commit), so an acknowledged sequence survives a crash (invariant 3), and a batch
is one transaction, so a write never half-applies.

Ordering: readers tail the log by ``sequence > last_applied``. That is only safe if
sequences become visible in order. SQLite has one writer at a time, so it holds; on
PostgreSQL concurrent transactions could commit out of sequence order, so ``append`` takes
a transaction-scoped advisory lock first: appends are serialised and commit in order.

DSNs: ``sqlite:///absolute/path.db``, ``sqlite:relative/path.db`` or a bare path for SQLite;
``postgresql://user@host:port/db`` for PostgreSQL (needs the ``postgres`` extra, psycopg).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recstack.errors import BundleError
from recstack.vectors import WIRE_DTYPE, F32Array

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


class SqliteLog:
    """Embedded default: one SQLite file in WAL mode (one process writes it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection shared by threads; sqlite3 objects are not thread-safe, so every
        # use holds self._lock.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS catalog_log (sequence INTEGER PRIMARY KEY AUTOINCREMENT,"
            " op TEXT NOT NULL, item_id TEXT NOT NULL, title TEXT NOT NULL, text TEXT NOT NULL,"
            " metadata TEXT NOT NULL, vector BLOB, embedding_version TEXT NOT NULL)"
        )

    def append(self, writes: Sequence[LogWrite]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.executemany(
                    "INSERT INTO catalog_log (op, item_id, title, text, metadata, vector,"
                    " embedding_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [_row(w) for w in writes],
                )
                del cur
                last = self._db.execute("SELECT max(sequence) FROM catalog_log").fetchone()[0]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return int(last)

    def read_after(self, sequence: int, limit: int) -> list[LogEntry]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM catalog_log WHERE sequence > ? ORDER BY sequence LIMIT ?",
                (sequence, limit),
            ).fetchall()
        return [_entry(r) for r in rows]

    def last_sequence(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT max(sequence) FROM catalog_log").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresLog:
    """Shared log: several replicas (and shards) read one PostgreSQL table."""

    def __init__(self, dsn: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise BundleError(
                "a postgresql:// catalog DSN needs psycopg: pip install 'recstack[postgres]'"
            ) from exc
        self._lock = threading.Lock()
        self._db = psycopg.connect(dsn, autocommit=False)
        with self._db.transaction():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS catalog_log (sequence BIGSERIAL PRIMARY KEY,"
                " op TEXT NOT NULL, item_id TEXT NOT NULL, title TEXT NOT NULL,"
                " text TEXT NOT NULL, metadata TEXT NOT NULL, vector BYTEA,"
                " embedding_version TEXT NOT NULL)"
            )
        self._db.commit()

    def append(self, writes: Sequence[LogWrite]) -> int:
        with self._lock, self._db.transaction(), self._db.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
            last = 0
            for w in writes:
                cur.execute(
                    "INSERT INTO catalog_log (op, item_id, title, text, metadata, vector,"
                    " embedding_version) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " RETURNING sequence",
                    _row(w),
                )
                row = cur.fetchone()
                assert row is not None
                last = int(row[0])
        return last

    def read_after(self, sequence: int, limit: int) -> list[LogEntry]:
        with self._lock, self._db.transaction(), self._db.cursor() as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM catalog_log WHERE sequence > %s"
                " ORDER BY sequence LIMIT %s",
                (sequence, limit),
            )
            rows = cur.fetchall()
        return [_entry(r) for r in rows]

    def last_sequence(self) -> int:
        with self._lock, self._db.transaction(), self._db.cursor() as cur:
            cur.execute("SELECT coalesce(max(sequence), 0) FROM catalog_log")
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_log(dsn: str) -> CatalogLog:
    """The log a DSN names (see the module docstring)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return PostgresLog(dsn)
    if dsn.startswith("sqlite:///"):
        return SqliteLog(Path(dsn[len("sqlite://") :]))
    if dsn.startswith("sqlite:"):
        return SqliteLog(Path(dsn[len("sqlite:") :]))
    if "://" in dsn:
        raise BundleError(f"unsupported catalog DSN scheme in {dsn.split('://')[0]!r}")
    return SqliteLog(Path(dsn))
