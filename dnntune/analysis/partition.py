"""The analysis: every cut on every link, the best per objective, and the DAG optimum.

:func:`analyze_profiles` takes a device and a cloud profile, links and an objective and
returns an :class:`Analysis`: plain data whose :meth:`Analysis.to_dict` is the JSON of
``dnntune analyze --format json``. Objectives:

* ``latency-first``: minimum ``T`` (ties: lower ``E``, then fewer device layers);
* ``energy-first``: minimum ``E`` (ties: lower ``T``, then fewer device layers);
* constrained: ``deadline_ms`` keeps only cuts with ``T <= deadline``,
  ``energy_budget_mj`` only cuts with ``E <= budget``; the primary metric is then
  minimised over those (by default ``E`` under a deadline, ``T`` under a budget). When
  no cut is feasible on a link, its ``best`` is ``None`` and ``message`` says why.

Example:
    >>> # from dnntune.profiling.profile import load_profile
    >>> # from dnntune.analysis.links import resolve_links
    >>> # result = analyze_profiles(load_profile("device.json"), load_profile("cloud.json"),
    >>> #                           resolve_links(["3g,4g,wifi"]), Objective("energy-first"))
    >>> # result.to_dict()["links"][0]["best"]["after"]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dnntune.analysis.costs import (
    ENERGY_TERMS,
    CostOptions,
    CostTable,
    CutInputs,
    cut_inputs,
    describe_energy,
    layer_costs,
    prefix_table,
)
from dnntune.analysis.dagcut import DagPartition, optimal_partition
from dnntune.analysis.links import Link
from dnntune.errors import ConfigError
from dnntune.profiling.profile import Profile

if TYPE_CHECKING:
    import pandas as pd

    from dnntune.analysis.encodings import EncodedCuts

OBJECTIVES = ("latency-first", "energy-first")
CUT_FIELDS = ("index", "after", "bytes_up", "tm_ms", "tt_ms", "tc_ms", "latency_ms",
              "em_mj", "et_mj", "energy_mj")


@dataclass(frozen=True)
class Objective:
    """What "best" means.

    Attributes:
        primary: ``"latency-first"`` or ``"energy-first"``.
        deadline_ms: Only cuts with latency at most this count, if set.
        energy_budget_mj: Only cuts with phone energy at most this count, if set.
    """

    primary: str = "latency-first"
    deadline_ms: float | None = None
    energy_budget_mj: float | None = None

    def __post_init__(self) -> None:
        if self.primary not in OBJECTIVES:
            raise ConfigError("--objective", f"must be one of {', '.join(OBJECTIVES)}, "
                                             f"got {self.primary!r}")
        for flag, value in (("--deadline-ms", self.deadline_ms),
                            ("--energy-budget-mj", self.energy_budget_mj)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(flag, f"must be a positive number, got {value!r}")

    @classmethod
    def from_options(cls, objective: str | None = None, deadline_ms: float | None = None,
                     energy_budget_mj: float | None = None) -> Objective:
        """Default primary: energy-first under a deadline alone, latency-first otherwise."""
        if objective is None:
            only_deadline = deadline_ms is not None and energy_budget_mj is None
            objective = "energy-first" if only_deadline else "latency-first"
        return cls(objective, deadline_ms, energy_budget_mj)

    @property
    def metric(self) -> str:
        return "latency" if self.primary == "latency-first" else "energy"

    def describe(self) -> str:
        text = "minimum latency" if self.metric == "latency" else "minimum phone energy"
        limits = []
        if self.deadline_ms is not None:
            limits.append(f"latency <= {self.deadline_ms:g} ms")
        if self.energy_budget_mj is not None:
            limits.append(f"energy <= {self.energy_budget_mj:g} mJ")
        return text + (" subject to " + " and ".join(limits) if limits else "")


def best_indices(latency: npt.ArrayLike, energy: npt.ArrayLike,
                 objective: Objective) -> npt.NDArray[np.int64]:
    """Index of the best cut along the last axis; -1 where no cut is feasible.

    Example:
        >>> best_indices([30.0, 20.0, 20.0], [1.0, 5.0, 4.0], Objective()).tolist()
        2
        >>> best_indices([30.0, 20.0], [1.0, 5.0], Objective(deadline_ms=10)).tolist()
        -1
    """
    t = np.asarray(latency, dtype=np.float64)
    e = np.asarray(energy, dtype=np.float64)
    first, second = (t, e) if objective.metric == "latency" else (e, t)
    key = first
    if objective.deadline_ms is not None:
        key = np.where(t <= objective.deadline_ms, key, np.inf)
    if objective.energy_budget_mj is not None:
        key = np.where(e <= objective.energy_budget_mj, key, np.inf)
    low = key.min(axis=-1, keepdims=True)
    best = np.argmin(np.where(key == low, second, np.inf), axis=-1)
    return np.where(np.isfinite(low[..., 0]), best, -1).astype(np.int64)


def pareto_front(latency: npt.ArrayLike, energy: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Indices of the cuts no other cut beats on both T and E, by increasing latency.

    Example:
        >>> pareto_front([10.0, 20.0, 30.0], [5.0, 6.0, 1.0]).tolist()
        [0, 2]
    """
    t = np.asarray(latency, dtype=np.float64)
    e = np.asarray(energy, dtype=np.float64)
    order = np.lexsort((np.arange(len(t)), e, t))
    e_sorted = e[order]
    before = np.concatenate([[np.inf], np.minimum.accumulate(e_sorted)[:-1]])
    return order[e_sorted < before].astype(np.int64)


