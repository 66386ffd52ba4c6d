"""The run folder: write_run, save_partial_profile, load_run, summaries."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dnntune.analysis.links import resolve_links
from dnntune.analysis.partition import Analysis, Objective, analyze_profiles
from dnntune.errors import DnntuneError
from dnntune.profiling.profile import Profile, load_profile
from dnntune.report.runs import (
    RunFiles,
    default_run_dir,
    load_run,
    save_partial_profile,
    summary_frame,
    write_run,
)
from tests.analyzer_fixtures import chain_graph, make_profiles


def profiles() -> tuple[Profile, Profile]:
    graph = chain_graph([1_000_000, 500_000, 1_000, 500_000, 4_000])
    return make_profiles(graph, [0.0, 1.0, 1.0, 50.0, 50.0], [0.0, 0.1, 0.1, 0.5, 0.5],
                         [0.0, 2.0, 2.0, 100.0, 100.0], idle_power_mw=100.0)


def analysis_of(device: Profile, cloud: Profile) -> Analysis:
    return analyze_profiles(device, cloud, resolve_links(None),
                            Objective("energy-first"))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunFiles, Analysis]:
    device, cloud = profiles()
    analysis = analysis_of(device, cloud)
    files = write_run(tmp_path_factory.mktemp("run") / "out", device, cloud, analysis)
    return files, analysis


def test_write_run_creates_every_file(written: tuple[RunFiles, Analysis]) -> None:
    files, _ = written
    names = sorted(p.relative_to(files.directory).as_posix() for p in files.all())
    expected = ["analysis.json", "cloud.json", "cuts.csv", "device.json"] + [
        f"plots/{link}-{kind}.png" for link in ("3g", "4g", "wifi")
        for kind in ("energy", "latency", "pareto", "uplink")]
    assert names == sorted(expected)
    assert all(p.is_absolute() and p.stat().st_size > 0 for p in files.all())
    assert not list(files.directory.rglob("*.tmp"))


def test_cuts_csv_has_one_row_per_link_and_cut(written: tuple[RunFiles, Analysis]) -> None:
    files, analysis = written
    with files.cuts.open() as f:
        rows = list(csv.DictReader(f))
    n_cuts = len(analysis.inputs.after)
    assert len(rows) == len(analysis.links) * n_cuts
    assert {"link", "index", "after", "bytes_up", "tm_ms", "tt_ms", "tc_ms", "latency_ms",
            "em_mj", "et_mj", "energy_mj", "best", "pareto"} <= set(rows[0])
    for la in analysis.links:
        mine = [r for r in rows if r["link"] == la.link.name]
        assert [int(r["index"]) for r in mine] == list(range(n_cuts))
        assert [int(r["index"]) for r in mine if r["best"] == "True"] == [la.best]
        assert float(mine[-1]["latency_ms"]) == pytest.approx(la.table.latency_ms[-1])
    assert rows[0]["after"] == "" and rows[1]["after"] == "in"


def test_analysis_json_round_trips(written: tuple[RunFiles, Analysis]) -> None:
    files, analysis = written
    assert json.loads(files.analysis.read_text()) == json.loads(json.dumps(analysis.to_dict()))


def test_profiles_round_trip(written: tuple[RunFiles, Analysis]) -> None:
    files, _ = written
    device, cloud = profiles()
    assert load_profile(files.device) == device
    assert load_profile(files.cloud) == cloud


def test_load_run_gives_profiles_analysis_and_frames(
        written: tuple[RunFiles, Analysis]) -> None:
    files, analysis = written
    run = load_run(files.directory)
    assert run.model == "chain" and run.device == profiles()[0]
    assert run.analysis["objective"] == "energy-first"
    assert len(run.cuts) == 3 * len(analysis.inputs.after)
    assert run.cuts["best"].sum() == 3 and run.cuts.attrs["model"] == "chain"
    assert run.cuts["after"].isna().sum() == 3  # cut 0 on each link
    assert len(run.plots) == 12 and run.plot("4g", "pareto").name == "4g-pareto.png"
    layers = run.layers()
    assert {"latency_mean_ms_device", "latency_mean_ms_cloud", "energy_mj"} <= set(layers)
    summary = run.summary()
    assert list(summary["link"]) == ["3g", "4g", "wifi"]
    for la, row in zip(analysis.links, summary.itertuples(), strict=True):
        assert row.best_index == la.best
        assert row.energy_mj == pytest.approx(la.table.energy_mj[la.best])
    with pytest.raises(DnntuneError, match="no such plot"):
        run.plot("5g", "latency")


def test_summary_frame_of_an_analysis_object() -> None:
    device, cloud = profiles()
    frame = summary_frame(analysis_of(device, cloud))
    assert frame.attrs["model"] == "chain"
    assert {"best_after", "gain_vs_mobile_only_pct", "gain_vs_cloud_only_pct",
            "dag_energy_mj"} <= set(frame.columns)


def test_without_plots(tmp_path: Path) -> None:
    device, cloud = profiles()
    files = write_run(tmp_path, device, cloud, analysis_of(device, cloud), plots=False)
    assert files.plots == () and not (tmp_path / "plots").exists()
    assert load_run(tmp_path).plots == ()


def test_partial_profile_is_kept_and_load_run_says_what_is_missing(tmp_path: Path) -> None:
    device, _ = profiles()
    out = tmp_path / "run"
    path = save_partial_profile(out, device, "device")
    assert path == (out / "device.json").resolve()
    assert load_profile(path) == device
    with pytest.raises(DnntuneError, match=r"cloud\.json is missing"):
        load_run(out)
    with pytest.raises(DnntuneError, match="side must be one of device, cloud"):
        save_partial_profile(out, device, "phone")
    with pytest.raises(DnntuneError, match="no such run folder"):
        load_run(tmp_path / "nowhere")


def test_default_run_dir(tmp_path: Path) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = default_run_dir("mobilenet_v2", tmp_path, now)
    assert first == tmp_path / "mobilenet_v2-20260102T030405Z"
    assert not first.exists()
    first.mkdir()
    assert default_run_dir("mobilenet_v2", tmp_path, now).name == \
        "mobilenet_v2-20260102T030405Z-2"
    assert default_run_dir("my model/v1", tmp_path, now).name.startswith("my_model_v1-")
    assert default_run_dir("x").parent == Path("dnntune-runs")
