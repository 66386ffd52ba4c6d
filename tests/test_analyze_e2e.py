"""`dnntune analyze` as the whole job: profile both sides through gRPC, analyze, write files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dnntune.profiling.profile import load_profile
from tests.conftest import assert_one_line_error, run_cli


def test_default_job_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = run_cli(["analyze", "--objective", "energy-first", "--num_runs", "3",
                      "--warmup_runs", "1", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    text = " ".join(result.stdout.split())
    assert "mobilenet_v2" in text and "results in" in text
    for link in ("3g", "4g", "wifi"):
        assert f"│ {link} " in result.stdout
    device, cloud = load_profile(out / "device.json"), load_profile(out / "cloud.json")
    assert device.meta.side == "device" and cloud.meta.side == "cloud"
    assert device.meta.num_threads == 1 and cloud.meta.num_threads == 2
    assert device.layer_names == cloud.layer_names and len(device.layer_names) == 156
    from dnntune.cli.pipeline import cgroup_problem

    # The default device is an emulated phone (scaled where no cgroup can be written).
    mode = "scaled" if cgroup_problem() else "emulated"
    assert device.meta.device_label == f"{mode}:dnntune_phone"
    assert f"(device: {mode}:dnntune_phone)" in text
    assert device.energy.label == "estimated:dnntune_phone" and cloud.energy.label == "none"
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["objective"] == "energy-first"
    assert [link["name"] for link in analysis["links"]] == ["3g", "4g", "wifi"]
    cuts = pd.read_csv(out / "cuts.csv")
    # The built-in run sends what an app would (docs/wire.md): one row per (cut, encoding).
    assert analysis["wire"]["encodings"] == ["fp32", "uint8", "jpeg90", "fp16", "int8"]
    assert "wire: every (cut, encoding) pair" in text
    assert set(cuts["index"]) == set(range(157))
    fp32 = cuts[(cuts["encoding"] == "fp32") & (cuts["link"] == "3g")]
    assert len(fp32) == 156 and (fp32["bytes_up"].iloc[0] == 224 * 224 * 3 * 4)
    assert len(list((out / "plots").glob("*.png"))) == 12


def test_saved_profiles_are_reused_and_written_to_out(tmp_path):
    first = tmp_path / "first"
    assert run_cli(["analyze", "--model", "tiny_mlp", "--num_runs", "2", "--warmup_runs",
                    "0", "--emulate", "none", "--out", str(first), "--no-plots"]
                   ).returncode == 0
    again = tmp_path / "again"
    result = run_cli(["analyze", "--device", str(first / "device.json"), "--cloud",
                      str(first / "cloud.json"), "--links", "wifi", "--format", "json",
                      "--out", str(again)])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["links"][0]["name"] == "wifi"
    assert (again / "analysis.json").is_file() and (again / "plots").is_dir()


def test_unreachable_servers_and_bad_configs_are_one_line(tmp_path):
    assert_one_line_error(run_cli(["analyze", "--model", "tiny_mlp", "--cloud",
                                   "127.0.0.1:9", "--out", str(tmp_path / "x")]),
                          "cannot reach 127.0.0.1:9")
    assert_one_line_error(run_cli(["analyze", "--model", "tiny_mlp", "--device",
                                   "127.0.0.1:9", "--out", str(tmp_path / "y")]),
                          "cannot reach 127.0.0.1:9")
    # Servers are reached before anything is measured: nothing was profiled, nothing kept.
    assert not list(tmp_path.glob("[xy]*"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: tiny_mlp}\nlinks: [5g]\n")
    assert_one_line_error(run_cli(["analyze", "--config", str(bad)]), "unknown link '5g'")
    bad.write_text("model: {name: tiny_mlp}\nobjective: cheapest\n")
    assert_one_line_error(run_cli(["analyze", "--config", str(bad)]), "bad.yaml",
                          "'objective' must be one of")


def test_a_failure_after_the_device_profile_keeps_it(tmp_path):
    broken = tmp_path / "cloud.json"
    broken.write_text("{not json")
    out = tmp_path / "run"
    result = run_cli(["analyze", "--model", "tiny_mlp", "--num_runs", "2", "--cloud",
                      str(broken), "--emulate", "none", "--out", str(out)])
    assert_one_line_error(result, "cloud.json: not JSON", "kept what was measured")
    # Kept beside the run folder, which is only ever written whole.
    assert not out.exists()
    kept = result.stderr.split("kept what was measured: ")[1].rstrip(")\n")
    assert Path(kept).parent.parent == out.parent
    assert load_profile(kept).meta.side == "device"
