"""PNG plots of an analysis, per link: latency and energy per cut, the (T, E) Pareto
front, and the best cut against the uplink bandwidth.

Figures are built on :class:`matplotlib.figure.Figure` directly, without pyplot: no
global state, no backend to choose, safe in servers and threads. Every ``*_figure``
function returns the figure (for a notebook, or to inspect); every ``plot_*`` function
writes a PNG of :data:`FIGSIZE_IN` at :data:`DPI` and returns its path. The best cut's
artists carry ``gid="best-cut"`` (baselines ``"mobile-only"``, ``"cloud-only"``) so
tests and tools can find them.

Example:
    >>> # from dnntune.report.plots import plot_analysis
    >>> # paths = plot_analysis(analysis, "dnntune-runs/mobilenet_v2/plots")
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from dnntune.analysis.costs import prefix_table
from dnntune.analysis.partition import Analysis, LinkAnalysis
from dnntune.analysis.sensitivity import (
    DEFAULT_RANGE_MBPS,
    UplinkSegment,
    best_cut_for_uplinks,
    uplink_segments,
)
from dnntune.errors import DnntuneError
from dnntune.report.tables import sig3

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGSIZE_IN = (13.0, 6.5)
DPI = 100
PLOT_KINDS = ("latency", "energy", "pareto", "uplink")
LOG_RANGE = 30.0  # a log axis once the largest value exceeds the smallest this many times
PARETO_LOG_RANGE = 10.0  # the front hugs the origin: spread it sooner
MAX_CUT_LABELS = 28  # layer names on the x axis of the per-cut plots, besides marked cuts
ENERGY_PARTS = (("em_mj", "compute", "#4C72B0"), ("call_mj", "call", "#64B5CD"),
                ("up_mj", "upload", "#DD8452"), ("down_mj", "download", "#F2B880"),
                ("wait_mj", "radio connected, waiting", "#CCB974"),
                ("tail_mj", "promotion + tail", "#C44E52"), ("idle_mj", "idle power", "#8C8C8C"))
COLORS = {"tm": "#4C72B0", "tt": "#DD8452", "tc": "#55A868", "em": "#4C72B0",
          "et": "#DD8452", "idle": "#8C8C8C", "best": "#C44E52", "mobile": "#222222",
          "cloud": "#8172B3", "dag": "#937860", "front": "#DD8452"}
FloatArray = npt.NDArray[np.float64]


def plot_filename(link_name: str, kind: str) -> str:
    """File name of one plot: ``<link>-<kind>.png`` with unsafe characters replaced."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', link_name)}-{kind}.png"


def find_link(analysis: Analysis, link: str | LinkAnalysis) -> LinkAnalysis:
    """The :class:`LinkAnalysis` named ``link`` (or ``link`` itself)."""
    if isinstance(link, LinkAnalysis):
        return link
    for la in analysis.links:
        if la.link.name == link:
            return la
    known = ", ".join(la.link.name for la in analysis.links)
    raise DnntuneError(f"no link {link!r} in the analysis (links: {known})")


def cut_name(la: LinkAnalysis, index: int, width: int = 28) -> str:
    """``cloud-only``, ``mobile-only`` or the last device layer (shortened to ``width``)."""
    last = len(la.inputs.after) - 1
    if index == 0:
        return "cloud-only"
    if index == last:
        return "mobile-only"
    name = str(la.inputs.after[index])
    return name if len(name) <= width else name[:width - 1] + "…"


