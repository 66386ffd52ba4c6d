"""The profile store: every test that is not about one backend's files runs on both SQLite
and a real PostgreSQL (started once per session, see tests/store_fixtures.py)."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dnntune.store import StoreError, open_store, record_quietly
from dnntune.store.database import Store
from tests.conftest import REPO, assert_one_line_error, run_cli
from tests.store_fixtures import PostgresServer, start_postgres


def profile_body(model: str, n_layers: int = 3, scale: float = 1.0) -> dict[str, Any]:
    """A dict with the keys of ``Profile.to_dict()`` the store reads."""
    meta = {"side": "device", "model_name": model, "model_hash": "ab" * 32, "num_threads": 2,
            "host": "h", "tensorflow_version": "2.x", "keras_version": "3.x",
            "dnntune_version": "0", "created_utc": "2026-12-05T00:00:00Z",
            "emulation": {"label": "emulated:pixel"}}
    layers = [{"name": f"l{i}", "latency": {"mean_ms": scale * (i + 1)}}
              for i in range(n_layers)]
    return {"meta": meta, "layers": layers, "end_to_end": {"mean_ms": scale * 6.0}}


def cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``dnntune ARGS`` in this process (a subprocess costs seconds of imports each): exit
    code, stdout and stderr as :func:`run_cli` gives them."""
    import contextlib
    import io

    from dnntune.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    yield from start_postgres()


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store: a fresh SQLite file, or a fresh database on the session's server."""
    if request.param == "sqlite":
        yield str(tmp_path / "s.db")
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"t{os.getpid()}_{next(_databases)}"
    server.admin(f"CREATE DATABASE {name}")
    yield server.url(name)
    server.admin(f"DROP DATABASE {name} WITH (FORCE)")


def test_dedup_keeps_one_copy_and_dataframes(store_url: str) -> None:
    with open_store(store_url) as store:
        first = store.add_profile(profile_body("m"))
        again = store.add_profile(profile_body("m"))
        other = store.add_profile(profile_body("m", scale=2.0))
        assert first.created and not again.created and first.id == again.id
        assert other.id != first.id
        df = store.profiles(model_name="m")
        assert list(df["id"]) == [first.id, other.id]
        assert list(df["device_label"]) == ["emulated:pixel"] * 2
        assert list(df["framework"]) == ["tensorflow"] * 2
        assert list(store.layers(other.id)["mean_ms"]) == [2.0, 4.0, 6.0]
        assert store.profile_body(first.id) == profile_body("m")
        assert len(store.all_layers(model_name="m")) == 6
        assert store.count("layers") == 6
        mine = store.frame("SELECT COUNT(*) AS n FROM profiles WHERE model_name LIKE 'm%'")
        assert int(mine["n"][0]) == 2  # a literal % in SQL, on both backends
        with pytest.raises(StoreError, match="no profile with id 999"):
            store.profile_body(999)
        with pytest.raises(StoreError, match="unknown filter"):
            store.profiles(colour="red")


def _v1_row(store: Store, k: int) -> None:
    store._write(store._execute, "INSERT INTO profiles (content_sha256, model_name, "
                 "model_sha256, side, device_label, num_threads, host, tensorflow_version, "
                 "keras_version, dnntune_version, created_utc, end_to_end_mean_ms, body_json)"
                 " VALUES (?, 'm', 'h', 'device', 'measured', 1, 'h', '', '', '', '', ?, '{}')",
                 (str(k), float(k)))
    store._write(store._execute, "INSERT INTO layers VALUES (?, 0, 'l0', ?)",
                 (_id_of(store, str(k)), 0.5 * k))


def _id_of(store: Store, digest: str) -> int:
    return int(store._execute("SELECT id FROM profiles WHERE content_sha256=?",
                              (digest,)).fetchone()[0])


def test_migration_from_the_first_version_keeps_every_row(store_url: str) -> None:
    old = Store(store_url, migrate_to=1)
    for k in range(5):
        _v1_row(old, k)
    assert old.version() == 1
    old.close()
    with Store(store_url, migrate_to=2) as v2:  # v1 -> v2, then v2 -> latest
        assert v2.version() == 2
        v2._write(v2._execute, "INSERT INTO analyses (content_sha256, device_profile_id, "
                  "created_utc, body_json) VALUES ('a', ?, 't', '{}')", (_id_of(v2, "3"),))
    with open_store(store_url) as new:
        assert new.version() == 3
        df = new.profiles()
        assert list(df["end_to_end_mean_ms"]) == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert set(df["framework"]) == {"tensorflow"} and set(df["precision"]) == {"fp32"}
        assert sorted(new.all_layers()["mean_ms"]) == [0.0, 0.5, 1.0, 1.5, 2.0]
        analyses = new.analyses()
        assert list(analyses["device_profile_id"]) == [_id_of(new, "3")]
        assert list(analyses["model_name"]) == [""]
        assert new.count("validations") == new.count("studies") == 0
        assert new.count("schema_version") == 3


