"""The deployment study: a short real run on tiny_resnet through the CLI (a config file, one
TensorFlow and one LiteRT configuration, each in its own pinned worker), its files and
best marks; the marks on hand-made rows; bad config files."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from dnntune.profiling.topology import format_cpus
from dnntune.study.deployment import OBJECTIVES, DeploymentRow, best_configurations, mark_best
from tests.conftest import assert_one_line_error, run_cli


def _row(framework: str, threads: int, mean_ms: float, energy_mj: float,
         peak: int) -> DeploymentRow:
    return DeploymentRow("m", framework, "fp32", threads, "all", "0-1", mean_ms, mean_ms,
                         energy_mj, 1.0, "estimated:x", 10, 1, 1, peak, 5, 0.1, 0.2)


def test_marks_name_the_least_of_each_objective() -> None:
    mib = 1 << 20
    rows = mark_best([_row("tf", 1, 5.0, 2.0, 300 * mib), _row("tf", 2, 3.0, 4.0, 300 * mib),
                      _row("litert", 1, 4.0, 1.0, 100 * mib),
                      _row("litert", 2, 3.0, 1.0, 100 * mib - 4096)])  # < 1 MiB: a tie
    assert [r.best for r in rows] == ["", "latency", "energy,memory", ""]  # first on ties
    assert best_configurations(rows) == {"m": {"latency": "tf fp32 t2 all",
                                               "energy": "litert fp32 t1 all",
                                               "memory": "litert fp32 t1 all"}}
    unmeasured = mark_best([replace(r, energy_mj=math.nan, best="") for r in rows])
    assert all("energy" not in r.best for r in unmeasured)


def test_short_study_writes_rows_files_and_consistent_marks(tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text("deployment:\n  models: [tiny_resnet]\n  frameworks: [tf, litert]\n"
                      "  precisions: [fp32]\n  threads: [1]\n  affinities: [all]\n"
                      "  num_runs: 3\n  warmup_runs: 1\n  energy: model:pixel3\n  rounds: 2\n")
    out = tmp_path / "out"
    store = tmp_path / "store.db"
    result = run_cli(["study", "deployment", "--config", str(config), "--out", str(out),
                      "--format", "json", "--store", str(store)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CPU topology:" in result.stderr
    import dnntune.store

    with dnntune.store.open(str(store)) as stored:  # recorded after its files
        assert list(stored.studies()["kind"]) == ["deployment"]
        assert len(stored.study_rows()) == 2
    doc = json.loads((out / "deployment.json").read_text())
    assert json.loads(result.stdout)["rows"] == doc["rows"]
    rows = doc["rows"]
    assert [(r["framework"], r["precision"], r["threads"], r["affinity"]) for r in rows] == [
        ("tf", "fp32", 1, "all"), ("litert", "fp32", 1, "all")]
    everything = format_cpus(os.sched_getaffinity(0))
    for r in rows:
        assert r["runs"] == 6 and r["mean_ms"] > 0 and r["p90_ms"] > 0
        assert "2 rounds, means" in r["note"]
        assert r["energy_label"] == "estimated:pixel3" and r["energy_mj"] > 0
        assert r["energy_mj"] == pytest.approx(r["mean_ms"] * r["power_mw"] / 1e3)
        assert r["model_file_bytes"] > 0 and r["peak_rss_growth_bytes"] > 0
        assert r["inference_rss_growth_bytes"] >= 0
        assert r["cpus"] == everything
    assert rows[0]["note"].startswith("Keras file") and rows[1]["note"].startswith(".tflite")
    for objective, key in zip(OBJECTIVES, ("mean_ms", "energy_mj", "peak_rss_growth_bytes"),
                              strict=True):
        marked = [r for r in rows if objective in r["best"].split(",")]
        assert len(marked) == 1, (objective, rows)
        if objective == "memory":  # compared at 1 MiB
            assert marked[0][key] < min(r[key] for r in rows) + (1 << 20)
        else:
            assert marked[0][key] == min(r[key] for r in rows)
        name = f"{marked[0]['framework']} fp32 t1 all"
        assert doc["best"]["tiny_resnet"][objective] == name
    with (out / "deployment.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["best"] for r in table] == [r["best"] for r in rows]
    assert (out / "deployment.png").stat().st_size > 10_000


def test_bad_study_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployment:\n  models: [tiny_mlp]\n  affinity: [big]\n")
    assert_one_line_error(run_cli(["study", "deployment", "--config", str(bad)]),
                          "bad.yaml", "unknown key 'deployment.affinity'")
    bad.write_text("deployment:\n  models: [tiny_mlp]\n  threads: [0]\n")
    assert_one_line_error(run_cli(["study", "deployment", "--config", str(bad)]),
                          "bad.yaml", "deployment.threads", "integers >= 1")
    assert_one_line_error(run_cli(["study", "deployment", "--model", "tiny_mlp",
                                   "--threads", "two"]), "--threads 'two'")
    assert_one_line_error(run_cli(["study", "deployment", "--model", "tiny_mlp,nosuch"]),
                          "model 'nosuch'", "tiny_resnet")


def test_a_hardware_meter_is_read_by_every_worker(tmp_path: Path) -> None:
    """A (recorded) battery gauge at a steady 0.5 A: idle is measured once, active power in
    the worker while its inference loops, and the row is labelled measured."""
    base = tmp_path / "sys/class/power_supply/battery"
    base.mkdir(parents=True)
    for name, value in (("type", "Battery"), ("current_now", "-500000"),
                        ("voltage_now", "3800000"), ("status", "Discharging")):
        (base / name).write_text(value + "\n")
    result = run_cli(["study", "deployment", "--model", "tiny_resnet", "--frameworks",
                      "litert", "--precision", "fp32", "--affinity", "all", "--num_runs", "3",
                      "--energy", "battery", "--meter-root", str(tmp_path), "--format", "json"])
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(result.stdout)["rows"]
    assert row["energy_label"] == "measured:battery"
    # 1.9 W both idle and busy on a gauge that does not move: nothing above idle
    assert row["power_mw"] == pytest.approx(0.0, abs=1e-6)
    assert row["energy_mj"] == pytest.approx(0.0, abs=1e-6)
    assert row["best"] == "latency,energy,memory"
