"""The store: profiles, analyses, validate runs and studies, on SQLite or PostgreSQL.

Every record is kept once per SHA-256 of its canonical JSON; metadata the notebooks filter
on are columns, the whole record is kept as JSON beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from dnntune.store.backends import StoreError, backend_for
from dnntune.store.migrations import LATEST, MIGRATIONS, TABLES, render

RETRIES = 5
KINDS = ("profile", "analysis", "validation", "study")
_TABLE = {"profile": "profiles", "analysis": "analyses", "validation": "validations",
          "study": "studies"}
_PROFILE_COLUMNS = ("id", "model_name", "model_sha256", "side", "device_label", "framework",
                    "precision", "num_threads", "host", "tensorflow_version", "keras_version",
                    "dnntune_version", "created_utc", "end_to_end_mean_ms")
T = TypeVar("T")


def default_url() -> str:
    """``$DNNTUNE_STORE``, else ``$XDG_DATA_HOME/dnntune/store.db``, else ``~/.local/share``."""
    env = os.environ.get("DNNTUNE_STORE")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "dnntune" / "store.db")


def content_sha256(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class StoredProfile:
    id: int
    created: bool  # False when an identical record was already stored



class Store:
    """One store; every write is a transaction, retried when the database is busy.

    Example:
        >>> # s = Store("postgresql://lab:secret@db.lab:5432/dnntune")
        >>> # s.profiles(model_name="mobilenet_v2")
    """

    def __init__(self, url: str, *, migrate_to: int = LATEST) -> None:
        self.backend = backend_for(url)
        self.url = self.backend.name
        self.dialect = self.backend.dialect
        self._db = self.backend.connect()
        try:
            self.migrate(migrate_to)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Driver errors become one :class:`StoreError` naming the store."""
        try:
            yield
        except StoreError:
            raise
        except self.backend.errors as exc:
            raise StoreError(self.backend.describe(exc)) from None

    def _execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        if not params:  # psycopg reads % as a marker only when given parameters: LIKE 'a%'
            return self._db.execute(self.backend.sql(statement))
        return self._db.execute(self.backend.sql(statement), tuple(params))

    def version(self) -> int:
        self._execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self, to: int = LATEST) -> None:
        """Apply the migrations after the stored version, in one transaction."""

        def apply() -> None:
            self.backend.lock_for_migration(self._db)
            ours = set(TABLES) | {"schema_version"}
            before = self.backend.foreign_tables(self._db)
            current = self.version()
            if current > LATEST:
                raise StoreError(f"store {self.url}: schema version {current} is newer than "
                                 f"this dnntune ({LATEST})")
            clash = sorted(set(before) & ours - {"schema_version"})
            if current == 0 and (clash or (self.dialect == "sqlite" and before)):
                raise StoreError(f"store {self.url}: not a dnntune store (it holds tables "
                                 f"{', '.join(clash or before)} but no schema version)")
            for version in range(current + 1, to + 1):
                for statement in MIGRATIONS[version - 1]:
                    self._execute(render(statement, self.dialect))
                self._execute("INSERT INTO schema_version VALUES (?)", (version,))

        self._write(apply)

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        with self._errors():
            for attempt in range(RETRIES):
                try:
                    self._db.execute(self.backend.begin)
                    try:
                        result = fn(*args)
                        self._db.execute("COMMIT")
                        return result
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                except self.backend.errors as exc:
                    if not self.backend.retryable(exc):
                        raise
                    time.sleep(0.05 * 2 ** attempt)
        raise StoreError(f"store {self.url}: still busy after {RETRIES} attempts")

    def _insert_once(self, table: str, body: Mapping[str, Any],
                     columns: Mapping[str, Any]) -> StoredProfile:
        """Insert unless the content hash is there; both backends, same SQL."""
        digest = content_sha256(body)
        names = ["content_sha256", *columns, "body_json"]
        values = [digest, *columns.values(), json.dumps(body, sort_keys=True)]
        row = self._execute(
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            " ON CONFLICT (content_sha256) DO NOTHING RETURNING id", values).fetchone()
        if row is not None:
            return StoredProfile(int(row[0]), created=True)
        row = self._execute(f"SELECT id FROM {table} WHERE content_sha256=?",
                            (digest,)).fetchone()
        return StoredProfile(int(row[0]), created=False)

    def add_profile(self, body: Mapping[str, Any]) -> StoredProfile:
        """Store a profile dict (``Profile.to_dict()``); an identical one is stored once."""
        from dnntune.store.records import profile_columns

        columns = profile_columns(body)  # a KeyError names the missing field, before writing
        layers = [(lp["name"], float(lp["latency"]["mean_ms"])) for lp in body["layers"]]

        def insert() -> StoredProfile:
            stored = self._insert_once("profiles", body, columns)
            if stored.created:
                self._db.cursor().executemany(
                    self.backend.sql("INSERT INTO layers VALUES (?,?,?,?)"),
                    [(stored.id, i, name, ms) for i, (name, ms) in enumerate(layers)])
            return stored

        return self._write(insert)

    def add_analysis(self, body: Mapping[str, Any], device_profile_id: int | None = None,
                     cloud_profile_id: int | None = None) -> StoredProfile:
        """Store an analysis dict (``Analysis.to_dict()``), with the profiles it read."""
        columns = {"device_profile_id": device_profile_id,
                   "cloud_profile_id": cloud_profile_id,
                   "created_utc": _now(), "model_name": str(body.get("model", ""))}
        return self._write(self._insert_once, "analyses", body, columns)

    def add_validation(self, body: Mapping[str, Any]) -> StoredProfile:
        """Store a validate run (``Validation.to_dict()``, what validation.json holds)."""
        from dnntune.store.records import validation_columns

        return self._write(self._insert_once, "validations", body,
                           {**validation_columns(body), "created_utc": _now()})

    def add_study(self, body: Mapping[str, Any], kind: str = "frameworks") -> StoredProfile:
        """Store a study (``{"rows": [...]}``, what study.json holds)."""
        rows = body["rows"]
        models = sorted({str(r["model"]) for r in rows})
        return self._write(self._insert_once, "studies", body,
                           {"kind": kind, "models": ",".join(models), "num_rows": len(rows),
                            "created_utc": _now()})

    def body(self, kind: str, record_id: int) -> dict[str, Any]:
        """The stored JSON of one record (``kind``: profile, analysis, validation, study)."""
        with self._errors():
            row = self._execute(f"SELECT body_json FROM {_TABLE[kind]} WHERE id=?",
                                (record_id,)).fetchone()
        if row is None:
            raise StoreError(f"store {self.url}: no {kind} with id {record_id}")
        return json.loads(row[0])  # type: ignore[no-any-return]

    def profile_body(self, profile_id: int) -> dict[str, Any]:
        return self.body("profile", profile_id)

    def frame(self, statement: str, params: Sequence[Any] = ()) -> Any:
        """A query's rows as a pandas DataFrame (``?`` markers on both backends)."""
        import pandas as pd

        with self._errors():
            cur = self._execute(statement, params)
            rows = cur.fetchall()
        return pd.DataFrame(rows, columns=[d[0] for d in cur.description])

    def profiles(self, **where: str) -> Any:
        """Profiles as a pandas DataFrame, filtered by equal columns (``model_name=...``)."""
        bad = set(where) - set(_PROFILE_COLUMNS)
        if bad:
            raise StoreError(f"store {self.url}: unknown filter {sorted(bad)}; "
                             f"expected one of {sorted(_PROFILE_COLUMNS)}")
        clause = " AND ".join(f"{k}=?" for k in where) or "1=1"
        return self.frame(f"SELECT {', '.join(_PROFILE_COLUMNS)} FROM profiles "
                          f"WHERE {clause} ORDER BY id", tuple(where.values()))

    def layers(self, profile_id: int) -> Any:
        return self.frame("SELECT idx, name, mean_ms FROM layers WHERE profile_id=? "
                          "ORDER BY idx", (profile_id,))

    def all_layers(self, model_name: str | None = None) -> Any:
        """Every stored layer row with its profile's model and device, in one query."""
        clause, params = ("WHERE p.model_name=?", (model_name,)) if model_name else ("", ())
        return self.frame(
            "SELECT l.profile_id, p.model_name, p.device_label, l.idx, l.name, l.mean_ms "
            f"FROM layers l JOIN profiles p ON p.id = l.profile_id {clause} "
            "ORDER BY l.profile_id, l.idx", params)

    def analyses(self) -> Any:
        return self.frame("SELECT id, model_name, device_profile_id, cloud_profile_id, "
                          "created_utc FROM analyses ORDER BY id")

    def validations(self) -> Any:
        return self.frame("SELECT id, model_name, device_label, num_runs, links, "
                          "median_abs_error_pct, created_utc FROM validations ORDER BY id")

    def studies(self) -> Any:
        return self.frame("SELECT id, kind, models, num_rows, created_utc FROM studies "
                          "ORDER BY id")

    def study_rows(self, study_id: int | None = None) -> Any:
        """Every stored study row (model × framework × precision) as one DataFrame."""
        import pandas as pd

        ids = [study_id] if study_id is not None else list(self.studies()["id"])
        rows = [{"study_id": i, **r} for i in ids for r in self.body("study", int(i))["rows"]]
        return pd.DataFrame(rows)

    def count(self, table: str) -> int:
        if table not in (*TABLES, "schema_version"):
            raise StoreError(f"store {self.url}: no table {table!r}")
        with self._errors():
            return int(self._execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def open_store(url: str | None = None) -> Store:
    """The store at ``url`` (a path, ``sqlite:///path`` or ``postgresql://``), else the
    default (:func:`default_url`)."""
    return Store(url or default_url())
