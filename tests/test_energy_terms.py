"""Issue 21: one definition of phone energy per inference, every term by hand on a
3-layer chain, per radio mode; the robustness line; presets' sources and ranges; bad
presets refused in one line."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dnntune.analysis.costs import (
    ENERGY_TERMS,
    CostOptions,
    cut_inputs,
    describe_energy,
    layer_costs,
    prefix_table,
)
from dnntune.analysis.links import (
    Link,
    asdict_numbers,
    links_to_yaml,
    load_links_file,
    preset_links,
    scaled_radio,
)
from dnntune.analysis.partition import Objective
from dnntune.analysis.sensitivity import energy_robustness
from dnntune.errors import ConfigError
from tests.analyzer_fixtures import chain_graph, make_profiles

REPO = Path(__file__).resolve().parents[1]
# in(1 MB) -> l1(250 kB) -> l2(10 kB) -> l3(4 kB, the output): three layers, five cuts.
CHAIN_BYTES = [1_000_000, 250_000, 10_000, 4_000]
DEVICE_MS, CLOUD_MS, DEVICE_MJ = [0, 100, 50, 10], [0, 10, 5, 1], [0, 200, 100, 20]
# 8 Mbit/s = 1000 bytes/ms. Per-direction intercepts: P_up = 100*8 + 300 = 1100 mW,
# P_down = 50*8 + 100 = 500 mW; connected, not transferring: 500 mW; promotion 100 ms at
# 1000 mW + tail 1000 ms at 500 mW = 600 mJ.
LINK = Link("lab", up_mbps=8.0, down_mbps=8.0, rtt_ms=20.0, alpha_up_mw_per_mbps=100.0,
            alpha_down_mw_per_mbps=50.0, beta_up_mw=300.0, beta_down_mw=100.0,
            promotion_ms=100.0, promotion_mw=1000.0, tail_ms=1000.0, tail_mw=500.0)
# Head call 3 ms (a third per layer: no layer holds weights), tail call 6 ms, RPC 2 ms.
CALLS = {"device_call_ms": 3.0, "cloud_call_ms": 6.0, "rpc_ms": 2.0}
CALL_POWER_MW, IDLE_MW = 400.0, 100.0

# By hand, cut index = layers on the device (0, 1 = cloud-only; 4 = mobile-only):
# tm = layers + call share [0, 0, 1, 2, 3] = [0, 0, 101, 152, 163]
# tc = layers + call share [6, 6, 4, 2, 0] = [22, 22, 10, 3, 0]
# t_up = [1000, 1000, 250, 10, 0], t_down = 4 where anything crosses
# wait = RTT 20 + RPC 2 + tc = [44, 44, 32, 25, 0] ms
EM = [0, 0, 200, 300, 320]
CALL = [0, 0, 0.4, 0.8, 1.2]          # 400 mW x call ms
UP = [1100, 1100, 275, 11, 0]         # 1100 mW x t_up
DOWN = [2, 2, 2, 2, 0]                # 500 mW x 4 ms
WAIT = [22, 22, 16, 12.5, 0]          # 500 mW x wait
T_WARM = [1048, 1048, 387, 191, 163]  # tm + RTT + up + down + RPC + tc
T_COLD = [1148, 1148, 487, 291, 163]  # + promotion 100 ms where anything crosses


def inputs():
    graph = chain_graph(CHAIN_BYTES)
    device, cloud = make_profiles(graph, DEVICE_MS, CLOUD_MS, DEVICE_MJ, IDLE_MW)
    costs = dataclasses.replace(layer_costs(device, cloud), call_power_mw=CALL_POWER_MW)
    return cut_inputs(graph, costs)


def table(**options):
    return prefix_table(inputs(), LINK, CostOptions(**CALLS, **options))


def check_terms(t, tail, idle) -> None:
    for name, want in (("em_mj", EM), ("call_mj", CALL), ("up_mj", UP), ("down_mj", DOWN),
                       ("wait_mj", WAIT), ("tail_mj", tail), ("idle_mj", idle)):
        np.testing.assert_allclose(getattr(t, name), want, err_msg=name)
    np.testing.assert_allclose(t.et_mj, np.add.reduce([UP, DOWN, WAIT, tail]))
    np.testing.assert_allclose(t.energy_mj, np.add.reduce([EM, CALL, UP, DOWN, WAIT, tail,
                                                           idle]))


def test_warm_every_term_by_hand() -> None:
    t = table()
    np.testing.assert_allclose(t.latency_ms, T_WARM)
    check_terms(t, tail=[0] * 5, idle=[0] * 5)
    np.testing.assert_allclose(t.energy_mj, [1124, 1124, 493.4, 326.3, 321.2])


def test_cold_pays_promotion_and_full_tail_on_every_cut_that_crosses() -> None:
    t = table(radio="cold")
    np.testing.assert_allclose(t.latency_ms, T_COLD)
    check_terms(t, tail=[600, 600, 600, 600, 0], idle=[0] * 5)


def test_periodic_fills_the_gap_not_already_counted() -> None:
    # 2/s: 500 ms gap < 1000 ms tail timer: 500 mW x (gap - transfers - wait), >= 0.
    t = table(inference_rate_hz=2.0)
    np.testing.assert_allclose(t.latency_ms, T_WARM)
    check_terms(t, tail=[0, 0, 0.5 * (500 - 254 - 32), 0.5 * (500 - 14 - 25), 0],
                idle=[0] * 5)
    # 0.5/s: 2000 ms gap > tail timer: as cold, once per inference.
    slow = table(inference_rate_hz=0.5)
    np.testing.assert_allclose(slow.energy_mj, table(radio="cold").energy_mj)


@pytest.mark.parametrize(("radio", "latency"), [("warm", T_WARM), ("cold", T_COLD)])
def test_idle_power_over_the_whole_inference_for_every_cut(radio: str, latency) -> None:
    t = table(radio=radio, idle_wait=True)
    np.testing.assert_allclose(t.idle_mj, np.array(latency) * IDLE_MW / 1000)
    assert t.idle_mj[-1] > 0  # mobile-only too: the same baseline for every cut


def test_the_radio_mode_flags() -> None:
    assert CostOptions(inference_rate_hz=1.0).radio == "periodic"
    with pytest.raises(ConfigError, match="--radio"):
        CostOptions(radio="cold", inference_rate_hz=1.0)
    with pytest.raises(ConfigError, match="--radio"):
        CostOptions(radio="lukewarm")
    assert describe_energy(CostOptions()).startswith("radio warm")
    assert "for every cut" in describe_energy(CostOptions(idle_wait=True))
    assert "periodic at 2 inferences/s" in describe_energy(CostOptions(inference_rate_hz=2))


def test_robustness_says_when_the_energy_first_cut_moves() -> None:
    # Warm: mobile-only 321.2 mJ beats after l2 (326.3). Radio power halved: after l2 costs
    # 300 + 0.8 + 5.5 + 1 + 6.25 = 313.55 mJ and wins.
    info = energy_robustness(inputs(), LINK, Objective("latency-first"), CostOptions(**CALLS))
    assert (info["index"], info["robust"]) == (4, False)
    moved = {v["what"]: v["index"] for v in info["variants"]}
    assert moved == {"radio power x0.5": 3, "radio power x2": 4, "radio cold": 4}
    assert info["variants"][0]["energy_mj"] == pytest.approx(313.55)
    # Cold: after l2 costs 926.3 mJ; no radio change makes it beat mobile-only's 321.2.
    cold = energy_robustness(inputs(), LINK, Objective("energy-first"),
                             CostOptions(**CALLS, radio="cold"))
    assert (cold["index"], cold["robust"]) == (4, True)
    assert [v["what"] for v in cold["variants"]] == ["radio power x0.5", "radio power x2",
                                                     "radio warm"]


def test_scaled_radio_scales_every_radio_power() -> None:
    half = scaled_radio(LINK, 0.5)
    assert (half.up_power_mw(), half.down_power_mw()) == (550.0, 250.0)
    assert (half.tail_mw, half.promotion_mw, half.tail_ms) == (250.0, 500.0, 1000.0)


def test_every_preset_has_a_source_and_a_range() -> None:
    presets = preset_links()
    assert len(presets) == 8
    for name, link in presets.items():
        assert link.power_source, name
        if name in ("3g", "4g", "wifi", "wifi-2022"):  # Huang et al. 2012: range assumed
            assert "range assumed" in link.power_source, name
        for low, high in ((link.fit_up_min_mbps, link.fit_up_max_mbps),
                          (link.fit_down_min_mbps, link.fit_down_max_mbps)):
            assert 0 <= low < high < 3000, name  # stated, not the unbounded default
        # A sweep far past the range holds the power at the range end: finite, bounded.
        assert link.up_power_mw(1000.0) == link.up_power_mw(link.fit_up_max_mbps) < 10_000
        assert link.down_power_mw(1e5) == link.down_power_mw(link.fit_down_max_mbps) < 10_000


def test_the_presets_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "presets.yaml"
    path.write_text(links_to_yaml(preset_links().values()))
    again = load_links_file(path)
    for name, link in preset_links().items():
        assert asdict_numbers(again[name]) == asdict_numbers(link), name
        assert again[name].power_source == link.power_source, name
        assert again[name].power_borrowed == link.power_borrowed, name
        assert again[name].to_dict()["up_power_label"] == link.up_power_label(), name
    # So does the canonical file, and a link with a curve (whose range is its ends).
    canonical = load_links_file(REPO / "configs" / "links.yaml")
    path.write_text(links_to_yaml(canonical.values()))
    assert {n: asdict_numbers(v) for n, v in load_links_file(path).items()} == {
        n: asdict_numbers(v) for n, v in canonical.items()}
    curved = _links_file(tmp_path, "    base: lte-2021\n"
                                   "    power_up_curve: [[1, 500], [10, 1400], [25, 2300]]\n")
    link = load_links_file(curved)["mine"]
    path.write_text(links_to_yaml([link]))
    back = load_links_file(path)["mine"]
    assert back.power_up_curve == link.power_up_curve
    assert asdict_numbers(back) == asdict_numbers(link)


def test_the_2021_fits_are_the_artifacts_minus_the_idle_baseline() -> None:
    """Narayanan et al.'s whole-phone fits (issue 21) minus 2357 mW idle."""
    fits = {"lte-2021": ((80.21, 2799), (14.55, 2754)),
            "5g-low": ((29.15, 3204), (13.52, 2925)),
            "5g-mmwave": ((9.42, 5624), (1.81, 5136))}
    for name, ((a_up, b_up), (a_down, b_down)) in fits.items():
        link = preset_links()[name]
        assert link.alpha_up_mw_per_mbps == a_up and link.up_beta_mw == b_up - 2357
        assert link.alpha_down_mw_per_mbps == a_down and link.down_beta_mw == b_down - 2357