def _gain_pct(baseline: float, value: float) -> float | None:
    return None if baseline == 0 else 100.0 * (baseline - value) / baseline


@dataclass(frozen=True, eq=False)
class LinkAnalysis:
    """Every cut on one link, the best one and the DAG optimum.

    Attributes:
        best: Index of the best prefix cut, or ``None`` if no cut is feasible.
        message: Why nothing is feasible (empty otherwise).
        dag: DAG-optimal partitions by metric (``"latency"``, ``"energy"``).
    """

    link: Link
    inputs: CutInputs
    table: CostTable
    objective: Objective
    best: int | None
    message: str
    pareto: tuple[int, ...]
    dag: Mapping[str, DagPartition] = field(default_factory=dict)
    dag_encoding: Mapping[str, str] = field(default_factory=dict)  # by metric, with wire

    @property
    def feasible(self) -> bool:
        return self.best is not None

    def cut(self, i: int) -> dict[str, Any]:
        """Cut ``i`` as a dict with the fields of :data:`CUT_FIELDS` (and a few more).

        With wire encodings ``i`` is a row (one per (cut, encoding)): ``index`` is its
        cut, ``row`` the row, and the encoding's columns follow.
        """
        out = {"index": i, "after": self.inputs.after[i], **self.table.row(i)}
        if self.inputs.cut_index is not None and self.inputs.row_fields is not None:
            out["index"], out["row"] = int(self.inputs.cut_index[i]), i
            out.update({k: v[i] for k, v in self.inputs.row_fields.items()})
        return out

    def best_dict(self) -> dict[str, Any] | None:
        if self.best is None:
            return None
        out = self.cut(self.best)
        for base, i in (("mobile_only", len(self.inputs.after) - 1), ("cloud_only", 0)):
            for metric in ("latency", "energy"):
                arr = self.table.latency_ms if metric == "latency" else self.table.energy_mj
                out[f"{metric}_gain_vs_{base}_pct"] = _gain_pct(float(arr[i]),
                                                                 float(arr[self.best]))
        return out

    def to_dict(self) -> dict[str, Any]:
        link = self.link
        out: dict[str, Any] = {
            "name": link.name, "up_mbps": link.up_mbps, "down_mbps": link.down_mbps,
            "rtt_ms": link.rtt_ms, "link": link.to_dict(), "feasible": self.feasible,
            "message": self.message, "best": self.best_dict(),
            "mobile_only": self.cut(len(self.inputs.after) - 1), "cloud_only": self.cut(0),
        }
        if self.dag:
            primary = self.dag[self.objective.metric]
            out["dag_optimal"] = _dag_dict(primary, self.table, self.objective)
            out["dag_optimal_by_metric"] = {m: _dag_dict(p, self.table, self.objective)
                                            for m, p in self.dag.items()}
            for metric, encoding in self.dag_encoding.items():
                out["dag_optimal_by_metric"][metric]["encoding"] = encoding
                if metric == self.objective.metric:
                    out["dag_optimal"]["encoding"] = encoding
        out["pareto"] = [self.cut(i) for i in self.pareto]
        out["cuts"] = [self.cut(i) for i in range(len(self.inputs.after))]
        return out


def _dag_dict(partition: DagPartition, prefixes: CostTable,
              objective: Objective) -> dict[str, Any]:
    """The partition's cut fields, its gain over the best prefix cut on its metric
    (unconstrained), and whether it meets the objective's deadline/budget."""
    best_prefix = float(np.min(prefixes.latency_ms if partition.metric == "latency"
                               else prefixes.energy_mj))
    table = partition.table
    meets = int(best_indices(table.latency_ms, table.energy_mj, objective)) == 0
    return {**partition.to_dict(), "meets_constraints": meets,
            "gain_vs_best_prefix_pct": _gain_pct(best_prefix, partition.value)}


