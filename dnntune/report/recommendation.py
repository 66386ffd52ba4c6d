"""The analyzer's recommendation as a terminal table: per link the best cut, its T and
E, both baselines, the gains and the DAG optimum, then notes (traces, sensitivity,
infeasible links). Used by ``dnntune analyze`` and from notebooks::

    from dnntune.report.recommendation import print_report
    print_report(analysis)
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from dnntune.analysis.costs import describe_energy
from dnntune.analysis.dagcut import DagPartition
from dnntune.analysis.partition import Analysis, LinkAnalysis, Objective, best_indices

if TYPE_CHECKING:
    from rich.console import Console


def round3(value: float | None) -> str:
    """Three significant figures without exponent.

    Example:
        >>> round3(1234.5), round3(0.012345), round3(12.0)
        ('1230', '0.0123', '12.0')
    """
    if value is None:
        return "-"
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    digits = 2 - math.floor(math.log10(abs(value)))
    rounded = round(value, digits)
    if rounded != 0:  # rounding may carry into the next decade: 999.7 -> 1000
        digits = 2 - math.floor(math.log10(abs(rounded)))
        rounded = round(value, digits)
    return f"{rounded:.{max(digits, 0)}f}"


def _cut_name(la: LinkAnalysis, row: dict[str, Any]) -> str:
    """The row's cut, and with wire encodings what it sends (``after x (#i/L) as int8``)."""
    cut_index = la.inputs.cut_index
    last = len(la.inputs.after) - 1 if cut_index is None else int(cut_index[-1])
    name = _index_name(row["index"], row["after"], last)
    encoding = row.get("encoding")
    return name if encoding in (None, "none") else f"{name} as {encoding}"


def _index_name(index: int | None, after: str | None, last: int) -> str:
    if index is None or index < 0:
        return "none feasible"
    if index == last:
        return "mobile-only"
    if index == 0:
        return "cloud-only"
    return f"after {after} (#{index}/{last})"


def _energy_text(analysis: Analysis) -> str:
    costs = analysis.inputs.costs
    label = costs.energy_label
    if label.startswith("measured:"):
        text = f"device energy measured ({label})"
    elif label.startswith("estimated:"):
        text = f"device energy estimated ({label})"
    else:
        return f"no device energy in the profile ({label}): radio energy only"
    if costs.estimated_layers:
        text += f"; {costs.estimated_layers} layers estimated from active - idle power"
    return text


