"""The radio power fit's throughput range: held at the range end outside it, labelled,
refused under --strict-ranges, and checked when read from a links file."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from dnntune.analysis.links import RangeError, check_in_range, load_links_file, preset_links
from dnntune.errors import ConfigError

SOURCE = "Narayanan et al., SIGCOMM 2021"


def _bounded_4g():
    return replace(preset_links()["4g"], fit_up_min_mbps=1.0, fit_up_max_mbps=25.0,
                   fit_down_min_mbps=1.0, fit_down_max_mbps=50.0, power_source=SOURCE)


def test_inside_the_range_the_fit_applies_unlabelled():
    link = _bounded_4g()
    assert link.up_power_mw(10.0) == pytest.approx(438.39 * 10.0 + 1288.04)
    assert link.up_extrapolation(10.0) == ""
    check_in_range(link)  # 5.85 up, 13.76 down: inside


def test_at_the_range_edge_the_fit_applies_unlabelled():
    link = _bounded_4g()
    assert link.up_power_mw(25.0) == pytest.approx(438.39 * 25.0 + 1288.04)
    assert link.up_extrapolation(25.0) == ""
    assert link.down_extrapolation(1.0) == ""


def test_beyond_the_range_power_is_held_at_the_end_and_labelled():
    link = _bounded_4g()
    held = 438.39 * 25.0 + 1288.04
    assert link.up_power_mw(1000.0) == pytest.approx(held)
    assert link.up_extrapolation(1000.0) == (
        f"extrapolated (fit holds for 1-25 Mbit/s, {SOURCE})")
    assert link.down_power_mw(0.5) == pytest.approx(51.97 * 1.0 + 1288.04)
    assert link.down_extrapolation(0.5).startswith("extrapolated (fit holds for 1-50")


def test_strict_ranges_refuses_in_one_line_naming_the_link():
    link = replace(_bounded_4g(), up_mbps=200.0)
    with pytest.raises(RangeError) as err:
        check_in_range(link)
    message = str(err.value)
    assert "\n" not in message and "'4g'" in message and "uplink" in message


def test_a_sweep_to_1000_mbps_is_finite_and_bounded_when_the_range_is_stated():
    link = _bounded_4g()
    powers = [link.up_power_mw(r) for r in (1.0, 10.0, 100.0, 1000.0)]
    assert all(math.isfinite(p) for p in powers)
    assert max(powers) == pytest.approx(438.39 * 25.0 + 1288.04)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "links.yaml"
    path.write_text("links:\n  mine:\n    base: 4g\n" + body)
    return path


def test_a_links_file_reads_the_range_and_source(tmp_path: Path):
    path = _write(tmp_path, "    fit_up_min_mbps: 1\n    fit_up_max_mbps: 25\n"
                            f"    power_source: {SOURCE}\n")
    link = load_links_file(path)["mine"]
    assert (link.fit_up_min_mbps, link.fit_up_max_mbps) == (1.0, 25.0)
    assert link.to_dict()["power_source"] == SOURCE
    assert link.up_extrapolation(30.0).endswith(f"{SOURCE})")


@pytest.mark.parametrize(("body", "key"), [
    ("    fit_up_min_mbps: 30\n    fit_up_max_mbps: 25\n", "fit_up_max_mbps"),
    ("    fit_down_max_mbps: -5\n", "fit_down_max_mbps"),
    ("    beta_mw: -1\n", "beta_mw"),
    ("    fit_sideways_mbps: 3\n", "fit_sideways_mbps"),
])
def test_a_bad_range_or_power_names_the_file_and_key(tmp_path: Path, body: str, key: str):
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_links_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and key in message


def test_the_link_json_carries_the_extrapolation_labels():
    d = replace(_bounded_4g(), up_mbps=200.0).to_dict()
    assert d["up_power_label"].startswith("extrapolated (fit holds for 1-25 Mbit/s")
    assert d["down_power_label"] == ""


def test_cli_strict_ranges_refuses_in_one_line_with_exit_2(tmp_path: Path, capsys):
    from dnntune.cli.main import main
    from dnntune.profiling.profile import save_profile
    from tests.analyzer_fixtures import chain_graph, make_profiles

    device, cloud = make_profiles(chain_graph([4000, 2000, 1000, 40]), [1, 2, 3, 1],
                                  [0.1, 0.2, 0.3, 0.1], [1, 1, 1, 1])
    args = ["analyze", "--device", str(save_profile(device, tmp_path / "d.json")),
            "--cloud", str(save_profile(cloud, tmp_path / "c.json")), "--format", "json",
            "--links", str(_write(tmp_path, "    up_mbps: 200\n    fit_up_min_mbps: 1\n"
                                            "    fit_up_max_mbps: 25\n"))]
    assert main(args) == 0  # held at the range end, labelled
    assert "extrapolated (fit holds for 1-25 Mbit/s" in capsys.readouterr().out
    assert main(args[:-4] + args[-2:]) == 0  # the terminal table says so too
    assert "mine: uplink radio power extrapolated (fit holds for 1-25" in (
        capsys.readouterr().out)
    assert main([*args, "--strict-ranges"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'mine'" in err and "extrapolated" in err


def test_a_bandwidth_sweep_to_1000_mbps_holds_upload_power_at_the_range_end():
    import numpy as np

    from dnntune.analysis.costs import CostOptions, cost_table

    link = replace(preset_links()["4g"], down_mbps=10.0, fit_up_min_mbps=1.0,
                   fit_up_max_mbps=25.0)
    rates = np.array([[25.0], [1000.0]])
    bytes_up = 1_000_000.0
    table = cost_table([0.0], [0.0], [0.0], [bytes_up], [0.0], link, CostOptions(), 0.0,
                       up_mbps=rates)
    held_w = (438.39 * 25.0 + 1288.04) / 1000.0
    upload_ms = bytes_up * 8 / (rates[:, 0] * 1000.0)
    assert table.up_mj[:, 0] == pytest.approx(held_w * upload_ms)
