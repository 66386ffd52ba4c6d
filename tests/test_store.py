"""The SQLite profile store: dedup, migrations, bad stores, concurrent writer processes."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from dnntune.store import StoreError, open_store, record_quietly
from dnntune.store.sqlite import Store
from tests.conftest import assert_one_line_error, run_cli


def profile_body(model: str, n_layers: int = 3, scale: float = 1.0) -> dict[str, Any]:
    """A dict with the keys of ``Profile.to_dict()`` the store reads."""
    meta = {"side": "device", "model_name": model, "model_hash": "ab" * 32, "num_threads": 2,
            "host": "h", "tensorflow_version": "2.x", "keras_version": "3.x",
            "dnntune_version": "0", "created_utc": "2026-12-05T00:00:00Z",
            "emulation": {"label": "emulated:pixel"}}
    layers = [{"name": f"l{i}", "latency": {"mean_ms": scale * (i + 1)}}
              for i in range(n_layers)]
    return {"meta": meta, "layers": layers, "end_to_end": {"mean_ms": scale * 6.0}}


def test_dedup_keeps_one_copy_and_dataframes(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.db"))
    first = store.add_profile(profile_body("m"))
    again = store.add_profile(profile_body("m"))
    other = store.add_profile(profile_body("m", scale=2.0))
    assert first.created and not again.created and first.id == again.id
    assert other.id != first.id
    df = store.profiles(model_name="m")
    assert list(df["id"]) == [first.id, other.id]
    assert list(df["device_label"]) == ["emulated:pixel"] * 2
    assert list(store.layers(other.id)["mean_ms"]) == [2.0, 4.0, 6.0]
    assert store.profile_body(first.id) == profile_body("m")
    assert len(store.all_layers(model_name="m")) == 6


def test_migration_v1_to_v2_keeps_every_row(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    old = Store(path, migrate_to=1)
    for k in range(5):
        old._write(old._db.execute, "INSERT INTO profiles (content_sha256, model_name, "
                   "model_sha256, side, device_label, num_threads, host, tensorflow_version, "
                   "keras_version, dnntune_version, created_utc, end_to_end_mean_ms, body_json)"
                   f" VALUES ('{k}', 'm', 'h', 'device', 'measured', 1, 'h', '', '', '', '', "
                   f"{k}.0, '{{}}')")
    assert old.version() == 1
    old.close()
    new = open_store(path)
    assert new.version() == 2
    df = new.profiles()
    assert list(df["end_to_end_mean_ms"]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert set(df["framework"]) == {"tensorflow"}


def test_corrupt_foreign_and_wrong_url_name_the_store(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="corrupt.db"):
        open_store(str(corrupt))
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE schema_version (version INTEGER)")
    con.execute("INSERT INTO schema_version VALUES (99)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="foreign.db.*newer"):
        open_store(str(foreign))
    with pytest.raises(StoreError, match="mysql://x"):
        open_store("mysql://x")
    assert record_quietly(profile_body("m"), str(corrupt)) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt.db" in err[0]


def _writer(path: str, worker: int, count: int) -> None:
    store = open_store(path)
    for k in range(count):
        store.add_profile(profile_body(f"w{worker}-{k}", n_layers=20))
    store.close()


def test_concurrent_writer_processes_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    open_store(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 10)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    store = open_store(path)
    assert len(store.profiles()) == 80
    assert store._db.execute("SELECT COUNT(*) FROM layers").fetchone()[0] == 80 * 20


def test_cli_lists_shows_compares_and_names_a_bad_store(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = open_store(path)
    a = store.add_profile(profile_body("net")).id
    b = store.add_profile(profile_body("net", scale=3.0)).id
    store.close()
    listed = run_cli(["store", "--store", path, "list", "--model", "net"])
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("emulated:pixel") == 2
    shown = run_cli(["store", "--store", path, "show", str(a)])
    assert shown.returncode == 0 and '"model_name": "net"' in shown.stdout
    compared = run_cli(["store", "--store", path, "compare", str(a), str(b)])
    assert compared.returncode == 0 and compared.stdout.count(" 3.0") >= 3, compared.stdout
    exported = run_cli(["store", "--store", path, "export", str(b), str(tmp_path / "b.json")])
    assert exported.returncode == 0, exported.stderr
    other = str(tmp_path / "other.db")
    imported = run_cli(["store", "--store", other, "import", str(tmp_path / "b.json"),
                        str(tmp_path / "b.json")])
    assert imported.returncode == 0, imported.stderr
    assert "already stored" in imported.stdout.splitlines()[1]
    assert open_store(other).profile_body(1) == profile_body("net", scale=3.0)
    (tmp_path / "junk.json").write_text("{}")
    assert_one_line_error(run_cli(["store", "--store", other, "import",
                                   str(tmp_path / "junk.json")]), "junk.json")
    corrupt = tmp_path / "bad.db"
    corrupt.write_bytes(b"x" * 4096)
    assert_one_line_error(run_cli(["store", "--store", str(corrupt), "list"]), "bad.db")
    assert_one_line_error(run_cli(["store", "--store", path, "show", "999"]), "999")


def test_profile_command_records_and_survives_a_corrupt_store(tmp_path: Path) -> None:
    """A real `dnntune profile`: the file is written, the store gets the row; with a corrupt
    store the run still succeeds, its file is written and stderr names the store once."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    def profile(store: Path, out: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DNNTUNE_STORE": str(store)}
        return subprocess.run([sys.executable, "-m", "dnntune", "profile", "--model",
                               "tiny_mlp", "--num_runs", "3", "--out", str(out)],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=600)

    good = profile(tmp_path / "s.db", tmp_path / "p.json")
    assert good.returncode == 0, good.stderr[-2000:]
    assert (tmp_path / "p.json").is_file()
    df = open_store(str(tmp_path / "s.db")).profiles(model_name="tiny_mlp")
    assert len(df) == 1
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"y" * 4096)
    kept = profile(bad, tmp_path / "q.json")
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert (tmp_path / "q.json").is_file()
    assert [ln for ln in kept.stderr.splitlines() if "bad.db" in ln and "store" in ln]


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


def test_analyses_are_recorded_once(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    first = record_quietly({"cuts": [1, 2]}, path, kind="analysis")
    assert first is not None
    assert record_quietly({"cuts": [1, 2]}, path, kind="analysis") == first
    assert open_store(path)._db.execute("SELECT COUNT(*) FROM analyses").fetchone()[0] == 1
