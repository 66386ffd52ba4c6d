"""How the chosen cut changes with the device, the link and the objective.

For studies over several devices (``notebooks/phone_study.ipynb``):

* :func:`decisions`: per link of an analysis, the chosen cut and its gain over both
  baselines (mobile-only, cloud-only) in the objective's metric, as DNNTune's tables
  report it; :func:`decisions_frame` and :func:`decisions_markdown` lay them out.
* :func:`uplink_sweep`: the chosen cut for each constant uplink bandwidth, per device,
  link and objective (the analysis core is pure and vectorised, so a sweep of hundreds
  of bandwidths takes milliseconds); :func:`uplink_sweep_figure` plots it.

Example:
    >>> # rows = decisions(analysis, device="emulated:dnntune_phone")
    >>> # print(decisions_markdown(rows))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dnntune.analysis.partition import Analysis, LinkAnalysis, Objective
from dnntune.analysis.sensitivity import best_cut_for_uplinks
from dnntune.report.tables import sig3

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

PLACEMENTS = ("mobile-only", "split", "cloud-only", "none")


@dataclass(frozen=True)
class Decision:
    """The cut chosen on one link for one objective, device and model.

    Attributes:
        device: Which device the profile stands for, e.g. ``emulated:pixel1``.
        index: Prefix cut index (layers on the device), ``None`` when nothing is feasible.
        cut: ``mobile-only``, ``cloud-only`` or the last layer on the device.
        placement: ``mobile-only``, ``cloud-only`` (nothing but the input on the device),
            ``split`` or ``none`` (no feasible cut).
        layers: Layers of the model (cut indices run from 0 to ``layers``).
        latency_ms, energy_mj: The chosen cut's T and the phone's E.
        gain_vs_mobile_only_pct, gain_vs_cloud_only_pct: Percent saved against each
            baseline in the objective's metric (latency-first: T; energy-first: E).
    """

    device: str
    model: str
    link: str
    objective: str
    index: int | None
    cut: str | None
    placement: str
    layers: int
    latency_ms: float | None
    energy_mj: float | None
    mobile_only_latency_ms: float
    mobile_only_energy_mj: float
    cloud_only_latency_ms: float
    cloud_only_energy_mj: float
    gain_vs_mobile_only_pct: float | None
    gain_vs_cloud_only_pct: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cut_label(la: LinkAnalysis, index: int) -> str:
    """``cloud-only`` (index 0), ``mobile-only`` (all layers) or the last device layer."""
    last = len(la.inputs.after) - 1
    if index == 0:
        return "cloud-only"
    if index == last:
        return "mobile-only"
    return str(la.inputs.after[index])


def placement(la: LinkAnalysis, index: int | None) -> str:
    """Where the chosen cut puts the model: see :attr:`Decision.placement`.

    A cut after the input layers alone sends the raw input, like cloud-only.
    """
    if index is None:
        return "none"
    if index == len(la.inputs.after) - 1:
        return "mobile-only"
    if all(layer.is_input for layer in la.inputs.graph.layers[:index]):
        return "cloud-only"
    return "split"


def _gain_pct(baseline: float, value: float) -> float | None:
    return None if baseline == 0 else 100.0 * (baseline - value) / baseline


def decisions(analysis: Analysis, device: str) -> list[Decision]:
    """One :class:`Decision` per link of ``analysis`` (pure)."""
    rows = []
    metric = analysis.objective.metric
    for la in analysis.links:
        last = len(la.inputs.after) - 1
        t, e = la.table.latency_ms, la.table.energy_mj
        values = t if metric == "latency" else e
        best = la.best
        rows.append(Decision(
            device=device, model=analysis.model, link=la.link.name,
            objective=analysis.objective.primary, index=best,
            cut=None if best is None else cut_label(la, best),
            placement=placement(la, best), layers=last,
            latency_ms=None if best is None else float(t[best]),
            energy_mj=None if best is None else float(e[best]),
            mobile_only_latency_ms=float(t[last]), mobile_only_energy_mj=float(e[last]),
            cloud_only_latency_ms=float(t[0]), cloud_only_energy_mj=float(e[0]),
            gain_vs_mobile_only_pct=(None if best is None else
                                     _gain_pct(float(values[last]), float(values[best]))),
            gain_vs_cloud_only_pct=(None if best is None else
                                    _gain_pct(float(values[0]), float(values[best])))))
    return rows


def decisions_frame(rows: Iterable[Decision]) -> pd.DataFrame:
    """The decisions as a DataFrame, one row each (columns: :class:`Decision`'s fields)."""
    import pandas as pd

    return pd.DataFrame([row.to_dict() for row in rows])


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}%"


def _num(value: float | None) -> str:
    return "–" if value is None else sig3(value)


MARKDOWN_HEADER = ("model", "link", "device", "objective", "chosen cut", "layers on device",
                   "T ms", "E mJ", "gain vs mobile-only", "gain vs cloud-only")