def _infeasible_message(table: CostTable, objective: Objective, link: Link) -> str:
    parts = []
    if objective.deadline_ms is not None:
        parts.append(f"the fastest cut takes {float(table.latency_ms.min()):.3g} ms "
                     f"(deadline {objective.deadline_ms:g} ms)")
    if objective.energy_budget_mj is not None:
        parts.append(f"the most frugal cut uses {float(table.energy_mj.min()):.3g} mJ "
                     f"(budget {objective.energy_budget_mj:g} mJ)")
    return f"no cut is feasible on {link.name}: " + "; ".join(parts)


def analyze_link(inputs: CutInputs, link: Link, objective: Objective,
                 options: CostOptions, *, dag: bool = True) -> LinkAnalysis:
    """All prefix cuts of ``inputs`` on ``link``, the best for ``objective``, the Pareto
    front and (with ``dag``) the DAG-optimal partitions for latency and energy."""
    table = prefix_table(inputs, link, options)
    best = int(best_indices(table.latency_ms, table.energy_mj, objective))
    message = "" if best >= 0 else _infeasible_message(table, objective, link)
    partitions = ({m: optimal_partition(inputs, link, options, m, table)
                   for m in ("latency", "energy")} if dag else {})
    pareto = tuple(int(i) for i in pareto_front(table.latency_ms, table.energy_mj))
    return LinkAnalysis(link, inputs, table, objective, best if best >= 0 else None,
                        message, pareto, partitions)


@dataclass(frozen=True, eq=False)
class Analysis:
    """The result of :func:`analyze_profiles`: plain data, JSON via :meth:`to_dict`."""

    model: str
    objective: Objective
    options: CostOptions
    inputs: CutInputs
    links: tuple[LinkAnalysis, ...]
    what_if: Mapping[str, float] = field(default_factory=dict)
    sensitivity: Mapping[str, Any] | None = None
    robustness: Mapping[str, Any] | None = None  # per link, see sensitivity.add_robustness
    measured_cuts: str | None = None  # says so when only a device profile's cuts count
    wire: Mapping[str, Any] | None = None  # encodings, samples, exclusions (with --wire)

    @property
    def energy_label(self) -> str:
        return self.inputs.costs.energy_label

    @property
    def device_label(self) -> str:
        """``emulated:<preset>``, ``scaled:<preset>`` or ``measured``."""
        return self.inputs.costs.device_label

    def infeasible_message(self) -> str | None:
        """One line if no link has a feasible cut, else ``None``."""
        if not self.links or any(la.feasible for la in self.links):
            return None
        return "; ".join(la.message for la in self.links)

    def to_dict(self) -> dict[str, Any]:
        costs = self.inputs.costs
        links = []
        for la in self.links:
            entry = la.to_dict()
            if self.sensitivity is not None and la.link.name in self.sensitivity:
                entry["sensitivity"] = self.sensitivity[la.link.name]
            if self.robustness is not None and la.link.name in self.robustness:
                entry["robustness"] = self.robustness[la.link.name]
            links.append(entry)
        return {
            "model": self.model,
            "objective": self.objective.primary,
            "objective_description": self.objective.describe(),
            "deadline_ms": self.objective.deadline_ms,
            "energy_budget_mj": self.objective.energy_budget_mj,
            "energy_definition": describe_energy(self.options),
            "energy_terms": list(ENERGY_TERMS),
            "options": {"idle_wait": self.options.idle_wait,
                        "radio": self.options.radio,
                        "inference_rate_hz": self.options.inference_rate_hz,
                        "trace_starts": self.options.trace_starts,
                        "device_call_ms": self.options.device_call_ms,
                        "cloud_call_ms": self.options.cloud_call_ms,
                        "rpc_ms": self.options.rpc_ms,
                        "rpc_ms_per_mb": self.options.rpc_ms_per_mb},
            "what_if": dict(self.what_if),
            "device_label": costs.device_label,
            "device_note": costs.device_note,
            "energy_label": costs.energy_label,
            "energy_measured": costs.energy_label.startswith("measured:"),
            "energy_estimated_layers": costs.estimated_layers,
            "feasible": self.infeasible_message() is None,
            **({} if self.measured_cuts is None else {"measured_cuts": self.measured_cuts}),
            **({} if self.wire is None else {"wire": dict(self.wire)}),
            "links": links,
        }


