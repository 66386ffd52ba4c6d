"""Parsers for LiteRT ``benchmark_model --enable_op_profiling=true`` output (pure).

Three forms, all turned into :class:`OpRow` lists in run order:

* ``tflite-stdout``: the text report; the first "Run Order" table of the regular
  (not initialisation) runs, tab-separated, with or without the ``[start]`` column.
* ``tflite-csv``: ``--op_profiling_output_mode=csv``; banner lines between tables,
  ``%`` suffixes, the older header ``node type, start, first, avg_ms, %, cdf%, mem KB,
  times called, name`` or the newer one without ``start``.
* ``tflite-proto``: ``--op_profiling_output_mode=proto``, a serialized
  ``tflite.profiling.BenchmarkProfilingData`` (per-op µs avg/stddev/min/max/count). The
  message types are built here from the documented field numbers with protobuf's
  descriptor API; nothing is compiled at run time.

Node names look like ``[model/conv2d/Conv2D;model/bn/add]:3``: output tensor names in
brackets, then the node index.

Example:
    >>> rows = parse_csv("node type, first, avg_ms, %, cdf%, mem KB, times called, name\\n"
    ...                  "CONV_2D, 0.5, 0.4, 80%, 80%, 0, 1, [Identity]:0\\n", "f.csv")
    >>> rows[0].op_type, rows[0].node_index, rows[0].avg_ms
    ('CONV_2D', 0, 0.4)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from dnntune.errors import DnntuneError

FORMATS = ("tflite-stdout", "tflite-csv", "tflite-proto")
_NAME = re.compile(r"^\[(.*)\]:(\d+)$")
RUNTIME_MARK = "Regular Benchmark Runs"


@dataclass(frozen=True)
class OpRow:
    """One op of an on-device op profile, times in milliseconds.

    ``std_ms``, ``min_ms``, ``max_ms`` and ``count`` are ``None`` where the format
    does not carry them (text and CSV carry only ``first`` and ``avg``).
    """

    op_type: str
    names: str
    node_index: int | None
    avg_ms: float
    first_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    count: int | None = None
    times_called: int = 1


def split_name(name: str) -> tuple[str, int | None]:
    """``"[a;b]:3"`` → ``("a;b", 3)``; a name without the pattern keeps no index."""
    match = _NAME.match(name.strip())
    return (match.group(1), int(match.group(2))) if match else (name.strip(), None)


def _number(text: str, where: str) -> float:
    try:
        return float(text.strip().rstrip("%"))
    except ValueError:
        raise DnntuneError(f"{where}: expected a number, got {text.strip()!r}") from None


def _row(cells: list[str], columns: list[str], where: str) -> OpRow:
    value = dict(zip(columns, cells, strict=True))
    names, index = split_name(value["name"])
    return OpRow(op_type=value["type"].strip(), names=names, node_index=index,
                 avg_ms=_number(value["avg"], where), first_ms=_number(value["first"], where),
                 times_called=int(_number(value.get("times", "1"), where)))


def _runtime_part(text: str) -> str:
    """The text after the regular-runs marker (the init profile comes first)."""
    at = text.find(RUNTIME_MARK)
    return text if at < 0 else text[at:]


def parse_csv(text: str, where: str) -> list[OpRow]:
    """The first per-op table (with a ``name`` column) of a CSV op profile."""
    lines = _runtime_part(text).splitlines()
    start = next((i for i, line in enumerate(lines)
                  if line.startswith("node type,") and line.rstrip().endswith("name")), None)
    if start is None:
        raise DnntuneError(f"{where}: no 'node type, ..., name' header of a LiteRT CSV op "
                           "profile (benchmark_model --op_profiling_output_mode=csv)")
    header = [h.strip() for h in lines[start].split(",")]
    columns = ["type", *("start" if h == "start" else "first" if h == "first" else
                         "avg" if h == "avg_ms" else "times" if h == "times called" else h
                         for h in header[1:-1]), "name"]
    rows = []
    for n, line in enumerate(lines[start + 1:], start=start + 2):
        if not line.strip() or line.startswith("="):
            break
        cells = line.split(", ", len(columns) - 1)
        if len(cells) != len(columns):
            raise DnntuneError(f"{where}: line {n}: expected {len(columns)} comma-separated "
                               f"fields, got {len(cells)} (truncated file?)")
        rows.append(_row(cells, columns, f"{where}: line {n}"))
    return _nonempty(rows, where)


def parse_stdout(text: str, where: str) -> list[OpRow]:
    """The first "Run Order" table of the regular runs in benchmark_model's text report."""
    lines = _runtime_part(text).splitlines()
    banner = next((i for i, line in enumerate(lines)
                   if line.startswith("=") and "Run Order" in line), None)
    if banner is None or banner + 1 >= len(lines):
        raise DnntuneError(f"{where}: no 'Run Order' table of a LiteRT op profile "
                           "(benchmark_model --enable_op_profiling=true)")
    header = [h.strip() for h in lines[banner + 1].split("\t") if h.strip()]
    names = {"[node type]": "type", "[start]": "start", "[first]": "first",
             "[avg ms]": "avg", "[%]": "pct", "[cdf%]": "cdf", "[mem KB]": "mem",
             "[times called]": "times", "[Name]": "name"}
    if not header or header[0] != "[node type]" or header[-1] != "[Name]":
        raise DnntuneError(f"{where}: line {banner + 2}: expected the '[node type] ... [Name]' "
                           "header of the Run Order table")
    columns = [names.get(h, h) for h in header]
    rows = []
    for n, line in enumerate(lines[banner + 2:], start=banner + 3):
        if not line.strip():
            break
        cells = [c.strip() for c in line.lstrip("\t").split("\t")]
        if len(cells) != len(columns):
            raise DnntuneError(f"{where}: line {n}: expected {len(columns)} tab-separated "
                               f"fields, got {len(cells)} (truncated file?)")
        rows.append(_row(cells, columns, f"{where}: line {n}"))
    return _nonempty(rows, where)


