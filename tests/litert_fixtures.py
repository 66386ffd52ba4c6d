"""Writers of LiteRT ``benchmark_model`` op profiles in their exact layouts.

The layouts follow TensorFlow's ``stats_calculator.cc`` (text: tab, right-aligned
fields, fixed 3 decimals; CSV: ``", "`` separators and ``%`` suffixes) and
``profiling_info.proto`` (proto). ``start`` selects the older layout with the start
column. Times are per-op averages in ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BANNER = "=============================="


@dataclass(frozen=True)
class FakeOp:
    op_type: str
    name: str  # "[tensor names]:node"
    avg_ms: float


def ops_from_layer_map(layer_map, scale_ms: float = 0.1) -> list[FakeOp]:
    """One row per converted op, named as benchmark_model names nodes."""
    return [FakeOp(op.op_type, f"[{','.join(op.outputs)}]:{op.index}",
                   scale_ms * (1 + op.index % 3)) for op in layer_map.ops]


def _field(value: str, width: int) -> str:
    return "\t" + value.rjust(width)


def _pcts(ops: Sequence[FakeOp]) -> list[tuple[float, float]]:
    total = sum(op.avg_ms for op in ops) or 1.0
    cdf, out = 0.0, []
    for op in ops:
        cdf += op.avg_ms
        out.append((100 * op.avg_ms / total, 100 * cdf / total))
    return out


def text_table(title: str, ops: Sequence[FakeOp], start: bool) -> str:
    head = _field("[node type]", 24) + (_field("[start]", 17) if start else "")
    head += (_field("[first]", 9) + _field("[avg ms]", 9) + _field("[%]", 8)
             + _field("[cdf%]", 8) + _field("[mem KB]", 10) + _field("[times called]", 9)
             + "\t[Name]")
    lines = [f"{BANNER} {title} {BANNER}", head]
    t = 0.0
    for op, (pct, cdf) in zip(ops, _pcts(ops), strict=True):
        row = _field(op.op_type, 24) + (_field(f"{t:.3f}", 17) if start else "")
        row += (_field(f"{op.avg_ms * 1.2:.3f}", 9) + _field(f"{op.avg_ms:.3f}", 9)
                + _field(f"{pct:.3f}", 7) + "%" + _field(f"{cdf:.3f}", 7) + "%"
                + _field("0.000", 10) + _field("1", 9) + "\t" + op.name)
        lines.append(row)
        t += op.avg_ms
    return "\n".join(lines) + "\n\n"


def csv_table(title: str, ops: Sequence[FakeOp], start: bool) -> str:
    header = "node type, " + ("start, " if start else "") + \
        "first, avg_ms, %, cdf%, mem KB, times called, name"
    lines = [f"{BANNER} {title} {BANNER}", header]
    t = 0.0
    for op, (pct, cdf) in zip(ops, _pcts(ops), strict=True):
        lines.append(f"{op.op_type}, " + (f"{t:.3f}, " if start else "")
                     + f"{op.avg_ms * 1.2:.3f}, {op.avg_ms:.3f}, {pct:.3f}%, {cdf:.3f}%, "
                       f"0, 1, {op.name}")
        t += op.avg_ms
    return "\n".join(lines) + "\n\n"


INIT = [FakeOp("ModifyGraphWithDelegate", "ModifyGraphWithDelegate/0", 1.5),
        FakeOp("AllocateTensors", "AllocateTensors/0", 0.2)]


def stdout_report(ops: Sequence[FakeOp], start: bool = False) -> str:
    """The text report: init profile, then the regular runs' tables and summaries."""
    by_time = sorted(ops, key=lambda o: -o.avg_ms)
    return ("INFO: Num runs: [50]\nINFO: Inference timings in us: Init: 2000, First "
            "inference: 900, Warmup (avg): 800, Inference (avg): 700\n"
            "Profiling Info for Benchmark Initialization:\n"
            + text_table("Run Order", INIT, start)
            + "Operator-wise Profiling Info for Regular Benchmark Runs:\n"
            + text_table("Run Order", ops, start)
            + text_table("Top by Computation Time", by_time, start)
            + f"Number of nodes executed: {len(ops)}\n"
            + f"{BANNER} Summary by node type {BANNER}\n"
            + "\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\n\n"
            + "Timings (microseconds): count=50 first=900 curr=700 min=650 max=950 "
              "avg=700 std=20\n")


def csv_report(ops: Sequence[FakeOp], start: bool = False) -> str:
    """``--op_profiling_output_mode=csv``: the same report as CSV, banners between."""
    return ("Profiling Info for Benchmark Initialization:\n"
            + csv_table("Run Order", INIT, start)
            + "Operator-wise Profiling Info for Regular Benchmark Runs:\n"
            + csv_table("Run Order", ops, start)
            + csv_table("Top by Computation Time", sorted(ops, key=lambda o: -o.avg_ms), start)
            + f"{BANNER} Summary by node type {BANNER}\n"
            + "node type, count, avg_ms, avg %, cdf %, mem KB, times called\n"
            + "CONV_2D, 3, 0.300, 50%, 50%, 0, 3\n")


def proto_report(ops: Sequence[FakeOp], model_name: str = "model.tflite") -> bytes:
    """``--op_profiling_output_mode=proto``: a serialized BenchmarkProfilingData."""
    from dnntune.litert.ops import profiling_messages

    classes = profiling_messages()
    data = classes["BenchmarkProfilingData"](model_name=model_name)
    init = data.init_profile.subgraph_profiles.add(subgraph_name="Primary graph",
                                                   subgraph_index=0)
    for i, op in enumerate(INIT):
        _proto_op(init.per_op_profiles.add(), op, i)
    sub = data.runtime_profile.subgraph_profiles.add(subgraph_name="Primary graph",
                                                     subgraph_index=0)
    for i, op in enumerate(ops):
        _proto_op(sub.per_op_profiles.add(), op, i)
    return bytes(data.SerializeToString())


def _proto_op(entry, op: FakeOp, run_order: int) -> None:
    entry.node_type = op.op_type
    entry.name = op.name
    entry.times_called = 1
    entry.run_order = run_order
    us = round(op.avg_ms * 1000)
    stat = entry.inference_microseconds
    stat.first, stat.last, stat.avg = us + 5, us, us
    stat.stddev, stat.variance = 2.0, 4.0
    stat.min, stat.max, stat.sum, stat.count = us - 3, us + 7, us * 50, 50