def print_report(analysis: Analysis, console: Console | None = None) -> None:
    """The terminal table: per link the best cut, its T and E, baselines and gains."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    metric = analysis.objective.metric
    device = "this machine" if analysis.device_label == "measured" else analysis.device_label
    console.print(f"[bold]{analysis.model}[/bold] (device: {device}): "
                  f"{analysis.objective.describe()}; {_energy_text(analysis)}; T in ms, "
                  f"E in mJ, gains in {metric}")
    console.print(f"energy: {describe_energy(analysis.options)}", highlight=False)
    if analysis.inputs.costs.device_note:
        console.print(f"device {analysis.inputs.costs.device_note}", highlight=False)
    table = Table(show_lines=False)
    for title in ("link", "up/down Mbit/s, RTT ms", "best cut", "T", "E", "mobile-only T / E",
                  "cloud-only T / E", "gain vs mobile", "gain vs cloud", "DAG optimum T / E"):
        table.add_column(title, overflow="fold")
    for la in analysis.links:
        table.add_row(*_row(la, metric))
    console.print(table)
    for line in _notes(analysis):
        console.print(line, highlight=False)


def _row(la: LinkAnalysis, metric: str) -> list[str]:
    link = la.link
    t, e = la.table.latency_ms, la.table.energy_mj
    last = len(la.inputs.after) - 1
    cells = [link.name, f"{round3(link.up_mbps)} / {round3(link.down_mbps)}, {round3(link.rtt_ms)}"]
    best = la.best_dict()
    if best is None:
        cells += ["no feasible cut", "-", "-"]
        gains = ["-", "-"]
    else:
        cells += [_cut_name(la, best), round3(best["latency_ms"]),
                  round3(best["energy_mj"])]
        gains = [_pct(best[f"{metric}_gain_vs_mobile_only_pct"]),
                 _pct(best[f"{metric}_gain_vs_cloud_only_pct"])]
    cells += [f"{round3(t[last])} / {round3(e[last])}", f"{round3(t[0])} / {round3(e[0])}", *gains]
    dag = la.dag.get(metric)
    cells.append("-" if dag is None else f"{round3(float(dag.table.latency_ms[0]))} / "
                 f"{round3(float(dag.table.energy_mj[0]))}")
    return cells


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{round3(value)}%"


def _notes(analysis: Analysis) -> list[str]:
    lines = [analysis.measured_cuts] if analysis.measured_cuts else []
    lines += _wire_notes(analysis)
    metric = analysis.objective.metric
    for la in analysis.links:
        name = la.link.name
        if not la.feasible:
            lines.append(f"{name}: {la.message}")
        for direction, label, borrowed in (
                ("uplink", la.link.up_extrapolation(), la.link.up_power_label()),
                ("downlink", la.link.down_extrapolation(), la.link.down_power_label())):
            if label:
                lines.append(f"{name}: {direction} radio power {borrowed}, held at the range "
                             f"end")
            elif borrowed:
                lines.append(f"{name}: {direction} radio power {borrowed}")
        if la.link.trace is not None:
            lines.append(f"{name}: {la.link.source}; mean uplink {round3(la.link.up_mbps)} "
                         f"Mbit/s, upload times are the median over "
                         f"{analysis.options.trace_starts} start times")
            if la.best is not None and la.table.latency_p95_ms is not None:
                lines.append(f"{name}: best cut latency p50 {round3(la.table.latency_ms[la.best])}"
                             f" ms, p95 {round3(la.table.latency_p95_ms[la.best])} ms")
        dag = la.dag.get(metric)
        if dag is not None and dag.prefix_index is None:
            lines.append(_dag_note(la, dag, analysis.objective))
        if la.best is not None and la.table.saturated is not None \
                and bool(la.table.saturated[la.best]):
            lines.append(f"{name}: at {analysis.options.inference_rate_hz:g} inferences/s "
                         "the link cannot finish one transfer before the next starts")
    lines += _robustness_notes(analysis)
    lines += _sensitivity_notes(analysis)
    return lines


def _robustness_notes(analysis: Analysis) -> list[str]:
    """One line per link: does the energy-first cut survive radio power x0.5/x2 and the
    other radio modes?"""
    if not analysis.robustness:
        return []
    cut_index = analysis.inputs.cut_index
    last = int(cut_index.max()) if cut_index is not None else len(analysis.inputs.after) - 1

    def named(v: dict[str, Any]) -> str:
        text = _index_name(v["index"], v["after"], last)
        encoding = v.get("encoding")  # "none" where nothing crosses (mobile-only)
        return f"{text} as {encoding}" if encoding and encoding != "none" else text
    lines = []
    for name, info in analysis.robustness.items():
        cut = named(info)
        if info["robust"]:
            whats = ", ".join(v["what"] for v in info["variants"])
            lines.append(f"{name}: energy-first cut {cut} holds under {whats}")
            continue
        changes = "; ".join(f"{v['what']}: {named(v)}" for v in info["variants"]
                            if (v["index"], v.get("encoding"))
                            != (info["index"], info.get("encoding")))
        lines.append(f"{name}: energy-first cut {cut} is NOT robust: {changes}")
    return lines


def _wire_notes(analysis: Analysis) -> list[str]:
    wire = analysis.wire
    if wire is None:
        return ["wire: every crossing tensor sent as float32 (as profiled; --wire to encode)"]
    lines = [f"wire: every (cut, encoding) pair of {', '.join(wire['encodings'])}, measured "
             f"on {wire['samples']}; encode times at the device's speed "
             f"(x{round3(wire['device_factor'])} this machine's), decode in the cloud; "
             f"pairs below top-1 agreement {wire['min_agreement']:g} are excluded; "
             f"cloud-only T / E is cut 0 as {analysis.links[0].cut(0).get('encoding')}"
             if analysis.links else ""]
    lines += [f"wire: {text}" for text in [*wire["excluded"], *wire["notes"]]]
    return lines


def _dag_note(la: LinkAnalysis, dag: DagPartition, objective: Objective) -> str:
    metric = objective.metric
    best_prefix = float((la.table.latency_ms if metric == "latency"
                         else la.table.energy_mj).min())
    text = (f"{la.link.name}: the {metric}-optimal partition is not a prefix cut: "
            f"{len(dag.device_layers)} layers on the device, T "
            f"{round3(float(dag.table.latency_ms[0]))} ms, "
            f"E {round3(float(dag.table.energy_mj[0]))} mJ "
            f"(best prefix {metric}: {round3(best_prefix)})")
    if objective.deadline_ms is not None or objective.energy_budget_mj is not None:
        meets = int(best_indices(dag.table.latency_ms, dag.table.energy_mj, objective)) == 0
        text += "; it meets the constraints" if meets else "; it does not meet the constraints"
    return text


def _sensitivity_notes(analysis: Analysis) -> list[str]:
    if not analysis.sensitivity:
        return []
    cut_index = analysis.inputs.cut_index
    last = len(analysis.inputs.after) - 1 if cut_index is None else int(cut_index[-1])
    lines = []
    for name, info in analysis.sensitivity.items():
        segments: list[dict[str, Any]] = info["uplink_segments"]
        parts = [f"{round3(s['from_mbps'])}-{round3(s['to_mbps'])} Mbit/s: "
                 f"{_index_name(s['index'], s['after'], last)}" for s in segments]
        lines.append(f"{name}: best cut by uplink: " + "; ".join(parts))
        for row in info["what_if"]:
            lines.append(f"{name}: what-if device x{row['device_speedup']:g}, cloud "
                         f"x{row['cloud_speedup']:g}: "
                         f"{_index_name(row['index'], row['after'], last)} "
                         f"(T {round3(row['latency_ms'])} ms, E {round3(row['energy_mj'])} mJ)")
    return lines
