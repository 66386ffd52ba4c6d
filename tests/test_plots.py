"""Plots: every kind writes a PNG of the documented size, and marks the best cut."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from dnntune.analysis.links import preset_links, trace_link
from dnntune.analysis.partition import Analysis, Objective, analyze_profiles
from dnntune.analysis.traces import load_trace
from dnntune.errors import DnntuneError
from dnntune.report.plots import (
    DPI,
    FIGSIZE_IN,
    PLOT_KINDS,
    energy_figure,
    latency_figure,
    pareto_figure,
    plot_analysis,
    plot_energy,
    plot_filename,
    plot_latency,
    plot_pareto,
    plot_uplink,
    uplink_figure,
)
from tests.analyzer_fixtures import (
    chain_graph,
    constant_mahimahi,
    inception_like_profiles,
    make_profiles,
)

EXPECTED_PX = (round(FIGSIZE_IN[0] * DPI), round(FIGSIZE_IN[1] * DPI))
BEST = 3  # after l2, whose output is tiny: see chain_analysis


def chain_analysis(objective: Objective | None = None) -> Analysis:
    """A chain whose best latency cut on 4G is known: after ``l2`` (cut 3), which sends
    1 kB instead of the 1 MB input and skips the phone's two slow layers."""
    graph = chain_graph([1_000_000, 500_000, 1_000, 500_000, 4_000])
    device, cloud = make_profiles(graph, [0.0, 1.0, 1.0, 50.0, 50.0],
                                  [0.0, 0.1, 0.1, 0.5, 0.5],
                                  [0.0, 2.0, 2.0, 100.0, 100.0], idle_power_mw=100.0)
    return analyze_profiles(device, cloud, [preset_links()["4g"]], objective or Objective())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def gid_artists(fig, gid: str) -> list:
    return [a for a in fig.findobj() if a.get_gid() == gid]


def test_the_chain_has_the_expected_best_cut() -> None:
    assert chain_analysis().links[0].best == BEST


@pytest.mark.parametrize("plot", [plot_latency, plot_energy, plot_pareto, plot_uplink])
def test_each_plot_writes_a_png_of_the_documented_size(plot, tmp_path: Path) -> None:
    path = plot(chain_analysis(), "4g", tmp_path / "sub" / "p.png")
    assert path == tmp_path / "sub" / "p.png"
    assert path.stat().st_size > 10_000
    assert png_size(path) == EXPECTED_PX


@pytest.mark.parametrize("figure", [latency_figure, energy_figure])
def test_per_cut_plots_mark_the_best_cut_and_baselines(figure) -> None:
    fig = figure(chain_analysis(), "4g")
    markers = [a for a in gid_artists(fig, "best-cut") if hasattr(a, "get_xdata")]
    assert [list(m.get_xdata()) for m in markers] == [[BEST]]
    span = next(a for a in gid_artists(fig, "best-cut") if hasattr(a, "get_x"))
    assert span.get_x() < BEST < span.get_x() + span.get_width()
    assert gid_artists(fig, "mobile-only") and gid_artists(fig, "cloud-only")
    ax = fig.axes[0]
    labels = {int(t): label.get_text() for t, label in zip(ax.get_xticks(),
                                                            ax.get_xticklabels(), strict=True)}
    assert labels[0] == "cloud-only" and labels[5] == "mobile-only" and labels[BEST] == "l2"
    assert "cut 3, l2" in gid_artists(fig, "best-cut-text")[0].get_text()
    assert ax.get_ylabel().endswith(("ms", "ms (log scale)", "mJ", "mJ (log scale)"))
    assert "chain" in ax.get_title() and "4g" in ax.get_title()


def test_pareto_plot_marks_the_best_cut_at_its_t_and_e() -> None:
    analysis = chain_analysis()
    la = analysis.links[0]
    fig = pareto_figure(analysis, "4g")
    (star,) = gid_artists(fig, "best-cut")
    np.testing.assert_allclose(star.get_offsets()[0],
                               [la.table.latency_ms[BEST], la.table.energy_mj[BEST]])
    front = gid_artists(fig, "pareto-front")[0]
    assert len(front.get_xdata()) == len(la.pareto)
    assert fig.axes[0].get_xlabel().startswith("end-to-end latency T, ms")


