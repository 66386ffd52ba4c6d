"""Objectives, baselines, gains, Pareto front, JSON schema and sensitivity on hand-made
models whose best cut per objective is known."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dnntune.analysis.costs import CostOptions, cut_inputs, layer_costs, prefix_table
from dnntune.analysis.links import resolve_links, trace_link
from dnntune.analysis.partition import (
    CUT_FIELDS,
    Analysis,
    Objective,
    analysis_to_dataframe,
    analyze_profiles,
    best_indices,
    pareto_front,
)
from dnntune.analysis.sensitivity import (
    add_sensitivity,
    best_cut_for_uplinks,
    uplink_breakpoints,
    uplink_segments,
    what_if,
)
from dnntune.analysis.traces import load_trace
from dnntune.errors import ConfigError
from dnntune.profiling.profile import Profile
from tests.analyzer_fixtures import (
    chain_graph,
    constant_mahimahi,
    inception_like_profiles,
    make_profiles,
)
from tests.test_costs import CHAIN_BYTES, CLOUD_MS, DEVICE_MJ, DEVICE_MS
from tests.test_costs import LINK as RADIO_LINK

REPO = Path(__file__).resolve().parents[1]
# tests/test_costs.py's link without the connected-idle power (tail_mw 0, so no wait_mj):
# the chain's cuts cost (T ms, E mJ): 0 and 1 (1040, 1002.4), 2 (380, 452.4),
# 3 (185, 312.4), 4 = mobile-only (160, 320).
LINK = replace(RADIO_LINK, tail_mw=0.0)


def chain_profiles() -> tuple[Profile, Profile]:
    return make_profiles(chain_graph(CHAIN_BYTES), DEVICE_MS, CLOUD_MS, DEVICE_MJ)


def analyze(objective: Objective, **kwargs: Any) -> Analysis:
    return analyze_profiles(*chain_profiles(), [LINK], objective, **kwargs)


@pytest.mark.parametrize(("objective", "index"), [
    (Objective("latency-first"), 4),
    (Objective("energy-first"), 3),
    (Objective.from_options(deadline_ms=170), 4),  # min E with T <= 170: only mobile-only
    (Objective.from_options(deadline_ms=200), 3),
    (Objective.from_options(energy_budget_mj=315), 3),  # min T with E <= 315
    (Objective.from_options(energy_budget_mj=1000), 4),
    (Objective("energy-first", deadline_ms=400, energy_budget_mj=500), 3),
    (Objective("latency-first", deadline_ms=400, energy_budget_mj=315), 3),
])
def test_best_cut_per_objective_on_the_chain(objective: Objective, index: int) -> None:
    result = analyze(objective).links[0]
    assert result.best == index
    assert result.feasible
    assert result.message == ""


def test_default_primary_follows_the_constraint() -> None:
    assert Objective.from_options(deadline_ms=5).primary == "energy-first"
    assert Objective.from_options(energy_budget_mj=5).primary == "latency-first"
    assert Objective.from_options().primary == "latency-first"
    assert Objective.from_options("latency-first", deadline_ms=5).primary == "latency-first"


@pytest.mark.parametrize(("objective", "fragment"), [
    (Objective.from_options(deadline_ms=100), "the fastest cut takes 160 ms (deadline 100 ms)"),
    (Objective.from_options(energy_budget_mj=300),
     "the most frugal cut uses 312 mJ (budget 300 mJ)"),
])
def test_no_feasible_cut_is_reported(objective: Objective, fragment: str) -> None:
    analysis = analyze(objective)
    result = analysis.links[0]
    assert result.best is None
    assert not result.feasible
    assert fragment in result.message
    assert "lab" in result.message
    doc = analysis.to_dict()
    assert doc["feasible"] is False
    assert doc["links"][0]["feasible"] is False
    assert doc["links"][0]["best"] is None
    assert fragment in doc["links"][0]["message"]
    assert analysis.infeasible_message() == result.message


def test_one_infeasible_link_among_feasible_ones() -> None:
    fast = replace(LINK, name="fast", up_mbps=1000.0, down_mbps=1000.0, rtt_ms=1.0)
    analysis = analyze_profiles(*chain_profiles(), [LINK, fast],
                                Objective.from_options(deadline_ms=50))
    assert [la.feasible for la in analysis.links] == [False, True]
    assert analysis.infeasible_message() is None
    assert analysis.to_dict()["feasible"] is True


def test_bad_objectives() -> None:
    with pytest.raises(ConfigError, match="--objective"):
        Objective("fastest")
    with pytest.raises(ConfigError, match="--deadline-ms: must be a positive number"):
        Objective.from_options(deadline_ms=-1)
    with pytest.raises(ConfigError, match="--energy-budget-mj"):
        Objective.from_options(energy_budget_mj=float("nan"))


def test_baselines_and_gains() -> None:
    result = analyze(Objective("energy-first")).links[0]
    best = result.best_dict()
    assert best is not None
    assert best["energy_gain_vs_mobile_only_pct"] == pytest.approx(100 * 7.6 / 320)
    assert best["energy_gain_vs_cloud_only_pct"] == pytest.approx(100 * 690 / 1002.4)
    assert best["latency_gain_vs_mobile_only_pct"] == pytest.approx(-100 * 25 / 160)
    doc = result.to_dict()
    assert doc["mobile_only"]["index"] == 4
    assert doc["mobile_only"]["latency_ms"] == pytest.approx(160)
    assert doc["cloud_only"]["index"] == 0
    assert doc["cloud_only"]["after"] is None
    assert doc["cloud_only"]["energy_mj"] == pytest.approx(1002.4)


def test_pareto_front() -> None:
    result = analyze(Objective()).links[0]
    assert result.pareto == (4, 3)
    assert pareto_front([1, 2, 3, 3, 4], [5, 5, 1, 1, 0]).tolist() == [0, 2, 4]


def test_best_indices_vectorised_over_rows() -> None:
    t = np.array([[3.0, 1.0, 1.0], [5.0, 6.0, 7.0]])
    e = np.array([[1.0, 2.0, 1.5], [9.0, 8.0, 7.0]])
    assert best_indices(t, e, Objective()).tolist() == [2, 0]  # tie on T broken by E
    assert best_indices(t, e, Objective("energy-first")).tolist() == [0, 2]
    assert best_indices(t, e, Objective.from_options(deadline_ms=4)).tolist() == [0, -1]
    for row in range(2):
        assert best_indices(t[row], e[row], Objective()) == best_indices(t, e, Objective())[row]


def test_json_schema() -> None:
    analysis = analyze_profiles(*inception_like_profiles(), resolve_links(["3g,4g,wifi"]),
                                Objective("energy-first"), CostOptions(inference_rate_hz=1.0))
    doc = json.loads(json.dumps(analysis.to_dict(), allow_nan=False))
    assert {"model", "objective", "links"} <= set(doc)
    assert doc["model"] == analysis.model
    assert doc["objective"] == "energy-first"
    assert doc["energy_label"] == "measured:synthetic"
    assert [link["name"] for link in doc["links"]] == ["3g", "4g", "wifi"]
    n_cuts = len(analysis.inputs.after)
    for link in doc["links"]:
        assert {"name", "up_mbps", "down_mbps", "rtt_ms", "best", "mobile_only", "cloud_only",
                "dag_optimal", "cuts"} <= set(link)
        assert len(link["cuts"]) == n_cuts
        for entry in [link["best"], link["mobile_only"], link["cloud_only"],
                      link["dag_optimal"], *link["cuts"]]:
            assert set(CUT_FIELDS) <= set(entry)
            assert isinstance(entry["index"], int)
            assert isinstance(entry["bytes_up"], int)
            assert entry["after"] is None or isinstance(entry["after"], str)
            for key in CUT_FIELDS[3:]:
                assert isinstance(entry[key], float)
            assert entry["latency_ms"] == pytest.approx(entry["tm_ms"] + entry["tt_ms"]
                                                        + entry["tc_ms"])
        assert link["cuts"][-1]["tt_ms"] == 0.0
        assert link["dag_optimal"]["energy_mj"] <= link["best"]["energy_mj"] + 1e-9


def test_trace_link_reports_p50_and_p95(tmp_path: Path) -> None:
    trace = load_trace(constant_mahimahi(tmp_path / "flat.up", packets_per_ms=1,
                                         period_ms=1000))
    traced = trace_link(trace, LINK)
    constant = replace(LINK, name="const", up_mbps=12.0)
    analysis = analyze_profiles(*chain_profiles(), [traced, constant], Objective())
    rows = [la.to_dict()["cuts"] for la in analysis.links]
    for from_trace, steady in zip(*rows, strict=True):
        # whole 1500-byte packets: at most one more ms than the fluid 12 Mbit/s link
        assert 0 <= from_trace["latency_ms"] - steady["latency_ms"] <= 1.0
        assert from_trace["latency_p95_ms"] >= from_trace["latency_ms"]
    doc = analysis.to_dict()["links"][0]
    assert doc["link"]["trace"]["mean_mbps"] == pytest.approx(12.0)
    assert "uplink trace" in doc["link"]["source"]


def test_dataframe_for_notebooks() -> None:
    analysis = analyze(Objective())
    frame = analysis_to_dataframe(analysis)
    assert len(frame) == 5
    assert frame.loc[frame["best"], "index"].tolist() == [4]
    assert set(CUT_FIELDS) <= set(frame.columns)


def test_uplink_breakpoints_match_the_closed_form() -> None:
    """With RTT 10 ms, latency on b Mbit/s: cut 0 = 30 + 8000/b, cut 2 = 120 + 2000/b,
    cut 3 = 165 + 80/b, mobile-only = 160: cut 2 wins from 50, cut 0 from 66.67."""
    link = replace(LINK, rtt_ms=10.0)
    graph = chain_graph(CHAIN_BYTES)
    inputs = cut_inputs(graph, layer_costs(*chain_profiles()))
    segments = uplink_segments(inputs, link, Objective(), CostOptions())
    assert [s.index for s in segments] == [4, 2, 0]
    assert uplink_breakpoints(segments) == pytest.approx([50.0, 200 / 3], rel=1e-6)
    assert segments[0].from_mbps == 0.05
    assert segments[-1].to_mbps == 1000.0
    rates = np.array([10.0, 55.0, 70.0, 900.0])
    expected = []
    for rate in rates:
        table = prefix_table(inputs, replace(link, up_mbps=float(rate)), CostOptions())
        expected.append(int(best_indices(table.latency_ms, table.energy_mj, Objective())))
    assert best_cut_for_uplinks(inputs, link, Objective(), CostOptions(), rates).tolist() \
        == expected == [4, 2, 0, 0]


def test_what_if_compute_scaling() -> None:
    inputs = cut_inputs(chain_graph(CHAIN_BYTES), layer_costs(*chain_profiles()))
    rows = what_if(inputs, [LINK], Objective(), CostOptions(), [(1.0, 1.0), (0.1, 1.0)])
    assert [(r["device_speedup"], r["index"]) for r in rows] == [(1.0, 4), (0.1, 0)]
    assert rows[1]["latency_ms"] == pytest.approx(1040)
    analysis = add_sensitivity(analyze(Objective()))
    info = analysis.to_dict()["links"][0]["sensitivity"]
    assert {"uplink_segments", "uplink_breakpoints_mbps", "what_if"} <= set(info)
    slow_device = analyze(Objective(), device_speedup=0.1)
    assert slow_device.links[0].best == 0
    assert slow_device.to_dict()["what_if"] == {"device_speedup": 0.1, "cloud_speedup": 1.0}


def test_analyzer_imports_no_tensorflow_keras_or_grpc() -> None:
    code = ("import sys\n"
            "import dnntune.analysis.partition, dnntune.cli.analyze, dnntune.analysis.costs\n"
            "import dnntune.analysis.dagcut\n"
            "import dnntune.analysis.links, dnntune.analysis.sensitivity, dnntune.analysis.traces\n"
            "heavy = sorted(m for m in sys.modules\n"
            "               if m.split('.')[0] in ('tensorflow', 'keras', 'grpc'))\n"
            "print(heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
