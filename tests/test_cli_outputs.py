"""Output paths, permissions and absurd numbers: one line and exit 2, before any work is
lost; a run folder is written whole or not at all (issue 27, item 3)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, assert_one_line_error, run_cli

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
# Root without the capabilities that let it ignore file permissions: what any other user
# is held to, where 'nobody' cannot reach this checkout (e.g. a clone in a 0700 folder).
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
          "--inh-caps", "-dac_override,-dac_read_search", "--"]


def unprivileged_prefix() -> list[str]:
    """How to run a command as an unprivileged user: as is when the tests do not run as
    root, else as 'nobody' if it can run this checkout's Python, else root without the
    permission-bypassing capabilities."""
    if os.geteuid() != 0:
        return []
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "import dnntune"], cwd="/",
                           capture_output=True)
    return NOBODY if probe.returncode == 0 else NO_DAC


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary folder any user can enter (pytest's own are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix="dnntune-perm-"))
    path.chmod(0o777)
    yield path
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    subprocess.run(["rm", "-rf", str(path)], check=False)


def run_unprivileged(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp), "TMPDIR": str(tmp),
           "DNNTUNE_CACHE_DIR": str(tmp / "cache")}
    return subprocess.run([*unprivileged_prefix(), sys.executable, "-m", "dnntune", *args],
                          capture_output=True, text=True, cwd=tmp, env=env, timeout=300)


def test_system_paths_and_absurd_numbers_are_one_line_before_any_work(tmp_path):
    cases = [
        (["profile", "--model", "tiny_mlp", "--num_runs", "2", "--out", "/proc/x.json"],
         ["--out /proc/x.json", "cannot be written"]),
        (["analyze", "--model", "tiny_mlp", "--emulate", "none", "--out", "/proc/dnnrun"],
         ["--out /proc/dnnrun", "cannot write in /proc"]),
        (["profile", "--model", "tiny_mlp", "--batch-size", "99999999999999999999"],
         ["--batch-size", "must be 1 to 1024"]),
        (["graph", "--model", "tiny_mlp", "--batch-size", "0"], ["--batch-size", "1 to 1024"]),
        (["profile", "--model", "tiny_mlp", "--num_runs", "10" * 12], ["--num_runs"]),
        (["analyze", "--model", "tiny_mlp", "--warmup_runs", "-1"], ["--warmup_runs"]),
    ]
    for args, needles in cases:
        assert_one_line_error(run_cli(args, cwd=tmp_path, timeout=120), *needles)


def test_a_batch_size_over_the_limit_in_a_config_file_names_the_key(tmp_path):
    config = tmp_path / "big.yaml"
    config.write_text("model: {name: tiny_mlp, batch_size: 99999999999999999999}\n")
    assert_one_line_error(run_cli(["profile", "--config", str(config)], cwd=tmp_path),
                          str(config), "model.batch_size", "1 to 1024")


def test_unprivileged_user_gets_one_line_for_unreadable_and_unwritable_paths(shared_tmp):
    model = shared_tmp / "private.keras"
    model.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # bytes do not matter: it cannot be read
    model.chmod(0o000)
    locked = shared_tmp / "locked"
    locked.mkdir()
    existing = locked / "old.json"
    existing.write_text("{}\n")
    existing.chmod(0o444)
    locked.chmod(0o555)
    cases = [
        (["graph", "--model", str(model)], [str(model), "cannot read the model file",
                                            "Permission denied"]),
        (["profile", "--model", "tiny_mlp", "--out", str(existing)],
         [f"--out {existing}", "cannot be written"]),
        (["profile", "--model", "tiny_mlp", "--out", str(locked / "new.json")],
         [f"--out {locked / 'new.json'}", "cannot be written"]),
        (["analyze", "--model", "tiny_mlp", "--emulate", "none", "--out", str(locked / "run")],
         [f"--out {locked / 'run'}", f"cannot write in {locked}"]),
        (["serve", "--port", "0", "--upload-dir", str(locked)],
         [f"--upload-dir {locked}", "Permission denied"]),
    ]
    for args, needles in cases:
        assert_one_line_error(run_unprivileged(args, shared_tmp), *needles)
    assert existing.read_text() == "{}\n"


def test_a_run_into_a_finished_folder_that_fails_leaves_it_whole(tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    files = {"device.json": '{"old": 1}\n', "cloud.json": '{"old": 2}\n',
             "analysis.json": '{"old": 3}\n', "cuts.csv": "old\n"}
    for name, text in files.items():
        (out / name).write_text(text)
    broken = tmp_path / "broken-cloud.json"  # fails after the device was measured
    broken.write_text("{not json")
    result = run_cli(["analyze", "--model", "tiny_mlp", "--emulate", "none", "--num_runs", "2",
                      "--warmup_runs", "0", "--cloud", str(broken), "--no-plots",
                      "--out", str(out)], cwd=tmp_path, timeout=300)
    assert_one_line_error(result, "broken-cloud.json: not JSON", "kept what was measured")
    assert {p.name: p.read_text() for p in out.iterdir()} == files  # not one file replaced
    kept = result.stderr.split("kept what was measured: ")[1].rstrip(")\n").split(", ")
    assert [Path(k).name for k in kept] == ["device.json"]
    assert Path(kept[0]).parent.name.startswith("done.incomplete-")
    assert '"side": "device"' in Path(kept[0]).read_text()


def test_a_folder_of_other_files_is_never_a_run_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    result = run_cli(["analyze", "--model", "tiny_mlp", "--out", str(tmp_path)], cwd=REPO,
                     timeout=120)
    assert_one_line_error(result, "'notes.txt'", "which no dnntune run writes")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
