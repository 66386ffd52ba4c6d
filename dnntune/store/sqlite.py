"""The SQLite backend: WAL journal, busy timeout and retries so several processes can write."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dnntune.errors import DnntuneError
from dnntune.store.migrations import LATEST, MIGRATIONS

BUSY_TIMEOUT_S = 30.0
RETRIES = 5


class StoreError(DnntuneError):
    """The store cannot be opened or written; the message names it."""


def default_url() -> str:
    """``$DNNTUNE_STORE``, else ``$XDG_DATA_HOME/dnntune/store.db``, else ``~/.local/share``."""
    env = os.environ.get("DNNTUNE_STORE")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "dnntune" / "store.db")


def _path_of(url: str) -> Path:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if "://" in url:
        raise StoreError(f"store {url!r}: expected a file path or sqlite:///<path> "
                         "(PostgreSQL is not supported yet)")
    return Path(url)


def content_sha256(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class StoredProfile:
    id: int
    created: bool  # False when an identical profile was already stored


class Store:
    """One SQLite store file; every write is a transaction, retried when the file is busy."""

    def __init__(self, url: str, *, migrate_to: int = LATEST) -> None:
        self.url = url
        path = _path_of(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self.migrate(migrate_to)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"store {url}: not a dnntune SQLite store ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def version(self) -> int:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self, to: int = LATEST) -> None:
        """Apply the migrations after the stored version, each in its own transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            current = self.version()
            if current > LATEST:
                raise StoreError(f"store {self.url}: schema version {current} is newer than "
                                 f"this dnntune ({LATEST})")
            for version in range(current + 1, to + 1):
                for statement in MIGRATIONS[version - 1]:
                    self._db.execute(statement)
                self._db.execute("INSERT INTO schema_version VALUES (?)", (version,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _write(self, fn: Any, *args: Any) -> Any:
        for attempt in range(RETRIES):
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(*args)
                    self._db.execute("COMMIT")
                    return result
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise StoreError(f"store {self.url}: {exc}") from None
                time.sleep(0.05 * 2 ** attempt)
        raise StoreError(f"store {self.url}: still locked after {RETRIES} attempts")

    def add_profile(self, body: Mapping[str, Any]) -> StoredProfile:
        """Store a profile dict (``Profile.to_dict()``); an identical one is stored once."""
        return self._write(self._insert_profile, body)  # type: ignore[no-any-return]

    def _insert_profile(self, body: Mapping[str, Any]) -> StoredProfile:
        digest = content_sha256(body)
        row = self._db.execute("SELECT id FROM profiles WHERE content_sha256=?",
                               (digest,)).fetchone()
        if row:
            return StoredProfile(int(row[0]), created=False)
        meta = body["meta"]
        emulation = meta.get("emulation") or {}
        cur = self._db.execute(
            "INSERT INTO profiles (content_sha256, model_name, model_sha256, side, device_label,"
            " num_threads, host, tensorflow_version, keras_version, dnntune_version,"
            " created_utc, end_to_end_mean_ms, body_json, framework)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (digest, meta["model_name"], meta["model_hash"], meta["side"],
             str(emulation.get("label", "measured")), int(meta["num_threads"]), meta["host"],
             meta["tensorflow_version"], meta["keras_version"], meta["dnntune_version"],
             meta["created_utc"], float(body["end_to_end"]["mean_ms"]),
             json.dumps(body, sort_keys=True), str(body.get("framework", "tensorflow"))))
        pid = int(cur.lastrowid or 0)
        self._db.executemany(
            "INSERT INTO layers VALUES (?,?,?,?)",
            [(pid, i, lp["name"], float(lp["latency"]["mean_ms"]))
             for i, lp in enumerate(body["layers"])])
        return StoredProfile(pid, created=True)

    def add_analysis(self, body: Mapping[str, Any]) -> StoredProfile:
        """Store an analysis dict (``Analysis.to_dict()``), once per content hash."""
        return self._write(self._insert_analysis, body)  # type: ignore[no-any-return]

    def _insert_analysis(self, body: Mapping[str, Any]) -> StoredProfile:
        digest = content_sha256(body)
        row = self._db.execute("SELECT id FROM analyses WHERE content_sha256=?",
                               (digest,)).fetchone()
        if row:
            return StoredProfile(int(row[0]), created=False)
        cur = self._db.execute(
            "INSERT INTO analyses (content_sha256, created_utc, body_json) VALUES (?,?,?)",
            (digest, datetime.now(UTC).isoformat(), json.dumps(body, sort_keys=True)))
        return StoredProfile(int(cur.lastrowid or 0), created=True)

    def profile_body(self, profile_id: int) -> dict[str, Any]:
        row = self._db.execute("SELECT body_json FROM profiles WHERE id=?",
                               (profile_id,)).fetchone()
        if row is None:
            raise StoreError(f"store {self.url}: no profile with id {profile_id}")
        return json.loads(row[0])  # type: ignore[no-any-return]

    def profiles(self, **where: str) -> Any:
        """Profiles as a pandas DataFrame, filtered by equal columns (``model_name=...``)."""
        import pandas as pd

        cols = ("id, model_name, model_sha256, side, device_label, framework, num_threads, "
                "host, tensorflow_version, keras_version, dnntune_version, created_utc, "
                "end_to_end_mean_ms")
        allowed = {c.strip() for c in cols.split(",")}
        bad = set(where) - allowed
        if bad:
            raise StoreError(f"store {self.url}: unknown filter {sorted(bad)}; "
                             f"expected one of {sorted(allowed)}")
        clause = " AND ".join(f"{k}=?" for k in where) or "1"
        return pd.read_sql_query(f"SELECT {cols} FROM profiles WHERE {clause} ORDER BY id",
                                 self._db, params=tuple(where.values()))

    def layers(self, profile_id: int) -> Any:
        import pandas as pd

        return pd.read_sql_query("SELECT idx, name, mean_ms FROM layers WHERE profile_id=? "
                                 "ORDER BY idx", self._db, params=(profile_id,))


    def all_layers(self, model_name: str | None = None) -> Any:
        """Every stored layer row with its profile's model and device, in one query."""
        import pandas as pd

        clause, params = ("WHERE p.model_name=?", (model_name,)) if model_name else ("", ())
        return pd.read_sql_query(
            "SELECT l.profile_id, p.model_name, p.device_label, l.idx, l.name, l.mean_ms "
            f"FROM layers l JOIN profiles p ON p.id = l.profile_id {clause} "
            "ORDER BY l.profile_id, l.idx", self._db, params=params)


def open_store(url: str | None = None) -> Store:
    return Store(url or default_url())


def record_quietly(body: Mapping[str, Any], url: str | None = None,
                   kind: str = "profile") -> int | None:
    """Record a profile (or ``kind="analysis"``) dict; on any store failure print one line
    on stderr and go on."""
    if os.environ.get("DNNTUNE_NO_STORE"):
        return None
    try:
        store = open_store(url)
        try:
            add = store.add_analysis if kind == "analysis" else store.add_profile
            return add(body).id
        finally:
            store.close()
    except (StoreError, sqlite3.Error, OSError, KeyError, TypeError, ValueError) as exc:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        print(f"dnntune: {stamp} not recorded in the store: {exc}", file=sys.stderr)
        return None
