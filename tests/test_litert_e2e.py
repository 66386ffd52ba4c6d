"""End to end as a user runs it: a LiteRT device profile (measured here, or imported from a
phone's op profile) analysed against a TensorFlow cloud profile; the framework study."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.litert_fixtures import ops_from_layer_map, proto_report


@pytest.fixture(scope="module")
def cloud_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("cloud") / "cloud.json"
    result = run_cli(["profile", "--model", "tiny_resnet", "--side", "cloud", "--num_runs", "5",
                      "--warmup_runs", "1", "--out", str(out), "--format", "json"])
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _analyze(device, cloud) -> dict:
    result = run_cli(["analyze", "--device", str(device), "--cloud", str(cloud),
                      "--links", "3g,wifi", "--format", "json"])
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_litert_device_profile_against_tensorflow_cloud(cloud_profile, tmp_path) -> None:
    device = tmp_path / "device.json"
    result = run_cli(["profile", "--model", "tiny_resnet", "--framework", "litert",
                      "--cuts", "spread:3", "--num_runs", "5", "--warmup_runs", "1",
                      "--energy", "model:default", "--out", str(device)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "head latency at" in result.stdout
    saved = json.loads(device.read_text())
    measured = [c["index"] for c in saved["measured_cuts"]["cuts"]]
    doc = _analyze(device, cloud_profile)
    assert "evaluated exactly the" in doc["measured_cuts"]
    for link in doc["links"]:
        assert len(link["cuts"]) == len(measured)
        assert link["mobile_only"]["tm_ms"] == pytest.approx(
            saved["measured_cuts"]["cuts"][-1]["head"]["mean_ms"])
        assert link["best"]["after"] in {c["after"] for c in saved["measured_cuts"]["cuts"]}
    table = run_cli(["analyze", "--device", str(device), "--cloud", str(cloud_profile),
                     "--links", "wifi"])
    assert table.returncode == 0 and "evaluated exactly the" in table.stdout


@pytest.mark.slow
def test_imported_phone_profile_against_tensorflow_cloud(cloud_profile, tmp_path) -> None:
    from dnntune.litert.convert import convert_model
    from dnntune.model.loading import load_model

    layer_map = convert_model(load_model("tiny_resnet"), "fp32").layer_map
    pb = tmp_path / "op_profile.pb"
    pb.write_bytes(proto_report(ops_from_layer_map(layer_map, scale_ms=2.0)))
    device = tmp_path / "device.json"
    result = run_cli(["import-profile", str(pb), "--format", "tflite-proto", "--model",
                      "tiny_resnet", "--out", str(device)])
    assert result.returncode == 0, result.stderr[-2000:]
    doc = _analyze(device, cloud_profile)
    assert "(LiteRT benchmark_model fp32, ops" in doc["measured_cuts"]
    assert [c["after"] for c in doc["links"][0]["cuts"]] == \
        [None] + [c.after for c in layer_map.cuts if c.exists and c.index > 0]


def test_framework_study_rows_and_files(tmp_path) -> None:
    from dnntune.litert.study import run_study, write_study

    rows = run_study(["tiny_resnet"], ("tf", "litert"), ("fp32", "int8"), runs=3, warmup=1)
    by = {(r.framework, r.precision): r for r in rows}
    assert set(by) == {("tf", "fp32"), ("litert", "fp32"), ("litert", "int8")}
    assert by["litert", "fp32"].max_abs_diff < 1e-4
    assert by["litert", "fp32"].top1_agreement == 1.0
    assert by["litert", "int8"].model_bytes < by["litert", "fp32"].model_bytes
    assert all(r.mean_ms > 0 and r.p90_ms >= 0 for r in rows)
    paths = write_study(rows, tmp_path)
    assert [p.name for p in paths] == ["study.json", "study.csv", "study.png"]
    assert len(json.loads(paths[0].read_text())["rows"]) == 3


def test_study_cli_refuses_unknown_framework() -> None:
    from tests.conftest import assert_one_line_error

    assert_one_line_error(run_cli(["study", "frameworks", "--model", "tiny_mlp",
                                   "--frameworks", "tf,onnx"]), "--frameworks", "tf, litert")