def test_uplink_plot_shows_the_best_cut_at_the_links_bandwidth() -> None:
    analysis = chain_analysis()
    fig = uplink_figure(analysis, "4g")
    (step,) = gid_artists(fig, "best-cut")
    xs, ys = np.asarray(step.get_xdata()), np.asarray(step.get_ydata())
    at_link = ys[np.searchsorted(xs, 5.85) - 1]
    assert at_link == BEST
    assert ys[0] == 5  # at 0.05 Mbit/s nothing is worth sending: mobile-only
    assert fig.axes[1].get_xscale() == "log"


def test_zero_energy_keeps_linear_axes_so_nothing_vanishes() -> None:
    graph = chain_graph([1_000_000, 500_000, 1_000, 500_000, 4_000])
    device, cloud = make_profiles(graph, [0, 1, 1, 50, 50], [0, 0.1, 0.1, 0.5, 0.5])
    analysis = analyze_profiles(device, cloud, [preset_links()["4g"]])  # no device energy
    assert analysis.links[0].table.energy_mj[-1] == 0
    fig = pareto_figure(analysis, "4g")
    assert fig.axes[0].get_yscale() == "linear"
    (mobile,) = gid_artists(fig, "mobile-only")
    assert mobile.get_offsets()[0][1] == 0


def test_a_big_dag_keeps_the_cut_labels_readable() -> None:
    device, cloud = inception_like_profiles()
    analysis = analyze_profiles(device, cloud, [preset_links()["wifi"]], dag=False)
    fig = latency_figure(analysis, "wifi")
    ax = fig.axes[0]
    assert len(ax.get_xticks()) <= 32  # a subset of the 314 cuts, besides marked ones
    assert all(len(label.get_text()) <= 28 for label in ax.get_xticklabels())


def test_no_feasible_cut_is_said_and_nothing_is_marked(tmp_path: Path) -> None:
    analysis = chain_analysis(Objective("energy-first", deadline_ms=0.001))
    fig = latency_figure(analysis, "4g")
    assert "no feasible cut" in gid_artists(fig, "best-cut-text")[0].get_text()
    assert not [a for a in gid_artists(fig, "best-cut") if hasattr(a, "get_xdata")]
    paths = plot_analysis(analysis, tmp_path)
    assert len(paths) == len(PLOT_KINDS) and all(p.stat().st_size > 0 for p in paths)


def test_plot_analysis_names_files_by_link_and_kind(tmp_path: Path) -> None:
    trace = load_trace(constant_mahimahi(tmp_path / "my trace.up", 1, 100))
    graph = chain_graph([1_000_000, 500_000, 1_000, 500_000, 4_000])
    device, cloud = make_profiles(graph, [0, 1, 1, 50, 50], [0, 0.1, 0.1, 0.5, 0.5])
    link = trace_link(trace, preset_links()["4g"], name="lte trace/1")
    analysis = analyze_profiles(device, cloud, [link], Objective("energy-first"))
    paths = plot_analysis(analysis, tmp_path / "plots", kinds=("latency", "pareto"))
    assert [p.name for p in paths] == ["lte_trace_1-latency.png", "lte_trace_1-pareto.png"]
    labels = latency_figure(analysis, link.name).axes[0].get_legend_handles_labels()[1]
    assert any("p95 over trace start times" in text for text in labels)
    assert plot_filename("wifi", "uplink") == "wifi-uplink.png"


def test_bad_link_and_kind_are_named() -> None:
    analysis = chain_analysis()
    with pytest.raises(DnntuneError, match="no link '5g'.*4g"):
        latency_figure(analysis, "5g")
    with pytest.raises(DnntuneError, match="unknown plot kind 'pie'"):
        plot_analysis(analysis, "unused", kinds=("pie",))