@functools.cache
def profiling_messages() -> dict[str, Any]:
    """Message classes of ``tflite.profiling`` (profiling_info.proto), by name."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    layout: dict[str, list[tuple[str, int, int, int, str]]] = {
        "BenchmarkProfilingData": [("model_name", 1, opt, f.TYPE_STRING, ""),
                                   ("init_profile", 2, opt, f.TYPE_MESSAGE, "ModelProfilingData"),
                                   ("runtime_profile", 3, opt, f.TYPE_MESSAGE,
                                    "ModelProfilingData")],
        "ModelProfilingData": [("subgraph_profiles", 1, rep, f.TYPE_MESSAGE,
                                "SubGraphProfilingData"),
                               ("delegate_profiles", 2, rep, f.TYPE_MESSAGE,
                                "DelegateProfilingData")],
        "SubGraphProfilingData": [("subgraph_name", 1, opt, f.TYPE_STRING, ""),
                                  ("subgraph_index", 2, opt, f.TYPE_INT32, ""),
                                  ("per_op_profiles", 3, rep, f.TYPE_MESSAGE, "OpProfileData")],
        "DelegateProfilingData": [("delegate_name", 1, opt, f.TYPE_STRING, ""),
                                  ("per_op_profiles", 2, rep, f.TYPE_MESSAGE, "OpProfileData")],
        "OpProfilingStat": [(n, i, opt, t, "") for n, i, t in (
            ("first", 1, f.TYPE_INT64), ("last", 2, f.TYPE_INT64), ("avg", 3, f.TYPE_INT64),
            ("stddev", 4, f.TYPE_FLOAT), ("variance", 5, f.TYPE_FLOAT), ("min", 6, f.TYPE_INT64),
            ("max", 7, f.TYPE_INT64), ("sum", 8, f.TYPE_INT64), ("count", 9, f.TYPE_INT64))],
        "OpProfileData": [("node_type", 1, opt, f.TYPE_STRING, ""),
                          ("inference_microseconds", 2, opt, f.TYPE_MESSAGE, "OpProfilingStat"),
                          ("mem_kb", 3, opt, f.TYPE_MESSAGE, "OpProfilingStat"),
                          ("times_called", 4, opt, f.TYPE_INT64, ""),
                          ("name", 5, opt, f.TYPE_STRING, ""),
                          ("run_order", 6, opt, f.TYPE_INT64, "")],
    }
    proto = descriptor_pb2.FileDescriptorProto(
        name="dnntune_tflite_profiling_info.proto", package="tflite.profiling",
        syntax="proto2")
    for message, fields in layout.items():
        m = proto.message_type.add(name=message)
        for name, number, label, kind, type_name in fields:
            m.field.add(name=name, number=number, label=label, type=kind,
                        type_name=f".tflite.profiling.{type_name}" if type_name else None)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"tflite.profiling.{name}")) for name in layout}


def parse_proto(data: bytes, where: str) -> list[OpRow]:
    """Primary-subgraph ops of the runtime profile of a ``BenchmarkProfilingData``."""
    from google.protobuf.message import DecodeError

    message = profiling_messages()["BenchmarkProfilingData"]()
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise DnntuneError(f"{where}: not a tflite.profiling.BenchmarkProfilingData message "
                           "(truncated, or not --op_profiling_output_mode=proto?)") from None
    subgraphs = [s for s in message.runtime_profile.subgraph_profiles if s.subgraph_index == 0]
    if not subgraphs:
        raise DnntuneError(f"{where}: no runtime profile of the primary subgraph")
    ops = sorted(subgraphs[0].per_op_profiles, key=lambda op: op.run_order)
    rows = []
    for op in ops:
        stat = op.inference_microseconds
        names, index = split_name(op.name)
        rows.append(OpRow(op_type=op.node_type, names=names, node_index=index,
                          avg_ms=stat.avg / 1e3, first_ms=stat.first / 1e3,
                          std_ms=stat.stddev / 1e3, min_ms=stat.min / 1e3,
                          max_ms=stat.max / 1e3, count=int(stat.count),
                          times_called=int(op.times_called) or 1))
    return _nonempty(rows, where)


def _nonempty(rows: list[OpRow], where: str) -> list[OpRow]:
    if not rows:
        raise DnntuneError(f"{where}: the op table has no rows (empty or truncated profile)")
    return rows


def parse_op_profile(data: bytes, fmt: str, where: str) -> list[OpRow]:
    """Parse ``data`` in one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise DnntuneError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not data.strip():
        raise DnntuneError(f"{where}: empty file")
    if fmt == "tflite-proto":
        return parse_proto(data, where)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise DnntuneError(f"{where}: not text; a proto profile needs --format "
                           "tflite-proto") from None
    return parse_csv(text, where) if fmt == "tflite-csv" else parse_stdout(text, where)
