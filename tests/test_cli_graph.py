"""`dnntune graph` as a user runs it."""

from __future__ import annotations

import json

import pytest

from dnntune import __version__
from tests.conftest import assert_one_line_error, run_cli


def test_version_and_help():
    assert run_cli(["--version"]).stdout.strip() == f"dnntune {__version__}"
    helped = run_cli(["--help"])
    assert helped.returncode == 0
    assert "graph" in helped.stdout


def test_graph_json_lists_layers_and_every_cut():
    result = run_cli(["graph", "--model", "tiny_resnet", "--format", "json"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] == "tiny_resnet"
    assert len(doc["cuts"]) == len(doc["layers"]) + 1 == 22
    assert doc["layers"][0]["type"] == "InputLayer"
    assert set(doc["layers"][1]) >= {"name", "type", "output_shapes", "output_bytes", "params",
                                     "flops"}
    assert doc["cuts"][0]["index"] == 0 and doc["cuts"][0]["after"] is None
    assert doc["cuts"][0]["bytes_up"] == 32 * 32 * 3 * 4
    assert doc["cuts"][-1]["tensors"] == [] and doc["cuts"][-1]["bytes_up"] == 0
    for cut in doc["cuts"]:
        assert cut["bytes_up"] == sum(t["bytes"] for t in cut["tensors"])


def test_graph_table_has_a_row_per_cut_and_a_summary():
    result = run_cli(["graph", "--model", "tiny_mlp"])
    assert result.returncode == 0, result.stderr
    assert "cloud-only" in result.stdout and "mobile-only" in result.stdout
    assert "tiny_mlp: 4 layers, 1,140 parameters" in result.stdout.replace("\n", " ")


@pytest.mark.parametrize(("args", "needles"), [
    (["graph", "--model", "alexnet"], ["unknown model 'alexnet'", "mobilenet_v2"]),
    (["graph", "--model", "missing/model.keras"], ["missing/model.keras", "no such model file"]),
    (["graph", "--model", "tiny_mlp", "--input-shape", "a,b"], ["--input-shape 'a,b'"]),
    (["graph", "--model", "tiny_mlp", "--input-shape", "3;4"], ["one input, got 2 shapes"]),
    (["graph", "--model", "tiny_mlp", "--batch-size", "0"], ["--batch-size", "must be 1 to 1024"]),
    (["graph"], ["--model"]),
])
def test_bad_input_is_one_line_and_exit_code_2(args, needles):
    assert_one_line_error(run_cli(args), *needles)


def test_corrupt_file_from_the_cli(tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n garbage")
    assert_one_line_error(run_cli(["graph", "--model", str(bad)]), "broken.h5",
                          "not an HDF5 file")
