"""Terminal output for people: rich tables with three significant figures."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from dnntune.model.cuts import Cut
from dnntune.model.graph import LayerGraph, count_params
from dnntune.profiling.profile import Profile


def sig3(value: float) -> str:
    """Three significant figures in plain notation: ``5750.4 -> '5,750'``, ``0.3 -> '0.300'``.

    Example:
        >>> [sig3(v) for v in (5750.4, 26.14, 0.3, 0)]
        ['5,750', '26.1', '0.300', '0']
    """
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    exponent = math.floor(math.log10(abs(value)))
    if exponent >= 2:
        return f"{round(value, 2 - exponent):,.0f}"
    return f"{value:.{2 - exponent}f}"


def human_bytes(n: int) -> str:
    """Bytes with a binary-free SI unit and three significant figures: ``'4.90 MB'``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def print_cut_table(graph: LayerGraph, cuts: Sequence[Cut], console: Console | None = None
                    ) -> None:
    """One row per cut: index, last device layer, crossing tensors and bytes; then a summary."""
    console = console or Console()
    table = Table(title=f"{graph.model_name}: {len(graph.layers)} layers, {len(cuts)} cut points",
                  title_justify="left")
    table.add_column("cut", justify="right")
    table.add_column("after layer")
    table.add_column("type")
    table.add_column("tensors", justify="right")
    table.add_column("bytes up", justify="right")
    table.add_column("", justify="right")
    layer_type = {layer.name: layer.type for layer in graph.layers}
    for cut in cuts:
        place = ("cloud-only" if cut.index == 0 else
                 "mobile-only" if cut.index == len(graph.layers) else "")
        table.add_row(str(cut.index), cut.after or "(input)",
                      layer_type.get(cut.after or "", ""), str(len(cut.tensors)),
                      f"{cut.bytes_up:,}", place)
    console.print(table)
    inner = cuts[1:-1]
    smallest = min(inner, key=lambda c: (c.bytes_up, c.index)) if inner else cuts[0]
    multi = sum(1 for c in cuts if len(c.tensors) > 1)
    console.print(
        f"{graph.model_name}: {len(graph.layers)} layers, "
        f"{count_params(graph):,} parameters, "
        f"{sig3(sum(layer.flops for layer in graph.layers) / 1e9)} GFLOPs; input "
        f"{human_bytes(cuts[0].bytes_up)}; smallest split after {smallest.after} "
        f"({human_bytes(smallest.bytes_up)}); {multi} cuts carry several tensors.")


@contextlib.contextmanager
def progress_bar(title: str) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on stderr; yields ``update(stage, done, total)``."""
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{title}: {stage}", total=total)
            bar.update(tasks[stage], completed=done)
        yield update


def print_profile(profile: Profile, top: int = 10, console: Console | None = None) -> None:
    """The slowest layers, then the totals, ratio, overhead and energy label."""
    console = console or Console()
    meta = profile.meta
    shown = min(top, len(profile.layers))
    device = "" if meta.device_label == "measured" else f" [{meta.device_label}]"
    table = Table(title=f"{meta.model_name} on {meta.side}{device} ({meta.cpu_model}, "
                        f"{meta.num_threads} thread(s)): {shown} slowest of "
                        f"{len(profile.layers)} layers", title_justify="left")
    for column in ("layer", "type", "mean ms", "p90 ms", "share", "energy mJ"):
        table.add_column(column, justify="left" if column in ("layer", "type") else "right")
    total = sum(lp.latency.mean_ms for lp in profile.layers) or 1.0
    for lp in sorted(profile.layers, key=lambda lp: -lp.latency.mean_ms)[:top]:
        table.add_row(lp.layer.name, lp.layer.type, sig3(lp.latency.mean_ms),
                      sig3(lp.latency.p90_ms), f"{100 * lp.latency.mean_ms / total:.1f}%",
                      "-" if lp.energy_mj is None else sig3(lp.energy_mj))
    console.print(table)
    e2e = profile.end_to_end
    energy = profile.energy
    energy_total = sum(lp.energy_mj or 0.0 for lp in profile.layers)
    console.print(
        f"sum of layer means {sig3(total)} ms; uninstrumented end to end {sig3(e2e.mean_ms)} "
        f"ms in graph (p50 {sig3(e2e.p50_ms)}, p99 {sig3(e2e.p99_ms)}), ratio "
        f"{profile.ratio:.3f}; per-call overhead outside the graph "
        f"{sig3(profile.call_overhead_ms)} ms; timers cost {profile.overhead_pct:+.1f}%.")
    if profile.device_note:
        console.print(f"device {profile.device_note}", highlight=False)
    if energy.label == "none":
        console.print("energy: not measured")
    else:
        kind = "measured" if energy.measured else "ESTIMATED"
        console.print(f"energy ({kind}, {energy.label}): {sig3(energy_total)} mJ per inference "
                      f"(active {sig3(energy.active_power_mw)} mW, idle "
                      f"{sig3(energy.idle_power_mw)} mW). {energy.note}")
    console.print(f"{sig3(profile.param_bytes / 1e6)} MB of weights; peak RSS grew "
                  f"{sig3(profile.peak_rss_growth_bytes / 1e6)} MB while profiling.")
