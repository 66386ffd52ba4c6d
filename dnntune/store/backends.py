"""The two database backends of the store: what differs between SQLite and PostgreSQL.

A backend opens the DB-API connection, names the store in messages (without a password),
starts a write transaction, takes the migration lock and tells a retryable error (a busy
file, a serialisation failure) from a real one. The SQL itself is shared (``?`` markers,
rewritten to ``%s`` for psycopg).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dnntune.errors import DnntuneError

BUSY_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 3  # libpq's minimum is 2 s: an unreachable host fails fast
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class StoreError(DnntuneError):
    """The store cannot be opened, read or written; the message names it."""


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if _port_or_none(url) else ""
    netloc = f"{parts.username}:***@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _port_or_none(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None


class SqliteBackend:
    """A file; WAL journal and a busy timeout so several processes can write."""

    dialect = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, url: str) -> None:
        self.name = url
        self.path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else Path(url)

    def connect(self) -> Any:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._wal(db)
            db.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, OSError) as exc:
            if isinstance(exc, sqlite3.Error) and self.retryable(exc):
                raise StoreError(f"store {self.name}: locked by another process for over "
                                 f"{BUSY_TIMEOUT_S:g} s ({exc})") from None
            raise StoreError(f"store {self.name}: not a dnntune SQLite store ({exc})") from None
        return db

    def _wal(self, db: Any) -> None:
        """Switch to WAL. Switching needs the file to itself, and SQLite answers "locked"
        at once, without its busy handler, while another process creates the store:
        retried until the busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if not self.retryable(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def sql(self, statement: str) -> str:
        return statement

    begin = "BEGIN IMMEDIATE"

    def lock_for_migration(self, db: Any) -> None:
        """``BEGIN IMMEDIATE`` already holds the file's write lock."""

    def retryable(self, exc: BaseException) -> bool:
        text = str(exc)
        return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)

    def foreign_tables(self, db: Any) -> list[str]:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type='table' "
                          "AND name NOT LIKE 'sqlite_%'").fetchall()
        return sorted(r[0] for r in rows)

    def describe(self, exc: BaseException) -> str:
        return f"store {self.name}: {exc}"


class PostgresBackend:
    """A PostgreSQL database through psycopg 3; autocommit, explicit transactions."""

    dialect = "postgresql"
    MIGRATION_LOCK = 250_025  # pg_advisory_xact_lock key: one migrating process at a time

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = redact(url)
        try:
            import psycopg
        except ImportError:
            raise StoreError(f"store {self.name}: PostgreSQL needs psycopg "
                             "(pip install 'psycopg[binary]')") from None
        self._psycopg = psycopg
        self.errors = (psycopg.Error,)

    def connect(self) -> Any:
        psycopg = self._psycopg
        if _port_or_none(self.url) is None and ":" in (urlsplit(self.url).netloc
                                                        .rsplit("@", 1)[-1].strip("[]")):
            raise StoreError(f"store {self.name}: the port is not a number; expected "
                             "postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
        try:
            return psycopg.connect(self.url, autocommit=True,
                                   connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise StoreError(f"store {self.name}: cannot connect ({_first_line(exc)})") from None

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    begin = "BEGIN"

    def lock_for_migration(self, db: Any) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s)", (self.MIGRATION_LOCK,))

    def retryable(self, exc: BaseException) -> bool:
        errors = self._psycopg.errors
        return isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected)

    def foreign_tables(self, db: Any) -> list[str]:
        rows = db.execute("SELECT table_name FROM information_schema.tables "
                          "WHERE table_schema = current_schema()").fetchall()
        return sorted(r[0] for r in rows)

    def describe(self, exc: BaseException) -> str:
        return f"store {self.name}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines[:2]) if lines else type(exc).__name__


def backend_for(url: str) -> SqliteBackend | PostgresBackend:
    """The backend for a path, ``sqlite:///path`` or ``postgresql://...`` URL."""
    if url.startswith(POSTGRES_SCHEMES):
        return PostgresBackend(url)
    if "://" in url and not url.startswith("sqlite:///"):
        raise StoreError(f"store {redact(url)!r}: expected a file path, sqlite:///<path> or "
                         "postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    return SqliteBackend(url)
