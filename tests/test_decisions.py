"""The device study's table and uplink sweep, on the hand-made chain whose costs per cut
are known (see tests/test_analysis.py and tests/test_costs.py)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest

from dnntune.analysis.partition import Analysis, Objective, analyze_profiles
from dnntune.report.decisions import (
    MARKDOWN_HEADER,
    decisions,
    decisions_frame,
    decisions_markdown,
    uplink_sweep,
    uplink_sweep_figure,
)
from tests.test_analysis import LINK, chain_profiles

# On LINK (tests/test_analysis.py: no connected-idle power) the chain's cuts cost
# (T ms, E mJ): 0 and 1 (1040, 1002.4), 2 (380, 452.4),
# 3 (185, 312.4), 4 = mobile-only (160, 320). Layers: in, l1, l2, l3.
FAST_LINK = replace(LINK, name="fast", rtt_ms=10.0)  # latency-first: 4 < 50 Mbit/s, 2, 0 > 66.7


def analyze(objective: str, **kwargs: float) -> Analysis:
    return analyze_profiles(*chain_profiles(), [LINK], Objective(objective), **kwargs)


def test_latency_first_keeps_the_chain_on_the_phone() -> None:
    (row,) = decisions(analyze("latency-first"), device="emulated:slow")
    assert (row.device, row.model, row.link, row.objective) == \
        ("emulated:slow", "chain", "lab", "latency-first")
    assert (row.index, row.cut, row.placement, row.layers) == (4, "mobile-only", "mobile-only", 4)
    assert row.latency_ms == pytest.approx(160)
    assert row.gain_vs_mobile_only_pct == pytest.approx(0.0)
    assert row.gain_vs_cloud_only_pct == pytest.approx(100 * (1040 - 160) / 1040)
    assert (row.cloud_only_latency_ms, row.mobile_only_energy_mj) == \
        pytest.approx((1040, 320))


def test_energy_first_splits_and_gains_are_in_energy() -> None:
    (row,) = decisions(analyze("energy-first"), device="d")
    assert (row.index, row.cut, row.placement) == (3, "l2", "split")
    assert (row.latency_ms, row.energy_mj) == pytest.approx((185, 312.4))
    assert row.gain_vs_mobile_only_pct == pytest.approx(100 * (320 - 312.4) / 320)
    assert row.gain_vs_cloud_only_pct == pytest.approx(100 * (1002.4 - 312.4) / 1002.4)


def test_a_slow_phone_sends_the_input_and_that_is_cloud_only() -> None:
    (row,) = decisions(analyze("latency-first", device_speedup=0.1), device="d")
    assert (row.index, row.cut, row.placement) == (0, "cloud-only", "cloud-only")
    assert row.gain_vs_cloud_only_pct == pytest.approx(0.0)
    assert row.gain_vs_mobile_only_pct == pytest.approx(100 * (1600 - 1040) / 1600)


def test_a_cut_after_the_input_layer_alone_is_cloud_only() -> None:
    from dnntune.report.decisions import cut_label, placement

    la = analyze("latency-first").links[0]
    assert (cut_label(la, 1), placement(la, 1)) == ("in", "cloud-only")
    assert (cut_label(la, 2), placement(la, 2)) == ("l1", "split")
    assert placement(la, None) == "none"


def test_no_feasible_cut() -> None:
    analysis = analyze_profiles(*chain_profiles(), [LINK],
                                Objective("latency-first", deadline_ms=1.0))
    (row,) = decisions(analysis, device="d")
    assert (row.index, row.cut, row.placement, row.latency_ms) == (None, None, "none", None)
    assert row.gain_vs_mobile_only_pct is None
    text = decisions_markdown([row])
    assert "| none feasible | – | – | – | – | – |" in text


def test_markdown_and_frame_lay_out_every_decision() -> None:
    rows = [*decisions(analyze("latency-first"), "b-phone"),
            *decisions(analyze("energy-first"), "a-phone")]
    lines = decisions_markdown(rows).splitlines()
    assert lines[0] == "| " + " | ".join(MARKDOWN_HEADER) + " |"
    assert len(lines) == 2 + len(rows)
    assert lines[2] == "| chain | lab | a-phone | energy-first | l2 | 3 / 4 | 185 | 312 | " \
                       "+2.4% | +68.8% |"
    assert lines[3].startswith("| chain | lab | b-phone | latency-first | mobile-only | 4 / 4 |")
    frame = decisions_frame(rows)
    assert frame["cut"].tolist() == ["mobile-only", "l2"]
    assert {"gain_vs_mobile_only_pct", "placement", "device"} <= set(frame.columns)


def sweep_analyses() -> dict[str, Analysis]:
    profiles = chain_profiles()
    return {"fast phone": analyze_profiles(*profiles, [FAST_LINK]),
            "slow phone": analyze_profiles(*profiles, [FAST_LINK], device_speedup=0.1)}


def test_uplink_sweep_finds_the_closed_form_breakpoints() -> None:
    rates = np.array([10.0, 49.0, 51.0, 66.0, 67.0, 900.0])
    sweeps = uplink_sweep(sweep_analyses(), rates, ["latency-first"])
    fast, slow = sweeps
    assert (fast.device, fast.link, fast.objective, fast.layers) == \
        ("fast phone", "fast", "latency-first", 4)
    assert fast.index.tolist() == [4, 4, 2, 2, 0, 0]
    assert fast.changes() == [(51.0, "l1"), (67.0, "cloud-only")]
    assert fast.labels == {0: "cloud-only", 2: "l1", 4: "mobile-only"}
    # 10x slower: mobile-only takes 1600 ms, more than sending the input at 10 Mbit/s
    assert slow.index.tolist() == [0] * len(rates) and slow.changes() == []


def test_uplink_sweep_per_objective_ignores_the_analysis_objective() -> None:
    sweeps = uplink_sweep({"p": analyze_profiles(*chain_profiles(), [LINK])}, [8.0],
                          ["latency-first", "energy-first"])
    assert [(s.objective, s.index.tolist()) for s in sweeps] == \
        [("latency-first", [4]), ("energy-first", [3])]


def test_uplink_sweep_figure_has_a_panel_per_objective_and_link_and_a_line_per_device() -> None:
    analyses = sweep_analyses()
    analyses = {k: replace(a, links=a.links + analyze_profiles(*chain_profiles(), [LINK]).links)
                for k, a in analyses.items()}
    sweeps = uplink_sweep(analyses, np.geomspace(1, 1000, 50))
    fig = uplink_sweep_figure(sweeps, title="chain")
    assert len(fig.axes) == 2 * 2
    for ax in fig.axes:
        assert sorted(line.get_gid() for line in ax.get_lines() if line.get_gid()) == \
            ["sweep-fast phone", "sweep-slow phone"]
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "0: cloud-only" in labels and "4: mobile-only" in labels
    png = io.BytesIO()
    fig.savefig(png, format="png")
    assert png.getvalue().startswith(b"\x89PNG")