def analyze_inputs(inputs: CutInputs, links: Sequence[Link], objective: Objective,
                   options: CostOptions, *, dag: bool = True,
                   what_if: Mapping[str, float] | None = None) -> Analysis:
    """:func:`analyze_profiles` on prepared :class:`~dnntune.analysis.costs.CutInputs`."""
    results = tuple(analyze_link(inputs, link, objective, options, dag=dag) for link in links)
    return Analysis(inputs.graph.model_name, objective, options, inputs, results,
                    dict(what_if or {}))


def analyze_profiles(device: Profile, cloud: Profile, links: Sequence[Link],
                     objective: Objective | None = None, options: CostOptions | None = None,
                     *, dag: bool = True, device_speedup: float = 1.0,
                     cloud_speedup: float = 1.0, wire: EncodedCuts | None = None,
                     min_agreement: float = 0.99) -> Analysis:
    """Analyse every cut of the model on every link.

    Args:
        device: Profile measured on the phone (its energy and idle power are used).
        cloud: Profile of the same model measured on the cloud server.
        links: Links to evaluate, e.g. ``resolve_links(["3g,4g,wifi"])``.
        objective: What "best" means (default latency-first).
        options: Optional energy terms (idle wait, inference rate for radio tails).
        dag: Also find the DAG-optimal partitions (a min-cut per link and metric).
        device_speedup, cloud_speedup: What-if: that many times faster compute.
        wire: Measured wire encodings: every admissible (cut, encoding) pair is a row
            (see :mod:`dnntune.analysis.encodings`); ``None`` sends float32 as profiled.
        min_agreement: Rows whose top-1 agreement is below this are excluded.

    Returns:
        An :class:`Analysis`; ``.to_dict()`` is the JSON document of the CLI.

    Raises:
        DnntuneError: the profiles are of different models or list different layers,
            or an option is out of range.
    """
    objective = objective or Objective()
    options = options or CostOptions()
    options = dataclasses.replace(
        options,
        device_call_ms=(device.call_overhead_ms if options.device_call_ms is None
                        else options.device_call_ms),
        cloud_call_ms=(cloud.call_overhead_ms if options.cloud_call_ms is None
                       else options.cloud_call_ms))
    what_if = {"device_speedup": device_speedup, "cloud_speedup": cloud_speedup}
    if device.measured_cuts is not None and wire is not None:
        raise ConfigError("--wire", "not supported yet with a device profile measured at "
                                    "chosen cuts (LiteRT); analyze it without --wire")
    if device.measured_cuts is not None:
        return _analyze_measured_cuts(device, cloud, links, objective, options, what_if)
    costs = layer_costs(device, cloud).scaled(device_speedup, cloud_speedup)
    inputs = cut_inputs(device.graph, costs)
    if wire is not None:
        from dnntune.analysis.encodings import analyze_wired

        return analyze_wired(inputs, wire, min_agreement, links, objective, options,
                             dag=dag, what_if=what_if)
    return analyze_inputs(inputs, links, objective, options, dag=dag, what_if=what_if)


def _analyze_measured_cuts(device: Profile, cloud: Profile, links: Sequence[Link],
                           objective: Objective, options: CostOptions,
                           what_if: Mapping[str, float]) -> Analysis:
    """Only the device profile's measured cuts; no DAG optimum (no per-layer times)."""
    from dnntune.analysis.measured_cuts import measured_cut_inputs

    measured = device.measured_cuts
    assert measured is not None
    inputs = measured_cut_inputs(device, cloud).scaled(what_if["device_speedup"],
                                                       what_if["cloud_speedup"])
    note = (f"evaluated exactly the {len(inputs.after)} cuts measured on the device "
            f"({measured.framework}, {measured.kind}: {measured.source}); cut indices "
            "count these cuts; no DAG optimum without per-layer device times")
    result = analyze_inputs(inputs, links, objective, options, dag=False, what_if=what_if)
    return dataclasses.replace(result, measured_cuts=note)


def analysis_to_dataframe(analysis: Analysis) -> pd.DataFrame:
    """One row per (link, cut), for notebooks; columns are the cut fields plus ``link``
    and ``best`` (whether the cut is the link's best)."""
    import pandas as pd

    rows = [{"link": la.link.name, **la.cut(i), "best": i == la.best}
            for la in analysis.links for i in range(len(la.inputs.after))]
    frame = pd.DataFrame(rows)
    frame.attrs.update(model=analysis.model, objective=analysis.objective.describe(),
                       energy_label=analysis.energy_label,
                       device_label=analysis.device_label)
    return frame