def test_corrupt_and_foreign_sqlite_name_the_store(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="corrupt.db"):
        open_store(str(corrupt))
    newer = tmp_path / "newer.db"
    con = sqlite3.connect(newer)
    con.execute("CREATE TABLE schema_version (version INTEGER)")
    con.execute("INSERT INTO schema_version VALUES (99)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer.db.*newer"):
        open_store(str(newer))
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE photos (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="foreign.db: not a dnntune store.*photos"):
        open_store(str(foreign))
    with pytest.raises(StoreError, match="mysql://x"):
        open_store("mysql://x")
    assert record_quietly(profile_body("m"), str(corrupt)) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt.db" in err[0]


def test_postgres_errors_name_the_store_without_the_password(
        postgres: PostgresServer, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = postgres.url(password="not-the-password")
    with pytest.raises(StoreError, match="password authentication failed") as info:
        open_store(wrong)
    assert "127.0.0.1" in str(info.value) and "not-the-password" not in str(info.value)
    closed = postgres.url().replace(f":{postgres.port}/", ":1/")
    with pytest.raises(StoreError, match="cannot connect"):
        open_store(closed)
    for unreachable in ("postgresql://u:p@192.0.2.1:5432/db",  # TEST-NET-1: no route
                        "postgresql://u:p@no-such-host.invalid/db"):
        with pytest.raises(StoreError, match="cannot connect"):  # within the 3 s timeout
            open_store(unreachable)
    with pytest.raises(StoreError, match="port is not a number"):
        open_store("postgresql://u:p@localhost:pg/db")
    with pytest.raises(StoreError, match="does not exist"):
        open_store(postgresql_db(postgres, "no_such_db"))
    postgres.admin("CREATE DATABASE foreign_db")
    try:
        with __import__("psycopg").connect(postgresql_db(postgres, "foreign_db"),
                                           autocommit=True) as con:
            con.execute("CREATE TABLE profiles (photo TEXT)")
        with pytest.raises(StoreError, match="not a dnntune store.*profiles"):
            open_store(postgresql_db(postgres, "foreign_db"))
    finally:
        postgres.admin("DROP DATABASE foreign_db WITH (FORCE)")
    assert record_quietly(profile_body("m"), wrong) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "password" in err[0] and "not-the-password" not in err[0]
    assert_one_line_error(run_cli(["store", "--store", wrong, "list"]), "store ",
                          "password authentication failed")  # as a user runs it
    for url, needle in ((closed, "cannot connect"), ("postgresql://u:p@localhost:pg/db",
                                                     "port")):
        assert_one_line_error(cli(["store", "--store", url, "list"]), "store ", needle)


def postgresql_db(server: PostgresServer, name: str) -> str:
    return server.url(name)


def _writer(url: str, worker: int, count: int) -> None:
    with open_store(url) as store:
        for k in range(count):
            store.add_profile(profile_body(f"w{worker}-{k}", n_layers=20))
            store.add_profile(profile_body("shared", n_layers=20))  # all write this one


def test_concurrent_writer_processes_lose_nothing(store_url: str) -> None:
    """8 processes open a fresh store at once (so they race to create the schema too)."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(store_url, w, 10)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    with open_store(store_url) as store:
        assert len(store.profiles()) == 80 + 1
        assert store.count("layers") == 81 * 20


def test_cli_lists_shows_compares_exports_imports(store_url: str, tmp_path: Path) -> None:
    with open_store(store_url) as store:
        a = store.add_profile(profile_body("net")).id
        b = store.add_profile(profile_body("net", scale=3.0)).id
    listed = cli(["store", "--store", store_url, "list", "--model", "net",
                      "--since", "2026-01-01"])
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("emulated:pixel") == 2
    later = cli(["store", "--store", store_url, "list", "--since", "2027-01-01"])
    assert "(no profile records)" in later.stdout
    shown = cli(["store", "--store", store_url, "show", str(a)])
    assert shown.returncode == 0 and '"model_name": "net"' in shown.stdout
    compared = cli(["store", "--store", store_url, "compare", str(a), str(b)])
    assert compared.returncode == 0 and compared.stdout.count(" 3.0") >= 3, compared.stdout
    exported = cli(["store", "--store", store_url, "export", str(b),
                        str(tmp_path / "b.json")])
    assert exported.returncode == 0, exported.stderr
    imported = cli(["store", "--store", store_url, "import", str(tmp_path / "b.json")])
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().endswith(f"already stored as profile {b}")
    (tmp_path / "junk.json").write_text("{}")
    assert_one_line_error(cli(["store", "--store", store_url, "import",
                                   str(tmp_path / "junk.json")]), "junk.json")
    assert_one_line_error(cli(["store", "--store", store_url, "show", "999"]), "999")
    assert_one_line_error(cli(["store", "--store", store_url, "compare", "1", "999"]),
                          "999")
    assert_one_line_error(cli(["store", "--store", store_url, "list", "--since", "May"]),
                          "--since")


def test_cli_names_a_corrupt_sqlite_store(tmp_path: Path) -> None:
    corrupt = tmp_path / "bad.db"
    corrupt.write_bytes(b"x" * 4096)
    assert_one_line_error(run_cli(["store", "--store", str(corrupt), "list"]), "bad.db")


def validation_body(model: str = "chain") -> dict[str, Any]:
    """What ``validate --out`` writes (``Validation.to_dict()``)."""
    return validation(model).to_dict()


def validation(model: str) -> Any:
    """A validate run of three cuts on Wi-Fi, built from its types."""
    from dnntune.validation.validate import CutValidation, LinkValidation, Validation

    cut = CutValidation(index=1, after="l1", bytes_up=40, predicted_ms=10.0,
                        predicted_tm_ms=2.0, predicted_tt_ms=5.0, predicted_tc_ms=3.0,
                        measured_ms=11.0, measured_p90_ms=12.0, head_ms=2.0, transfer_ms=6.0,
                        tail_ms=3.0, error_pct=10.0, max_abs_error=0.0)
    cuts = (cut, *[__import__("dataclasses").replace(cut, index=i, measured_ms=9.0 + i)
                   for i in (2, 3)])
    link = LinkValidation("wifi", 18.88, 54.97, 10.0, {"kind": "proxy"}, cuts)
    return Validation(model, 3, (link,), "emulated:pixel")


def test_validations_studies_analyses_recorded_once(store_url: str) -> None:
    study = {"rows": [{"model": "a", "framework": "tf", "precision": "fp32", "mean_ms": 2.0},
                      {"model": "b", "framework": "litert", "precision": "int8",
                       "mean_ms": 1.0}]}
    first = record_quietly(validation_body(), store_url, kind="validation")
    assert first is not None
    assert record_quietly(validation_body(), store_url, kind="validation") == first
    assert record_quietly(study, store_url, kind="study") == \
        record_quietly(study, store_url, kind="study")
    deployment = {"study": "deployment", "rows": [{"model": "a", "framework": "litert",
                                                   "precision": "int8", "threads": 2,
                                                   "affinity": "big", "mean_ms": 3.0}]}
    assert record_quietly(deployment, store_url, kind="study") is not None
    for framework in ("litert 2.3.0 int8 (XNNPACK)", "LiteRT benchmark_model fp16"):
        litert = {**profile_body("chain"), "measured_cuts": {"framework": framework}}
        assert record_quietly(litert, store_url) is not None  # profile --framework litert,
        # import-profile
    analysis = record_quietly({"model": "chain", "cuts": [1, 2]}, store_url, kind="analysis",
                              profiles=[profile_body("chain"), profile_body("chain", scale=2)])
    with open_store(store_url) as store:
        assert store.count("validations") == 1 and store.count("studies") == 2
        row = store.validations().iloc[0]
        assert (row.model_name, row.device_label, row.links) == ("chain", "emulated:pixel",
                                                                   "wifi")
        assert row.median_abs_error_pct == pytest.approx(10.0)
        assert list(store.studies()["models"]) == ["a,b", "a"]
        assert list(store.studies()["kind"]) == ["frameworks", "deployment"]
        assert list(store.study_rows()["precision"]) == ["fp32", "int8", "int8"]
        lite = store.profiles(framework="litert")
        assert list(lite["precision"]) == ["int8", "fp16"]
        stored = store.analyses()
        assert list(stored["id"]) == [analysis] and list(stored["model_name"]) == ["chain"]
        assert (store.body("profile", int(stored["device_profile_id"][0]))
                == profile_body("chain"))
        assert store.body("validation", first) == validation_body()


def _analyze(args: list[str]) -> subprocess.CompletedProcess[str]:
    return cli(["analyze", *args, "--links", "wifi,4g", "--no-plots", "--format", "json"])


def test_run_folders_import_and_analyze_reads_store_ids(store_url: str,
                                                        tmp_path: Path) -> None:
    """analyze --out writes a run folder; `store import` loads it whole (profiles, analysis);
    `analyze --device store:ID --cloud store:ID` gives the same analysis as the files."""
    from dnntune.profiling.profile import save_profile
    from tests.analyzer_fixtures import chain_graph, make_profiles

    device, cloud = make_profiles(chain_graph([400, 40, 8, 4]), [0.5, 1.0, 2.0, 3.0],
                                  [0.05, 0.1, 0.2, 0.3], [0.5, 1.0, 1.0, 1.0])
    files = [str(save_profile(device, tmp_path / "d.json")),
             str(save_profile(cloud, tmp_path / "c.json"))]
    run = tmp_path / "run"
    from_files = _analyze(["--device", files[0], "--cloud", files[1], "--out", str(run),
                           "--no-store"])
    assert from_files.returncode == 0, from_files.stderr[-2000:]
    (run / "validation.json").write_text(json.dumps(validation_body()))
    imported = cli(["store", "--store", store_url, "import", str(run)])
    assert imported.returncode == 0, imported.stderr
    kinds = [line.split(" as ")[1].split()[0] for line in imported.stdout.splitlines()]
    assert kinds == ["profile", "profile", "analysis", "validation"], imported.stdout
    with open_store(store_url) as store:
        ids = store.analyses()[["device_profile_id", "cloud_profile_id"]].iloc[0]
        assert store.profiles()["side"].tolist() == ["device", "cloud"]
    from_store = _analyze(["--store", store_url, "--device", f"store:{ids.iloc[0]}",
                           "--cloud", f"store:{ids.iloc[1]}"])
    assert from_store.returncode == 0, from_store.stderr[-2000:]
    assert json.loads(from_store.stdout) == json.loads(from_files.stdout)
    with open_store(store_url) as store:
        assert store.count("analyses") == 1  # the same analysis, recorded once
    assert_one_line_error(_analyze(["--store", store_url, "--device", "store:999",
                                    "--cloud", f"store:{ids.iloc[1]}"]), "999")
    assert_one_line_error(_analyze(["--store", store_url, "--device", "store:x",
                                    "--cloud", files[1]]), "store:x")
    assert_one_line_error(cli(["store", "--store", store_url, "import",
                                   str(tmp_path / "nothing")]), "nothing")


def test_profile_command_records_in_the_store_it_is_given(store_url: str,
                                                         tmp_path: Path) -> None:
    """A real `dnntune profile --store URL`: the file is written and the store gets the row
    (not the default store of $DNNTUNE_STORE)."""
    env = {**os.environ, "DNNTUNE_STORE": str(tmp_path / "default.db")}
    run = subprocess.run([sys.executable, "-m", "dnntune", "profile", "--model", "tiny_mlp",
                          "--num_runs", "3", "--out", str(tmp_path / "p.json"),
                          "--store", store_url],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "p.json").is_file() and not (tmp_path / "default.db").exists()
    with open_store(store_url) as store:
        stored = store.profiles(model_name="tiny_mlp")
        assert len(stored) == 1
        body = store.profile_body(int(stored["id"][0]))
    assert body == json.loads((tmp_path / "p.json").read_text())


def bad_store(store_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The backend's unusable store: a corrupt file, or a refused password."""
    if store_url.startswith("postgresql://"):
        server: PostgresServer = request.getfixturevalue("postgres")
        return server.url(password="wrong")
    Path(tmp_path / "bad.db").write_bytes(b"y" * 4096)
    return str(tmp_path / "bad.db")


def test_a_store_that_cannot_be_used_loses_no_run(store_url: str, tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    """analyze --out with a corrupt SQLite file or a refused password: the run folder is
    written, exit 0, one stderr line names the store; --no-store does not touch it."""
    from dnntune.profiling.profile import save_profile
    from tests.analyzer_fixtures import chain_graph, make_profiles

    device, cloud = make_profiles(chain_graph([400, 40, 8, 4]), [0.5, 1.0, 2.0, 3.0],
                                  [0.05, 0.1, 0.2, 0.3])
    files = ["--device", str(save_profile(device, tmp_path / "d.json")),
             "--cloud", str(save_profile(cloud, tmp_path / "c.json"))]
    bad = bad_store(store_url, tmp_path, request)
    kept = _analyze([*files, "--out", str(tmp_path / "run"), "--store", bad])
    assert kept.returncode == 0, kept.stderr
    assert (tmp_path / "run" / "analysis.json").is_file()
    lines = [ln for ln in kept.stderr.splitlines() if "not recorded in the store" in ln]
    assert len(lines) == 1 and ("bad.db" in lines[0] or "password" in lines[0]), kept.stderr
    assert "wrong" not in kept.stderr
    quiet = _analyze([*files, "--store", bad, "--no-store"])
    assert quiet.returncode == 0 and "store" not in quiet.stderr, quiet.stderr


def test_study_and_validate_commands_record_after_their_files(store_url: str,
                                                              tmp_path: Path) -> None:
    """A real `dnntune study frameworks` (tiny MLP, TensorFlow only) records its rows; the
    validate command's writer records what it wrote to validation.json."""
    import argparse
    import contextlib
    import io

    from dnntune.cli.validate import _write_and_print

    study = cli(["study", "frameworks", "--model", "tiny_mlp", "--frameworks", "tf",
                 "--num_runs", "2", "--warmup_runs", "1", "--out", str(tmp_path / "study"),
                 "--store", store_url, "--format", "json"])
    assert study.returncode == 0, study.stderr[-2000:]
    doc = json.loads((tmp_path / "study" / "study.json").read_text())
    out = tmp_path / "validate"
    args = argparse.Namespace(out=str(out), format="json", store=store_url, no_store=False)
    with contextlib.redirect_stdout(io.StringIO()):
        _write_and_print(args, validation("tiny_mlp"))
    with open_store(store_url) as store:
        assert store.body("study", 1) == doc
        assert list(store.studies()["models"]) == ["tiny_mlp"]
        assert store.body("validation", 1) == json.loads((out / "validation.json").read_text())
    listed = cli(["store", "--store", store_url, "list", "--kind", "validation", "--model",
                  "tiny_mlp"])
    assert listed.returncode == 0 and "emulated:pixel" in listed.stdout, listed.stdout


def test_the_docs_postgresql_recipe_runs(tmp_path: Path) -> None:
    """docs/store.md's recipe, line by line: the server lines as the server's user (nobody
    when root), the others as this user, on a free port instead of 5432."""
    import re
    import shutil
    import tempfile

    from tests.store_fixtures import _free_port, _run_as, postgres_bindir, reachable_by_others

    text = (REPO / "docs" / "store.md").read_text()
    match = re.search(r"<!-- recipe: store-postgres\b.*?-->\s*```sh\n(.*?)```", text, re.S)
    assert match, "docs/store.md lost its store-postgres recipe"
    lines = match.group(1).replace("5432", str(_free_port())).strip().splitlines()
    run_as = _run_as()
    work = Path(tempfile.mkdtemp(prefix="dnntune-recipe-", dir="/tmp" if run_as else None))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        if run_as:
            os.chown(work, run_as["user"], run_as["group"])
        assert lines[0].startswith("PG=")
        found = subprocess.run(["bash", "-c", f"{lines[0]}; echo $PG"], env=env, text=True,
                               capture_output=True).stdout.strip()  # no pgserver: ""
        usable = Path(found, "initdb").is_file() and (not run_as or reachable_by_others(
            Path(found)))  # as root the server lines run as nobody, who must reach it
        env["PG"] = found if usable else str(postgres_bindir())
        outputs = []
        for line in lines[1:]:
            server_side = line.startswith(("$PG/", "echo"))
            done = subprocess.run(["bash", "-c", line], cwd=work, env=env, text=True,
                                  capture_output=True, timeout=120,
                                  **(run_as if server_side else {}))
            assert done.returncode == 0, (line, done.stderr[-2000:])
            outputs.append(done.stdout)
        assert "(no profile records)" in outputs[-2]
    finally:
        subprocess.run(["bash", "-c", f"{env.get('PG', '')}/pg_ctl -D pgdata -w stop"],
                       cwd=work, env=env, capture_output=True, **run_as)
        shutil.rmtree(work, ignore_errors=True)


def test_default_location_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dnntune.store import default_url

    monkeypatch.setenv("DNNTUNE_STORE", str(tmp_path / "x.db"))
    assert default_url() == str(tmp_path / "x.db")
    monkeypatch.delenv("DNNTUNE_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_url() == str(tmp_path / "xdg" / "dnntune" / "store.db")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_url() == str(tmp_path / "home" / ".local" / "share" / "dnntune" / "store.db")