def decisions_markdown(rows: Sequence[Decision]) -> str:
    """A markdown table in DNNTune's layout: per model and link, each device and objective's
    chosen cut, its T and E, and its gain over both baselines in the objective's metric.

    Example:
        >>> # print(decisions_markdown(decisions(analysis, "emulated:pixel1")))
    """
    lines = ["| " + " | ".join(MARKDOWN_HEADER) + " |",
             "|" + "|".join("---" for _ in MARKDOWN_HEADER) + "|"]
    for r in sorted(rows, key=lambda r: (r.model, r.link, r.device, r.objective)):
        on_device = "–" if r.index is None else f"{r.index} / {r.layers}"
        cells = (r.model, r.link, r.device, r.objective, r.cut or "none feasible", on_device,
                 _num(r.latency_ms), _num(r.energy_mj), _pct(r.gain_vs_mobile_only_pct),
                 _pct(r.gain_vs_cloud_only_pct))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Sweep:
    """The chosen cut per uplink bandwidth for one device, link and objective.

    Attributes:
        up_mbps: The constant uplink bandwidths, Mbit/s (the link's downlink, RTT and
            radio power kept).
        index: The chosen prefix cut at each bandwidth (-1: none feasible).
        labels: Cut index -> :func:`cut_label`, for every index that occurs.
    """

    device: str
    link: str
    link_up_mbps: float
    objective: str
    layers: int
    up_mbps: npt.NDArray[np.float64]
    index: npt.NDArray[np.int64]
    labels: Mapping[int, str]

    def changes(self) -> list[tuple[float, str]]:
        """``(bandwidth, new cut)`` wherever the chosen cut changes, in increasing order."""
        at = np.flatnonzero(self.index[1:] != self.index[:-1]) + 1
        return [(float(self.up_mbps[i]), self.labels.get(int(self.index[i]), "none"))
                for i in at]


def uplink_sweep(analyses: Mapping[str, Analysis], up_mbps: npt.ArrayLike,
                 objectives: Sequence[str] = ("latency-first", "energy-first")
                 ) -> list[Sweep]:
    """Per device (key of ``analyses``), link and objective: the chosen cut per bandwidth.

    Only each analysis's profiles-derived inputs, options and links are used; its own
    objective is not, so one analysis per device is enough.
    """
    rates = np.asarray(up_mbps, dtype=np.float64)
    sweeps = []
    for device, analysis in analyses.items():
        for la in analysis.links:
            for name in objectives:
                index = best_cut_for_uplinks(analysis.inputs, la.link, Objective(name),
                                             analysis.options, rates)
                labels = {int(i): cut_label(la, int(i)) for i in np.unique(index) if i >= 0}
                sweeps.append(Sweep(device, la.link.name, la.link.up_mbps, name,
                                    len(la.inputs.after) - 1, rates, index, labels))
    return sweeps


def uplink_sweep_figure(sweeps: Sequence[Sweep], title: str = "") -> Figure:
    """One panel per objective (rows) and link (columns): the chosen cut's position
    against the uplink bandwidth (log x), one step line per device; the link's own
    uplink is marked. Cut positions are layer indices (0 = cloud-only, last =
    mobile-only), labelled with the layer names that are chosen somewhere."""
    from matplotlib.figure import Figure

    links = list(dict.fromkeys(s.link for s in sweeps))
    objectives = list(dict.fromkeys(s.objective for s in sweeps))
    devices = list(dict.fromkeys(s.device for s in sweeps))
    fig = Figure(figsize=(4.6 * len(links), 3.8 * len(objectives)), dpi=100,
                 layout="constrained")
    axes = fig.subplots(len(objectives), len(links), squeeze=False, sharex=True, sharey=True)
    styles = ("-", "--", ":", "-.")
    for s in sweeps:
        ax = axes[objectives.index(s.objective), links.index(s.link)]
        k = devices.index(s.device)
        y = np.where(s.index >= 0, s.index, np.nan).astype(np.float64)
        ax.step(s.up_mbps, y, where="post", linestyle=styles[k % len(styles)], linewidth=2,
                label=s.device, gid=f"sweep-{s.device}")
        ax.axvline(s.link_up_mbps, color="#999999", linewidth=1)
        ax.set_title(f"{s.objective}, {s.link} (uplink {sig3(s.link_up_mbps)} Mbit/s)",
                     fontsize=10)
    _label_cut_axis(axes, sweeps)
    for ax in axes[-1]:
        ax.set_xscale("log")
        ax.set_xlabel("uplink, Mbit/s (log; downlink, RTT, radio of the link)")
    axes[0][0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _label_cut_axis(axes: Any, sweeps: Sequence[Sweep], max_labels: int = 12) -> None:
    """Name the cut indices that are chosen anywhere, at most ``max_labels`` of them."""
    labels: dict[int, str] = {}
    for s in sweeps:
        labels.update(s.labels)
    layers = max(s.layers for s in sweeps)
    chosen = sorted(labels)
    step = max(1, -(-len(chosen) // max_labels))
    shown = sorted(set(chosen[::step]) | {c for c in chosen if c in (0, layers)})
    for row in axes:
        row[0].set_yticks(shown, [f"{i}: {labels[i][:24]}" for i in shown], fontsize=7)
        row[0].set_ylabel("chosen cut (layers on device)")
    axes[0][0].set_ylim(-0.05 * layers - 1, layers * 1.05 + 1)
