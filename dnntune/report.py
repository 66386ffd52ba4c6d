"""Terminal output for people: rich tables with three significant figures."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from dnntune.cuts import Cut
from dnntune.graph import LayerGraph


def sig3(value: float) -> str:
    """Three significant figures, e.g. ``sig3(12345.6) == '1.23e+04'``, ``sig3(0.01234)``."""
    if value == 0:
        return "0"
    text = f"{value:.3g}"
    return text


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
        f"{sum(layer.params for layer in graph.layers):,} parameters, "
        f"{sig3(sum(layer.flops for layer in graph.layers) / 1e9)} GFLOPs; input "
        f"{human_bytes(cuts[0].bytes_up)}; smallest split after {smallest.after} "
        f"({human_bytes(smallest.bytes_up)}); {multi} cuts carry several tensors.")
