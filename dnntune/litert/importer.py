"""Import an on-phone LiteRT op profile as a dnntune device profile.

The rows parsed by :mod:`dnntune.litert.ops` are matched to the ops of the model's
layer map (:mod:`dnntune.litert.convert`) by node index, checking op types; names are
compared too, and where the phone's tool rewrote them the match is by node order and
the profile says so. A row that stands for a delegate (GPU, NNAPI, Hexagon, XNNPACK
before TF 2.9.1) collapses many ops into one time that cannot be attributed to layers,
so the file is refused. Each op's time goes to the last Keras layer it implements; the
head latency at every cut that exists in LiteRT is the sum of the ops before it.

Example:
    >>> # rows = parse_op_profile(Path("op_profile.csv").read_bytes(), "tflite-csv", "f")
    >>> # profile = op_profile_to_profile(rows, loaded, conversion.layer_map, "op_profile.csv")
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dnntune.errors import DnntuneError
from dnntune.litert.convert import LayerMap
from dnntune.litert.ops import OpRow
from dnntune.profiling.profile import CutLatency, EnergyInfo, MeasuredCuts, Profile, Stats

if TYPE_CHECKING:
    from dnntune.model.loading import LoadedModel

DELEGATE_WORDS = ("delegate", "gpu", "nnapi", "hexagon", "coreml")


@dataclass(frozen=True)
class OpMatch:
    """How rows were matched to the layer map: by name, or by order (names rewritten)."""

    by_name: bool
    renamed: int  # rows whose names differ from the converted model's tensor names


def check_delegate_rows(rows: Sequence[OpRow], where: str) -> None:
    """Refuse rows that stand for a delegate partition rather than one op."""
    for row in rows:
        kind = row.op_type.lower()
        if any(word in kind for word in DELEGATE_WORDS):
            unit = " and reports cycles, not time" if "hexagon" in kind else ""
            raise DnntuneError(
                f"{where}: node {row.node_index} is a {row.op_type} row that collapses several "
                f"LiteRT ops into one{unit}; its time cannot be attributed to layers: run "
                "benchmark_model with --use_xnnpack=false and no GPU/NNAPI/Hexagon delegate")


def match_rows(rows: Sequence[OpRow], layer_map: LayerMap, where: str) -> list[OpRow]:
    """``rows`` reordered to the layer map's op order; raises if they are another model's."""
    check_delegate_rows(rows, where)
    ops = layer_map.ops
    if len(rows) != len(ops):
        raise DnntuneError(f"{where}: {len(rows)} op rows, but {layer_map.model_name} "
                           f"({layer_map.precision}) converts to {len(ops)} LiteRT ops: a "
                           "profile of a different model or precision?")
    indices = [r.node_index for r in rows]
    if all(i is not None for i in indices) and sorted(indices) == list(range(len(ops))):  # type: ignore[type-var]
        ordered = sorted(rows, key=lambda r: r.node_index or 0)
    else:
        ordered = list(rows)  # the run order is the node order on the CPU
    for row, op in zip(ordered, ops, strict=True):
        if row.op_type != op.op_type:
            raise DnntuneError(f"{where}: node {op.index} is {row.op_type} in the profile but "
                               f"{op.op_type} in {layer_map.model_name} ({layer_map.precision}):"
                               " a profile of a different model or precision?")
    return ordered


def name_match(rows: Sequence[OpRow], layer_map: LayerMap) -> OpMatch:
    renamed = sum(row.names != ",".join(op.outputs) and row.names not in op.outputs
                  for row, op in zip(rows, layer_map.ops, strict=True))
    return OpMatch(renamed == 0, renamed)


def _op_stats(row: OpRow) -> Stats:
    mean = row.avg_ms
    std = row.std_ms if row.std_ms is not None else 0.0
    low = row.min_ms if row.min_ms is not None else mean
    high = row.max_ms if row.max_ms is not None else mean
    return Stats(row.count or 0, mean, std, low, high, mean, mean, mean, mean)


def sum_stats(items: Sequence[Stats]) -> Stats:
    """Stats of a sum of independent op times: means, variances, mins and maxes add;
    percentiles are taken as the mean (op profiles carry none)."""
    if not items:
        return Stats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    mean = sum(s.mean_ms for s in items)
    return Stats(min(s.n for s in items), mean, math.sqrt(sum(s.std_ms ** 2 for s in items)),
                 sum(s.min_ms for s in items), sum(s.max_ms for s in items),
                 mean, mean, mean, mean)


def op_profile_to_profile(rows: Sequence[OpRow], loaded: LoadedModel, layer_map: LayerMap,
                          where: str, fmt: str, energy: EnergyInfo | None = None,
                          num_threads: int = 0) -> Profile:
    """A device profile: per-layer times from the ops, head times at surviving cuts."""
    from dnntune.analysis.measured_cuts import leading_inputs
    from dnntune.litert.profile import cut_profile, profile_meta

    ordered = match_rows(rows, layer_map, where)
    match = name_match(ordered, layer_map)
    graph = loaded.graph
    position = {layer.name: i for i, layer in enumerate(graph.layers)}
    per_layer: list[list[Stats]] = [[] for _ in graph.layers]
    for row, op in zip(ordered, layer_map.ops, strict=True):
        per_layer[position[op.layer]].append(_op_stats(row))
    latency = [sum_stats(s) for s in per_layer]
    ends = {0, leading_inputs(graph), len(graph.layers)}
    cuts = []
    for index in sorted(set(layer_map.surviving) | ends):
        after = graph.layers[index - 1].name if index else None
        cuts.append(CutLatency(index, after, sum_stats([s for group in per_layer[:index]
                                                        for s in group])))
    how = ("ops matched by name" if match.by_name else
           f"ops matched by node order ({match.renamed} names rewritten on the phone)")
    detail = ("avg/stddev/min/max per op" if fmt == "tflite-proto"
              else "avg per op only: std 0, min = max = percentiles = mean")
    measured = MeasuredCuts("ops", f"LiteRT benchmark_model {layer_map.precision}",
                            f"imported from {where} ({fmt}; {how}; {detail}); each op's "
                            "time on the last Keras layer it implements", tuple(cuts))
    meta = dataclasses.replace(profile_meta(loaded, num_threads, 0,
                                            max((r.count or 0) for r in ordered)),
                               host=f"imported:{where}", cpu_model="unknown (on-device op "
                               "profile)", os="unknown", cpu_affinity=())
    return cut_profile(loaded, meta, measured, energy or EnergyInfo("none", 0.0, 0.0,
                                                                    "imported op profile"),
                       0, 0, latency)
