"""Bad command-line input found by trying the CLI as a new user: each case ends in one
line naming the flag, file or key and what was expected, exit code 2, no traceback, and
nothing already measured is lost (outputs are checked before measuring)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from dnntune.profiling.profile import save_profile
from tests.analyzer_fixtures import chain_graph, make_profiles
from tests.conftest import assert_one_line_error, run_cli


@pytest.fixture
def saved(tmp_path: Path) -> tuple[str, str]:
    device, cloud = make_profiles(chain_graph([4000, 2000, 1000, 40]), [1, 2, 3, 1],
                                  [0.1, 0.2, 0.3, 0.1], [1, 1, 1, 1])
    return (str(save_profile(device, tmp_path / "device.json")),
            str(save_profile(cloud, tmp_path / "cloud.json")))


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def cases(tmp: Path, device: str, cloud: str) -> list[tuple[list[str], list[str]]]:
    (tmp / "a-folder").mkdir()
    a_file = _write(tmp / "a-file", "x")
    (tmp / "random.keras").write_bytes(bytes(range(256)) * 4)
    with zipfile.ZipFile(tmp / "notes.keras", "w") as archive:
        archive.writestr("notes.txt", "no model here")
    lots = json.loads(Path(device).read_text())
    lots["layers"][1]["output_bytes"] = "lots"
    tiny = "slow:\n    base: 3g\n    up_mbps: 1.0e-320\n"
    return [
        (["profile", "--model", "tiny_mlp", "--out", str(tmp / "a-folder")],
         ["--out", "is a directory"]),
        (["profile", "--model", "tiny_mlp", "--out", str(tmp / "absent" / "p.json")],
         ["--out", "does not exist"]),
        (["analyze", "--device", device, "--cloud", cloud, "--out", a_file],
         ["--out", "is a file; expected a folder"]),
        (["profile", "--model", "tiny_mlp", "--energy-seconds", "-1"],
         ["--energy-seconds", "positive"]),
        (["graph", "--model", str(tmp / "random.keras")], ["random.keras",
                                                           "not a .keras archive"]),
        (["graph", "--model", str(tmp / "notes.keras")], ["notes.keras", "not a Keras model"]),
        (["graph", "--model", ""], ["model name is empty", "tiny_resnet"]),
        (["analyze", "--model", ""], ["--model is empty"]),
        (["profile", "--side", "cloud", "--cloud", "127.0.0.1:9",
          "--model", str(tmp / "absent.keras")], ["absent.keras", "no such model file"]),
        (["profile", "--config", _write(tmp / "energy.yaml", "model: {name: tiny_mlp}\n"
                                        "processing: {device: {energy: plutonium}}\n")],
         ["energy.yaml", "processing.device.energy", "plutonium"]),
        (["analyze", "--config", _write(tmp / "links.yaml", "model: {name: tiny_mlp}\n"
                                        "links: [3g, moon]\n")],
         ["links.yaml", "key 'links'", "moon"]),
        (["analyze", "--device", device, "--cloud", cloud, "--format", "json", "--links",
          _write(tmp / "tiny-rate.yaml", "links:\n  " + tiny)],
         ["tiny-rate.yaml", "up_mbps", "1e-320"]),
        (["analyze", "--device", _write(tmp / "lots.json", json.dumps(lots)),
          "--cloud", cloud], ["lots.json", "output_bytes", "'lots'"]),
        (["analyze", "--device", device, "--cloud", cloud, "--cloud-tls-cert", a_file,
          "--model", "tiny_mlp"], ["--cloud-tls-cert", "not a PEM certificate"]),
        (["analyze", "--device", cloud, "--cloud", device],
         ["--device", "measured on the cloud side", "--allow-side-mismatch"]),
        (["analyze", "--device", device, "--cloud", device],
         ["--cloud", "measured on the device side", "--allow-side-mismatch"]),
        (["analyze", "--model", "tiny_mlp", "--input-shape", "3;4"],
         ["--input-shape", "one input shape"]),
    ]


def test_a_side_mismatch_is_accepted_when_asked(tmp_path: Path, saved: tuple[str, str]) -> None:
    device, _ = saved
    result = run_cli(["analyze", "--device", device, "--cloud", device, "--allow-side-mismatch",
                      "--format", "json", "--links", "wifi"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["links"][0]["name"] == "wifi"


def test_every_case_is_one_line_and_exit_2(tmp_path: Path, saved: tuple[str, str]) -> None:
    for argv, needles in cases(tmp_path, *saved):
        result = run_cli(argv, cwd=tmp_path)
        assert "Traceback" not in result.stderr, (argv, result.stderr[-2000:])
        assert_one_line_error(result, *needles)