def _new_figure(rows: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, list(axes)


def _needs_log(values: npt.ArrayLike, limit: float = LOG_RANGE) -> bool:
    """Whether the values span more than ``limit`` times; never with a zero (it would
    vanish from a log axis, e.g. the energy of mobile-only without a device meter)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2 or float(v.min()) <= 0:
        return False
    return float(v.max() / v.min()) > limit


def _link_title(analysis: Analysis, la: LinkAnalysis, what: str) -> str:
    link = la.link
    what_if = {k: v for k, v in analysis.what_if.items() if v != 1.0}
    scaled = "".join(f", {k.replace('_', ' ')} ×{v:g}" for k, v in what_if.items())
    up = "uplink trace, mean " if link.trace is not None else "up "
    device = "" if analysis.device_label == "measured" else f" [{analysis.device_label}]"
    return (f"{analysis.model}{device}: {what} on {link.name} ({up}{sig3(link.up_mbps)} / down "
            f"{sig3(link.down_mbps)} Mbit/s, RTT {sig3(link.rtt_ms)} ms{scaled})")


def _best_text(analysis: Analysis, la: LinkAnalysis) -> str:
    if la.best is None:
        return f"no feasible cut: {la.message}"
    t, e = la.table.latency_ms[la.best], la.table.energy_mj[la.best]
    return (f"best for {analysis.objective.describe()}: cut {la.best}, "
            f"{cut_name(la, la.best, 40)}\nT = {sig3(t)} ms, E = {sig3(e)} mJ")


def _cut_ticks(ax: Axes, la: LinkAnalysis) -> None:
    """Label a readable subset of cuts with layer names, always the marked ones."""
    last = len(la.inputs.after) - 1
    marked = {0: COLORS["cloud"], last: COLORS["mobile"]}
    if la.best is not None:
        marked[la.best] = COLORS["best"]
    gap = max(1, last // (MAX_CUT_LABELS + 1))
    ticks = set(marked)
    for i in np.linspace(0, last, min(MAX_CUT_LABELS, last + 1) + 2).round().astype(int):
        if all(abs(int(i) - j) >= gap for j in marked):
            ticks.add(int(i))
    ordered = sorted(ticks)
    ax.set_xticks(ordered, [cut_name(la, i) for i in ordered], rotation=60, ha="right",
                  rotation_mode="anchor", fontsize=7)
    for tick, i in zip(ax.get_xticklabels(), ordered, strict=True):
        if i in marked:
            tick.set_color(marked[i])
            tick.set_fontweight("bold")
    ax.set_xlim(-1.5, last + 1.5)
    ax.set_xlabel(f"cut point: last layer on the device ({last + 1} cuts; "
                  f"cut 0 = cloud-only, cut {last} = mobile-only)")


def _stacked_cuts(ax: Axes, la: LinkAnalysis,
                  parts: Sequence[tuple[str, FloatArray, str]]) -> FloatArray:
    """Stacked bars per cut; returns the totals."""
    x = np.arange(len(la.inputs.after))
    bottom = np.zeros(len(x))
    for label, values, color in parts:
        ax.bar(x, values, bottom=bottom, width=0.9 if len(x) <= 60 else 1.0, color=color,
               label=label, linewidth=0)
        bottom = bottom + values
    if _needs_log(bottom):
        ax.set_yscale("log")
        positive = bottom[bottom > 0]
        ax.set_ylim(float(positive.min()) / 3.0, float(positive.max()) * 4.0)
    else:
        ax.set_ylim(0, float(bottom.max()) * 1.15 or 1.0)
    return bottom


def _mark_cuts(ax: Axes, analysis: Analysis, la: LinkAnalysis, total: FloatArray,
               unit: str) -> None:
    last = len(total) - 1
    for gid, i in (("cloud-only", 0), ("mobile-only", last)):
        color = COLORS["cloud" if i == 0 else "mobile"]
        ax.axhline(total[i], color=color, linestyle=":", linewidth=1, gid=gid,
                   label=f"{gid}: {sig3(total[i])} {unit}")
    if la.best is not None:
        b = la.best
        ax.axvspan(b - 0.6, b + 0.6, color=COLORS["best"], alpha=0.18, linewidth=0,
                   gid="best-cut")
        top = total[b] * 1.6 if ax.get_yscale() == "log" else total[b] + 0.04 * ax.get_ylim()[1]
        ax.plot([b], [top], marker="v", markersize=11, color=COLORS["best"], linestyle="none",
                gid="best-cut", label=f"best cut ({analysis.objective.primary})")
    ax.text(0.99, 0.97, _best_text(analysis, la), transform=ax.transAxes, ha="right",
            va="top", fontsize=9, gid="best-cut-text",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9,
                  "edgecolor": COLORS["best"]})


def latency_figure(analysis: Analysis, link: str | LinkAnalysis) -> Figure:
    """Latency per cut, stacked Tm (device) / Tt (transfer) / Tc (cloud), best marked."""
    la = find_link(analysis, link)
    table = la.table
    fig, (ax,) = _new_figure()
    total = _stacked_cuts(ax, la, [
        ("Tm: device compute", table.tm_ms, COLORS["tm"]),
        ("Tt: transfer (RTT + up + down)", table.tt_ms, COLORS["tt"]),
        ("Tc: cloud compute", table.tc_ms, COLORS["tc"])])
    _mark_cuts(ax, analysis, la, total, "ms")
    if table.latency_p95_ms is not None:  # a trace link: bars are medians over start times
        ax.plot(np.arange(len(total)), table.latency_p95_ms, linestyle="none", marker="_",
                color="black", markersize=5, label="T p95 over trace start times (bars: p50)")
        ax.set_ylim(top=max(ax.get_ylim()[1], float(np.max(table.latency_p95_ms)) * 1.3))
    deadline = analysis.objective.deadline_ms
    if deadline is not None:
        ax.axhline(deadline, color=COLORS["best"], linestyle="--", linewidth=1,
                   label=f"deadline {deadline:g} ms")
    log = " (log scale)" if ax.get_yscale() == "log" else ""
    ax.set_ylabel(f"end-to-end latency T = Tm + Tt + Tc, ms{log}")
    ax.set_title(_link_title(analysis, la, "latency per cut"), fontsize=11)
    _cut_ticks(ax, la)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3, which="both")
    return fig


def energy_figure(analysis: Analysis, link: str | LinkAnalysis) -> Figure:
    """Phone energy per cut, stacked by term (compute, call, transfers, radio connected
    while waiting, promotion/tail, idle), best marked; the title names the radio mode."""
    la = find_link(analysis, link)
    table = la.table
    parts = [(label, np.asarray(getattr(table, key), dtype=np.float64), color)
             for key, label, color in ENERGY_PARTS if np.any(getattr(table, key))]
    fig, (ax,) = _new_figure()
    total = _stacked_cuts(ax, la, parts)
    _mark_cuts(ax, analysis, la, total, "mJ")
    budget = analysis.objective.energy_budget_mj
    if budget is not None:
        ax.axhline(budget, color=COLORS["best"], linestyle="--", linewidth=1,
                   label=f"energy budget {budget:g} mJ")
    log = " (log scale)" if ax.get_yscale() == "log" else ""
    ax.set_ylabel(f"phone energy per inference E, mJ{log}")
    held = [f"{d} power held at {getattr(la.link, f'fit_{d}_max_mbps'):g} Mbit/s"
            if getattr(la.link, f"{d}_mbps") > getattr(la.link, f"fit_{d}_max_mbps")
            else f"{d} power held at {getattr(la.link, f'fit_{d}_min_mbps'):g} Mbit/s"
            for d in ("up", "down") if getattr(la.link, f"{d}_extrapolation")()]
    borrowed = "; radio power fit borrowed" if la.link.power_borrowed else ""
    ax.set_title(_link_title(analysis, la, "phone energy per cut") +
                 f"\ndevice energy: {analysis.energy_label}; radio {analysis.options.radio}"
                 + ("; extrapolated: " + ", ".join(held) if held else "") + borrowed,
                 fontsize=11)
    _cut_ticks(ax, la)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3, which="both")
    return fig


def pareto_figure(analysis: Analysis, link: str | LinkAnalysis) -> Figure:
    """Every cut in the (T, E) plane, the Pareto front, the best cut and the baselines."""
    la = find_link(analysis, link)
    t, e = la.table.latency_ms, la.table.energy_mj
    last = len(t) - 1
    fig, (ax,) = _new_figure()
    ax.scatter(t, e, s=12, color="#B0B0B0", label=f"all {last + 1} cuts", zorder=2)
    front = np.asarray(la.pareto, dtype=np.int64)
    ax.plot(t[front], e[front], marker="o", color=COLORS["front"], zorder=3,
            label=f"Pareto front ({len(front)} cuts)", gid="pareto-front")
    if len(front) <= 8:
        for k, i in enumerate(front):  # alternate sides so neighbours do not overlap
            ax.annotate(cut_name(la, int(i)), (t[i], e[i]), fontsize=8,
                        xytext=(8, 8) if k % 2 == 0 else (8, -14), textcoords="offset points")
    for gid, i, marker in (("cloud-only", 0, "^"), ("mobile-only", last, "s")):
        ax.scatter([t[i]], [e[i]], s=80, marker=marker, zorder=4, gid=gid,
                   color=COLORS["cloud" if i == 0 else "mobile"],
                   label=f"{gid}: T {sig3(t[i])} ms, E {sig3(e[i])} mJ")
    dag = la.dag.get(analysis.objective.metric)
    if dag is not None:
        dt, de = float(dag.table.latency_ms[0]), float(dag.table.energy_mj[0])
        ax.scatter([dt], [de], s=70, marker="D", facecolors="none", zorder=5,
                   edgecolors=COLORS["dag"], label=f"DAG optimum ({dag.metric}): "
                   f"T {sig3(dt)} ms, E {sig3(de)} mJ")
    if la.best is not None:
        b = la.best
        ax.scatter([t[b]], [e[b]], s=260, marker="*", color=COLORS["best"], zorder=6,
                   gid="best-cut", label=f"best ({analysis.objective.primary}): "
                   f"{cut_name(la, b)}, T {sig3(t[b])} ms, E {sig3(e[b])} mJ")
    for values, setter in ((t, ax.set_xscale), (e, ax.set_yscale)):
        if _needs_log(values, PARETO_LOG_RANGE):
            setter("log")
    xlog = " (log scale)" if ax.get_xscale() == "log" else ""
    ylog = " (log scale)" if ax.get_yscale() == "log" else ""
    ax.set_xlabel(f"end-to-end latency T, ms{xlog}")
    ax.set_ylabel(f"phone energy E, mJ{ylog}")
    ax.set_title(_link_title(analysis, la, "latency vs phone energy of every cut") +
                 f"\ndevice energy: {analysis.energy_label}", fontsize=11)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def uplink_figure(analysis: Analysis, link: str | LinkAnalysis,
                  range_mbps: tuple[float, float] = DEFAULT_RANGE_MBPS,
                  points: int = 400) -> Figure:
    """Best cut against a constant uplink bandwidth (log x), and its cost vs baselines.

    The link's downlink, RTT and radio power stay; dotted lines are the exact
    bandwidths at which the best cut changes
    (:func:`~dnntune.analysis.sensitivity.uplink_segments`).
    """
    la = find_link(analysis, link)
    objective, options, inputs = analysis.objective, analysis.options, analysis.inputs
    xs = np.geomspace(range_mbps[0], range_mbps[1], points)
    best = best_cut_for_uplinks(inputs, la.link, objective, options, xs)
    segments = uplink_segments(inputs, la.link, objective, options, range_mbps)
    fig, (top, bottom) = _new_figure(rows=2)
    _uplink_cut_panel(top, analysis, la, xs, best, segments)
    _uplink_cost_panel(bottom, analysis, la, xs, best)
    for ax in (top, bottom):
        for s in segments[1:]:
            ax.axvline(s.from_mbps, color="#999999", linestyle=":", linewidth=1)
        ax.axvline(la.link.up_mbps, color=COLORS["tt"], linewidth=1.5,
                   label=f"{la.link.name} uplink: {sig3(la.link.up_mbps)} Mbit/s")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=8)
    top.set_title(_link_title(analysis, la, "best cut against uplink bandwidth") +
                  f"\n{len(segments) - 1} change(s) of the best cut between "
                  f"{range_mbps[0]:g} and {range_mbps[1]:g} Mbit/s (dotted)", fontsize=11)
    return fig


def _uplink_cut_panel(ax: Axes, analysis: Analysis, la: LinkAnalysis, xs: FloatArray,
                      best: npt.NDArray[np.int64], segments: Sequence[UplinkSegment]) -> None:
    """The best cut's index as a step function, its layer names on the y axis."""
    cut_y = np.where(best >= 0, best, np.nan).astype(np.float64)
    ax.step(xs, cut_y, where="post", color=COLORS["best"], linewidth=2, gid="best-cut",
            label=f"best cut ({analysis.objective.primary})")
    last = len(la.inputs.after) - 1
    shown: list[int] = []
    for i in sorted({s.index for s in segments if s.index >= 0}, reverse=True):
        if not shown or shown[-1] - i >= last / 25:  # labels ~1/25 of the axis apart
            shown.append(i)
    ax.set_yticks(shown, [f"{i}: {cut_name(la, i)}" for i in shown], fontsize=8)
    ax.set_ylim(-0.05 * last - 1, last * 1.05 + 1)
    labelled = 0.0
    for s in segments[1:]:
        if s.from_mbps < labelled * 1.25:  # too close to the previous label to read
            continue
        labelled = s.from_mbps
        ax.annotate(sig3(s.from_mbps), (s.from_mbps, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -10), textcoords="offset points", fontsize=7, color="#555555")
    ax.set_ylabel("best cut (index: last device layer)")


def _uplink_cost_panel(ax: Axes, analysis: Analysis, la: LinkAnalysis, xs: FloatArray,
                       best: npt.NDArray[np.int64]) -> None:
    """The objective's metric of the best cut and of both baselines."""
    table = prefix_table(analysis.inputs, la.link, analysis.options, up_mbps=xs[:, np.newaxis])
    metric_name = analysis.objective.metric
    metric = table.latency_ms if metric_name == "latency" else table.energy_mj
    last = metric.shape[1] - 1
    best_cost = np.where(best >= 0, metric[np.arange(len(xs)), np.clip(best, 0, None)], np.nan)
    ax.plot(xs, best_cost, color=COLORS["best"], linewidth=2, label="best cut")
    ax.plot(xs, metric[:, last], color=COLORS["mobile"], linestyle="--", label="mobile-only")
    ax.plot(xs, metric[:, 0], color=COLORS["cloud"], linestyle="--", label="cloud-only")
    if _needs_log(metric[:, [0, last]]):
        ax.set_yscale("log")
    log = " (log scale)" if ax.get_yscale() == "log" else ""
    unit = "ms" if metric_name == "latency" else "mJ"
    ax.set_ylabel(f"{metric_name} of the cut, {unit}{log}")
    ax.set_xscale("log")
    ax.set_xlabel("uplink bandwidth, Mbit/s (log scale; downlink, RTT and radio power "
                  f"of {la.link.name})")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (size :data:`FIGSIZE_IN` x :data:`DPI`); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def plot_latency(analysis: Analysis, link: str | LinkAnalysis, path: str | Path) -> Path:
    """Write :func:`latency_figure` to ``path``."""
    return save_figure(latency_figure(analysis, link), path)


def plot_energy(analysis: Analysis, link: str | LinkAnalysis, path: str | Path) -> Path:
    """Write :func:`energy_figure` to ``path``."""
    return save_figure(energy_figure(analysis, link), path)


def plot_pareto(analysis: Analysis, link: str | LinkAnalysis, path: str | Path) -> Path:
    """Write :func:`pareto_figure` to ``path``."""
    return save_figure(pareto_figure(analysis, link), path)


def plot_uplink(analysis: Analysis, link: str | LinkAnalysis, path: str | Path) -> Path:
    """Write :func:`uplink_figure` to ``path``."""
    return save_figure(uplink_figure(analysis, link), path)


PLOTTERS = {"latency": plot_latency, "energy": plot_energy, "pareto": plot_pareto,
            "uplink": plot_uplink}


def plot_analysis(analysis: Analysis, out_dir: str | Path,
                  kinds: Sequence[str] = PLOT_KINDS) -> list[Path]:
    """Every plot of ``kinds`` for every link into ``out_dir``; returns the paths.

    Example:
        >>> # plot_analysis(analysis, "plots")  # plots/4g-latency.png, ...
    """
    unknown = [k for k in kinds if k not in PLOTTERS]
    if unknown:
        raise DnntuneError(f"unknown plot kind {unknown[0]!r}; expected one of "
                           f"{', '.join(PLOT_KINDS)}")
    out = Path(out_dir)
    return [PLOTTERS[kind](analysis, la if kind == "uplink" else per_cut(la),
                           out / plot_filename(la.link.name, kind))
            for la in analysis.links for kind in kinds]


def per_cut(la: LinkAnalysis) -> LinkAnalysis:
    """With wire encodings, one row per cut: the encoding best for the objective's
    metric there (the best row's own at its cut), so a bar stands for a cut."""
    import dataclasses

    from dnntune.analysis.costs import CostTable

    inputs = la.inputs
    if inputs.cut_index is None:
        return la
    metric = la.table.latency_ms if la.objective.metric == "latency" else la.table.energy_mj
    order = np.lexsort((metric, inputs.cut_index))
    rows = order[np.unique(inputs.cut_index[order], return_index=True)[1]]
    if la.best is not None:
        rows[inputs.cut_index[rows] == inputs.cut_index[la.best]] = la.best
    table = CostTable(**{k: (None if v is None else np.asarray(v)[rows])  # type: ignore[arg-type]
                         for k, v in vars(la.table).items()})
    picked = dataclasses.replace(
        inputs, after=tuple(inputs.after[r] for r in rows), bytes_up=inputs.bytes_up[rows],
        bytes_down=inputs.bytes_down[rows], tm_ms=inputs.tm_ms[rows], tc_ms=inputs.tc_ms[rows],
        em_mj=inputs.em_mj[rows], head_call_share=inputs.head_call_share[rows],
        cut_index=None, row_fields=None)
    position = {int(r): i for i, r in enumerate(rows)}
    return dataclasses.replace(
        la, inputs=picked, table=table,
        best=None if la.best is None else position[la.best],
        pareto=tuple(position[p] for p in la.pareto if p in position))
