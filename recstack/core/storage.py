"""Durable storage connections shared by the catalog log and the user-event store.

A DSN names the backend: ``sqlite:///absolute/path.db``, ``sqlite:relative/path.db`` or a
bare path for the embedded SQLite default (WAL journal, ``synchronous=FULL``: a committed
transaction survives power loss), ``postgresql://user@host:port/db`` for a server that
several replicas share (needs the ``postgres`` extra, psycopg 3).

Each wrapper holds one connection and a lock: neither sqlite3 nor psycopg connections are
safe to use from several threads at once, so every use goes through ``with db.lock``.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from recstack.core.errors import BundleError

SQLITE = "sqlite"
POSTGRES = "postgresql"


def parse_dsn(dsn: str) -> tuple[str, str]:
    """(backend, target): target is a file path for SQLite, the DSN for PostgreSQL."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return POSTGRES, dsn
    if dsn.startswith("sqlite:///"):
        return SQLITE, dsn[len("sqlite://") :]
    if dsn.startswith("sqlite:"):
        return SQLITE, dsn[len("sqlite:") :]
    if "://" in dsn:
        raise BundleError(f"unsupported DSN scheme {dsn.split('://')[0]!r} (sqlite or postgresql)")
    return SQLITE, dsn


def connect_sqlite(path: str | Path) -> sqlite3.Connection:
    """Autocommit connection (explicit BEGIN/COMMIT) in WAL mode with full fsync."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def connect_postgres(dsn: str) -> Any:
    """A psycopg connection (transactions via ``conn.transaction()``)."""
    try:
        import psycopg
    except ImportError as exc:
        raise BundleError(
            "a postgresql:// DSN needs psycopg: pip install 'recstack[postgres]'"
        ) from exc
    return psycopg.connect(dsn, autocommit=True)


class Database:
    """One connection to either backend, with the SQL placeholder style it needs."""

    def __init__(self, dsn: str) -> None:
        self.backend, target = parse_dsn(dsn)
        self.lock = threading.Lock()
        self.conn: Any = (
            connect_postgres(target) if self.backend == POSTGRES else connect_sqlite(target)
        )

    def sql(self, statement: str) -> str:
        """Write statements with ``?`` placeholders; PostgreSQL gets ``%s``."""
        return statement.replace("?", "%s") if self.backend == POSTGRES else statement

    def begin(self) -> Any:
        """A context manager for one transaction (caller holds ``lock``)."""
        if self.backend == POSTGRES:
            return self.conn.transaction()
        return _SqliteTransaction(self.conn)

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class _SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