def _links_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("links:\n  mine:\n" + body)
    return path


@pytest.mark.parametrize(("body", "key"), [
    ("    base: lte-2021\n    beta_up_mw: -5\n", "beta_up_mw"),
    ("    base: 4g\n    beta_down_mw: null\n", "beta_down_mw"),
    ("    base: 4g\n    tail_mw: -1\n", "tail_mw"),
    ("    base: 5g-low\n    fit_down_min_mbps: 200\n", "fit_down_max_mbps"),
    ("    base: 4g\n    power_curve_up: [[1, 2]]\n", "power_curve_up"),
    ("    up_mbps: 10\n    down_mbps: 10\n    rtt_ms: 5\n    alpha_up_mw_per_mbps: 1\n"
     "    alpha_down_mw_per_mbps: 1\n    beta_up_mw: 10\n", "beta_mw"),
])
def test_a_bad_preset_is_one_line_naming_file_and_key(tmp_path: Path, body: str,
                                                      key: str) -> None:
    path = _links_file(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_links_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and key in message


@pytest.mark.parametrize(("body", "key"), [
    ("    base: lte-2021\n    fit_up_min_mbps: 30\n    fit_up_max_mbps: 25\n",
     "fit_up_max_mbps"),                                             # inverted range
    ("    base: 5g-low\n    tail_mw: -3\n", "tail_mw"),              # negative power
    ("    base: 4g\n    power_down_curve: [[1, 500], [20, 900], [20, 950]]\n",
     "power_down_curve"),                                            # non-increasing curve
    ("    base: wifi\n    alpha_sideways_mw: 3\n", "alpha_sideways_mw"),  # unknown key
])
def test_cli_a_bad_preset_exits_2_in_one_line_naming_file_and_key(
        tmp_path: Path, capsys, body: str, key: str) -> None:
    from dnntune.cli.main import main
    from dnntune.profiling.profile import save_profile

    device, cloud = make_profiles(chain_graph(CHAIN_BYTES), DEVICE_MS, CLOUD_MS, DEVICE_MJ)
    bad = _links_file(tmp_path, body)
    assert main(["analyze", "--device", str(save_profile(device, tmp_path / "d.json")),
                 "--cloud", str(save_profile(cloud, tmp_path / "c.json")),
                 "--links", str(bad)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and str(bad) in err and "links.mine" in err and key in err
    assert "Traceback" not in captured.err and captured.out == ""


def test_per_direction_intercepts_in_a_file_and_beta_mw_still_works(tmp_path: Path) -> None:
    path = _links_file(tmp_path, "    base: 4g\n    beta_up_mw: 10\n")
    link = load_links_file(path)["mine"]
    assert link.up_beta_mw == 10.0
    assert link.down_beta_mw == link.beta_mw == preset_links()["4g"].beta_mw


def test_cli_bad_preset_and_mode_conflict_exit_2_and_the_report_says_what_is_counted(
        tmp_path: Path, capsys) -> None:
    from dnntune.cli.main import main
    from dnntune.profiling.profile import save_profile

    device, cloud = make_profiles(chain_graph(CHAIN_BYTES), DEVICE_MS, CLOUD_MS, DEVICE_MJ)
    base = ["analyze", "--device", str(save_profile(device, tmp_path / "d.json")),
            "--cloud", str(save_profile(cloud, tmp_path / "c.json"))]
    bad = _links_file(tmp_path, "    base: 4g\n    beta_up_mw: -5\n")
    assert main([*base, "--links", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(bad) in err and "beta_up_mw" in err
    assert main([*base, "--radio", "cold", "--inference-rate", "1"]) == 2
    assert "\n" not in capsys.readouterr().err.strip()

    assert main([*base, "--links", "4g,lte-2021", "--radio", "cold",
                 "--objective", "energy-first"]) == 0
    out = capsys.readouterr().out
    assert "energy: radio cold" in out and "radio connected while waiting" in out
    assert "4g: energy-first cut" in out and "lte-2021: energy-first cut" in out
    assert "lte-2021: uplink radio power extrapolated (fit holds for 1.02-24.85" in out
    assert main([*base, "--links", "5g-2024"]) == 0  # a borrowed fit: said in both directions
    out = " ".join(capsys.readouterr().out.split())
    assert "5g-2024: uplink radio power borrowed (the NSA low-band fit" in out
    assert "5g-2024: downlink radio power borrowed (" in out and "held at the range end" in out

    out_dir = tmp_path / "run"
    assert main([*base, "--links", "5g-mmwave", "--format", "json", "--out",
                 str(out_dir), "--no-plots"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["options"]["radio"] == "warm"
    assert doc["energy_definition"].startswith("radio warm")
    cut = doc["links"][0]["cuts"][0]
    assert sum(cut[k] for k in ENERGY_TERMS) == pytest.approx(cut["energy_mj"])
    assert doc["links"][0]["robustness"]["variants"]
    with (out_dir / "cuts.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(k in rows[0] for k in ENERGY_TERMS)
    for row in rows:
        total = sum(float(row[k]) for k in ENERGY_TERMS)
        assert total == pytest.approx(float(row["energy_mj"]))
        assert row["radio"] == "warm"
        assert row["down_power_label"].startswith("extrapolated (fit holds for 1.03-2195.8")


def test_a_piecewise_linear_curve_interpolates_and_holds_at_its_ends(tmp_path: Path) -> None:
    path = _links_file(tmp_path, "    base: lte-2021\n    up_mbps: 40\n"
                                 "    power_up_curve: [[1, 500], [10, 1400], [25, 2300]]\n"
                                 "    power_source: my bench, 2026\n")
    link = load_links_file(path)["mine"]
    assert link.up_power_mw(5.5) == pytest.approx(950.0)
    assert link.up_power_mw() == link.up_power_mw(1000.0) == 2300.0  # held at 25 Mbit/s
    assert (link.fit_up_min_mbps, link.fit_up_max_mbps) == (1.0, 25.0)
    assert link.up_extrapolation() == ("extrapolated (fit holds for 1-25 Mbit/s, "
                                       "my bench, 2026)")
    assert link.down_power_mw() == preset_links()["lte-2021"].down_power_mw()
    assert scaled_radio(link, 2.0).up_power_mw(5.5) == pytest.approx(1900.0)
    assert link.to_dict()["power_up_curve"] == [[1.0, 500.0], [10.0, 1400.0], [25.0, 2300.0]]
    # The cost table and a sweep use the curve too.
    graph = chain_graph(CHAIN_BYTES)
    sweep = prefix_table(inputs(), link, CostOptions(), up_mbps=np.array([[5.5], [1e3]]))
    t_up = np.array(graph.layers[0].outputs[0].bytes) / (np.array([[5.5], [1e3]]) * 125.0)
    np.testing.assert_allclose(sweep.up_mj[:, 0], [950.0 * t_up[0, 0] / 1000,
                                                   2300.0 * t_up[1, 0] / 1000])


@pytest.mark.parametrize(("curve", "key"), [
    ("[[1, 500], [1, 600]]", "power_up_curve"),          # not increasing
    ("[[10, 500], [5, 600]]", "power_up_curve"),         # decreasing
    ("[[1, -5], [5, 600]]", "power_up_curve"),           # negative power
    ("[[1, 500]]", "power_up_curve"),                    # one point
    ("[[1, 500], [5, 600]]\n    fit_up_max_mbps: 9", "fit_up_max_mbps"),
])
def test_a_bad_curve_is_one_line_naming_file_and_key(tmp_path: Path, curve: str,
                                                     key: str) -> None:
    path = _links_file(tmp_path, f"    base: 4g\n    power_up_curve: {curve}\n")
    with pytest.raises(ConfigError) as err:
        load_links_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and key in message


def test_curves_for_both_directions_need_no_fit(tmp_path: Path) -> None:
    path = _links_file(tmp_path, "    up_mbps: 10\n    down_mbps: 50\n    rtt_ms: 20\n"
                                 "    power_up_curve: [[1, 400], [20, 1500]]\n"
                                 "    power_down_curve: [[1, 300], [100, 900]]\n")
    link = load_links_file(path)["mine"]
    assert (link.up_power_mw(), link.down_power_mw()) == (pytest.approx(400 + 1100 * 9 / 19),
                                                          pytest.approx(300 + 600 * 49 / 99))


def test_the_energy_plot_stacks_the_terms_and_names_mode_and_extrapolation() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from dnntune.analysis.partition import analyze_profiles
    from dnntune.report.plots import energy_figure

    profiles = make_profiles(chain_graph(CHAIN_BYTES), DEVICE_MS, CLOUD_MS, DEVICE_MJ, IDLE_MW)
    analysis = analyze_profiles(*profiles, [preset_links()["lte-2021"]],
                                Objective("energy-first"),
                                CostOptions(radio="cold", idle_wait=True))
    fig = energy_figure(analysis, "lte-2021")
    ax = fig.axes[0]
    title = ax.get_title()
    assert "radio cold" in title
    assert "extrapolated: up power held at 24.85 Mbit/s, down power held at 50.08" in title
    labels = ax.get_legend_handles_labels()[1]
    assert {"compute", "upload", "download", "radio connected, waiting", "promotion + tail",
            "idle power"} <= set(labels)
    import matplotlib.pyplot as plt

    plt.close(fig)
