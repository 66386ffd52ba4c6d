"""Every (cut, encoding) pair: the cost model over what really crosses a cut.

:class:`EncodedCuts` is plain data measured by :mod:`dnntune.wire.measure` (the codecs
live there, not here): per wire encoding and prefix cut, the encoded bytes up, the time
to encode on the phone (already at the device's speed) and to decode in the cloud, and
the fidelity of the final output against the unsplit float32 model. :func:`encoded_inputs`
turns the plain :class:`~dnntune.analysis.costs.CutInputs` into one row per admissible
(cut, encoding) pair: ``bytes_up`` is the encoded size, ``Tm`` gains the encode time,
``Tc`` the decode time, ``Em`` the encode time at the device's mean compute power (its
profile's layer energy over layer time). The cost model, objectives and Pareto front
then run unchanged over the rows. Pure: numpy only.

Rows are cut-major; a cut across which nothing is sent up (mobile-only) has one row,
encoding ``"none"``. The ``cloud_only`` entry of a link is cut 0 with the first listed
encoding that applies there.

Example:
    >>> # flat, excluded = encoded_inputs(inputs, wire, min_agreement=0.99)
    >>> # flat.row_fields["encoding"][flat.row_of(0)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dnntune.analysis.costs import (
    METRICS,
    CostOptions,
    CostTable,
    CutInputs,
    cost_table,
    cut_inputs,
    partition_bytes,
)
from dnntune.analysis.links import Link
from dnntune.errors import ConfigError
from dnntune.model.cuts import crossing_tensors
from dnntune.model.graph import LayerGraph, TensorSpec

if TYPE_CHECKING:
    from dnntune.analysis.dagcut import DagPartition
    from dnntune.analysis.partition import Analysis, Objective

FloatArray = npt.NDArray[np.float64]
ROW_FIELDS = ("encoding", "encode_ms", "decode_ms", "agreement", "max_abs_error",
              "max_rel_error")


@dataclass(frozen=True, eq=False)
class EncodedCuts:
    """Measured wire encodings at every prefix cut (arrays ``(E, L + 1)``, NaN where an
    encoding does not apply, e.g. an image codec at a cut where activations cross).

    Attributes:
        names: The encodings, in the order the user listed them.
        bytes_up: Mean encoded bytes over the samples.
        encode_ms: Mean time to encode on the phone (native time x ``device_factor``).
        decode_ms: Mean time to decode in the cloud.
        agreement: Share of samples whose final top-1 equals the unsplit float32 model's.
        max_abs_error, max_rel_error: Of the final outputs (relative to the largest
            reference magnitude), over the samples.
        tensor_bytes: Per encoding, mean encoded bytes per tensor (the DAG optimum's bytes).
        tensor_encode_ms, tensor_decode_ms: Per encoding, per tensor, as above.
        samples: What was measured on, one line.
        device_factor: How much slower the phone encodes than the machine that measured.
    """

    names: tuple[str, ...]
    bytes_up: FloatArray
    encode_ms: FloatArray
    decode_ms: FloatArray
    agreement: FloatArray
    max_abs_error: FloatArray
    max_rel_error: FloatArray
    tensor_bytes: tuple[Mapping[str, float], ...] = ()
    tensor_encode_ms: tuple[Mapping[str, float], ...] = ()
    tensor_decode_ms: tuple[Mapping[str, float], ...] = ()
    samples: str = ""
    device_factor: float = 1.0
    notes: tuple[str, ...] = field(default=())

    def summary(self, min_agreement: float, excluded: list[str]) -> dict[str, Any]:
        return {"encodings": list(self.names), "samples": self.samples,
                "min_agreement": min_agreement, "device_factor": self.device_factor,
                "excluded": excluded, "notes": list(self.notes)}


def encoded_inputs(inputs: CutInputs, wire: EncodedCuts, min_agreement: float
                   ) -> tuple[CutInputs, list[str]]:
    """One row per admissible (cut, encoding); and why encodings were left out.

    Raises:
        ConfigError: ``min_agreement`` outside 0..1, arrays of the wrong shape, or no
            encoding admissible at cut 0.
    """
    if not 0.0 <= min_agreement <= 1.0:
        raise ConfigError("--min-agreement", f"must be from 0 to 1, got {min_agreement!r}")
    cuts = len(inputs.after)
    if wire.bytes_up.shape != (len(wire.names), cuts):
        raise ConfigError("wire", f"measured {wire.bytes_up.shape} (encodings, cuts), the "
                                  f"model has {cuts} cuts")
    applies = np.isfinite(wire.bytes_up)
    agree = np.where(np.isnan(wire.agreement), 1.0, wire.agreement)
    admitted = applies & (agree >= min_agreement)
    excluded = _exclusions(wire, applies, agree, admitted, min_agreement)
    rows: list[tuple[int, int]] = []  # (cut, encoding or -1 for "none")
    for p in range(cuts):
        if inputs.bytes_up[p] == 0:
            rows.append((p, -1))
        else:
            rows.extend((p, e) for e in range(len(wire.names)) if admitted[e, p])
    if not any(p == 0 for p, _ in rows):
        raise ConfigError("--min-agreement", f"no encoding reaches agreement "
                                             f"{min_agreement:g} at cut 0 (cloud-only)")
    return _flatten(inputs, wire, rows), excluded


def _exclusions(wire: EncodedCuts, applies: np.ndarray, agree: np.ndarray,
                admitted: np.ndarray, min_agreement: float) -> list[str]:
    out = []
    for e, name in enumerate(wire.names):
        low = applies[e] & ~admitted[e]
        if not applies[e].any():
            out.append(f"{name}: applies at no cut of this model")
        elif low.any():
            worst = float(agree[e][low].min())
            where = "every cut" if not admitted[e].any() else \
                f"{int(low.sum())} of {int(applies[e].sum())} cuts"
            out.append(f"{name}: excluded at {where} (top-1 agreement down to {worst:.3g} "
                       f"< {min_agreement:g})")
    return out


def _flatten(inputs: CutInputs, wire: EncodedCuts, rows: list[tuple[int, int]]) -> CutInputs:
    cut = np.array([p for p, _ in rows], dtype=np.int64)
    enc = np.array([e for _, e in rows], dtype=np.int64)
    some = enc >= 0
    pick = np.where(some, enc, 0)

    def take(values: FloatArray, blank: float = 0.0) -> FloatArray:
        return np.where(some, values[pick, cut], blank)
    encode_ms, decode_ms = take(wire.encode_ms), take(wire.decode_ms)
    costs = inputs.costs
    total_ms = float(costs.device_ms.sum())
    power_w = float(costs.device_mj.sum()) / total_ms if total_ms > 0 else 0.0  # mJ/ms
    fields: dict[str, tuple[Any, ...]] = {
        "encoding": tuple(wire.names[e] if e >= 0 else "none" for e in enc),
        "encode_ms": tuple(float(x) for x in encode_ms),
        "decode_ms": tuple(float(x) for x in decode_ms),
    }
    for name in ("agreement", "max_abs_error", "max_rel_error"):
        values = take(getattr(wire, name), np.nan)
        fields[name] = tuple(None if np.isnan(x) else float(x) for x in values)
    return dataclasses.replace(
        inputs, after=tuple(inputs.after[p] for p in cut),
        bytes_up=take(wire.bytes_up), bytes_down=inputs.bytes_down[cut],
        tm_ms=inputs.tm_ms[cut] + encode_ms, tc_ms=inputs.tc_ms[cut] + decode_ms,
        em_mj=inputs.em_mj[cut] + encode_ms * power_w,
        head_call_share=inputs.head_call_share[cut], cut_index=cut, row_fields=fields)


def encoded_graph(graph: LayerGraph, tensor_bytes: Mapping[str, float]) -> LayerGraph:
    """``graph`` with each tensor's bytes replaced by its encoded size (for the min-cut)."""
    def spec(t: TensorSpec) -> TensorSpec:
        per_sample = tensor_bytes.get(t.name)
        if per_sample is None:
            return t
        batch = t.shape[0] if t.shape and t.shape[0] else 1
        return dataclasses.replace(t, bytes=round(per_sample * batch))
    layers = tuple(dataclasses.replace(n, outputs=tuple(spec(t) for t in n.outputs))
                   for n in graph.layers)
    return dataclasses.replace(graph, layers=layers, _tensors={})


def dag_candidates(inputs: CutInputs, wire: EncodedCuts
                   ) -> list[tuple[str, CutInputs, Mapping[str, float], Mapping[str, float]]]:
    """Per tensor encoding: the plain cut inputs over its encoded bytes, and its codec
    times per tensor (the min-cut sees the bytes; the set it finds is then charged the
    codec times of the tensors that cross it, see :func:`codec_ms`)."""
    out = []
    for e, name in enumerate(wire.names):
        if e >= len(wire.tensor_bytes) or not wire.tensor_bytes[e]:
            continue
        graph = encoded_graph(inputs.graph, wire.tensor_bytes[e])
        out.append((name, cut_inputs(graph, inputs.costs), wire.tensor_encode_ms[e],
                    wire.tensor_decode_ms[e]))
    return out


def codec_ms(graph: LayerGraph, device_layers: tuple[str, ...],
             per_tensor: Mapping[str, float]) -> float:
    """Sum of ``per_tensor`` over the tensors crossing the device set."""
    return float(sum(per_tensor.get(t.name, 0.0)
                     for t in crossing_tensors(graph, device_layers)))


def analyze_wired(inputs: CutInputs, wire: EncodedCuts, min_agreement: float,
                  links: Sequence[Link], objective: Objective, options: CostOptions, *,
                  dag: bool = True, what_if: Mapping[str, float] | None = None) -> Analysis:
    """:func:`dnntune.analysis.partition.analyze_inputs` over every admissible
    (cut, encoding) row; the DAG optimum per metric is the best over the tensor
    encodings admitted at every cut (min-cut on their encoded bytes, then charged their
    codec times), compared with every row."""
    from dnntune.analysis.partition import Analysis, analyze_link

    flat, excluded = encoded_inputs(inputs, wire, min_agreement)
    admitted = {name for name in wire.names
                if not any(x.startswith(f"{name}:") for x in excluded)}
    candidates = [c for c in dag_candidates(inputs, wire) if c[0] in admitted] if dag else []
    results = []
    for link in links:
        la = analyze_link(flat, link, objective, options, dag=False)
        if candidates:
            found = {m: _best_partition(flat, la.table, candidates, link, options, m)
                     for m in METRICS}
            la = dataclasses.replace(la, dag={m: p for m, (p, _) in found.items()},
                                     dag_encoding={m: e for m, (_, e) in found.items()})
        results.append(la)
    return Analysis(inputs.graph.model_name, objective, options, flat, tuple(results),
                    dict(what_if or {}), wire=wire.summary(min_agreement, excluded))


def _best_partition(flat: CutInputs, rows: CostTable,
                    candidates: list[tuple[str, CutInputs, Mapping[str, float],
                                           Mapping[str, float]]],
                    link: Link, options: CostOptions, metric: str) -> tuple[DagPartition, str]:
    from dnntune.analysis.dagcut import DagPartition, optimal_partition

    costs = flat.costs
    total_ms = float(costs.device_ms.sum())
    power_w = float(costs.device_mj.sum()) / total_ms if total_ms > 0 else 0.0
    best: tuple[float, DagPartition, str] | None = None
    for name, cin, enc_ms, dec_ms in candidates:
        part = optimal_partition(cin, link, options, metric)
        on = set(part.device_layers)
        mask = np.array([n in on for n in cin.graph.layer_names], dtype=bool)
        enc = codec_ms(cin.graph, part.device_layers, enc_ms)
        dec = codec_ms(cin.graph, part.device_layers, dec_ms)
        up, down = partition_bytes(cin.graph, on)
        share = float(cin.call_share[mask].sum())
        table = cost_table([costs.device_ms[mask].sum() + enc],
                           [costs.cloud_ms[~mask].sum() + dec],
                           [costs.device_mj[mask].sum() + enc * power_w], [up], [down], link,
                           options, costs.idle_power_mw, device_call_share=share,
                           cloud_call_share=1.0 - share)
        value = float((table.latency_ms if metric == "latency" else table.energy_mj)[0])
        if best is None or value < best[0]:
            best = (value, dataclasses.replace(part, table=table), name)
    assert best is not None
    values = rows.latency_ms if metric == "latency" else rows.energy_mj
    other = rows.energy_mj if metric == "latency" else rows.latency_ms
    row = int(np.lexsort((np.arange(len(values)), other, values))[0])
    if float(values[row]) <= best[0] * (1 + 1e-12):
        assert flat.cut_index is not None and flat.row_fields is not None
        p = int(flat.cut_index[row])
        picked = CostTable(**{k: (None if v is None else np.asarray(v)[row:row + 1])
                              for k, v in vars(rows).items()})  # type: ignore[arg-type]
        part = DagPartition(metric, flat.graph.layer_names[:p], picked, p, "prefix",
                            best[1].resolution)
        return part, str(flat.row_fields["encoding"][row])
    return best[1], best[2]
