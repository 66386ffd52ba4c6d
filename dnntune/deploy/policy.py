"""The run-time split policy: which cut to use for the link an app is on right now.

A :class:`Policy` is a table over uplink bandwidth (log-spaced) x round-trip time, one per
objective, giving the best cut among the ones a bundle ships and its predicted latency
and phone energy, by the same cost model as ``dnntune analyze`` (the link's downlink and
radio power model stay as the preset says; the uplink power follows the bandwidth, within
the preset's fitted range). It is plain JSON of a few KB, made to be embedded in an app.

:class:`CutChooser` looks the table up with hysteresis: it leaves the cut it is on only when
the bandwidth estimate is more than ``hysteresis`` (relative) away from the boundary, so
that noise near a boundary does not flip the cut on every inference.

Example:
    >>> # policy = build_policy(inputs, preset_links()["4g"], CostOptions(), cuts=(0, 40, 156))
    >>> # CutChooser(policy, "latency").choose(up_mbps=12.0, rtt_ms=60.0)
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dnntune.analysis.costs import CostOptions, CutInputs, prefix_table
from dnntune.analysis.links import Link
from dnntune.analysis.partition import Objective, best_indices
from dnntune.errors import DnntuneError

POLICY_SCHEMA = 1
METRICS = ("latency", "energy")
DEFAULT_UP_MBPS = tuple(float(f"{x:.4g}") for x in np.geomspace(0.1, 1000.0, 41))
DEFAULT_RTT_MS = (5.0, 10.0, 20.0, 30.0, 45.0, 65.0, 100.0, 150.0, 200.0, 300.0)
DEFAULT_HYSTERESIS = 0.25


class PolicyError(DnntuneError):
    """A policy file that is not a complete, consistent policy."""


@dataclass(frozen=True)
class Policy:
    """Best cut per (objective, RTT, uplink bandwidth).

    Attributes:
        link: The preset whose downlink and radio power the table assumes.
        radio: The radio mode of the energy figures (``warm``/``cold``).
        up_mbps: Uplink grid, increasing, Mbit/s.
        rtt_ms: RTT grid, increasing, ms.
        cuts: The cut indices the table may choose (the model's cut numbering).
        choice: ``choice[metric][r][b]``: the cut for RTT ``r`` and bandwidth ``b``.
        latency_ms, energy_mj: The chosen cut's predicted T and E, same layout.
        hysteresis: Relative bandwidth margin before leaving the current cut.
    """

    link: str
    radio: str
    up_mbps: tuple[float, ...]
    rtt_ms: tuple[float, ...]
    cuts: tuple[int, ...]
    choice: Mapping[str, tuple[tuple[int, ...], ...]]
    latency_ms: Mapping[str, tuple[tuple[float, ...], ...]]
    energy_mj: Mapping[str, tuple[tuple[float, ...], ...]]
    hysteresis: float = DEFAULT_HYSTERESIS

    def cell(self, up_mbps: float, rtt_ms: float) -> tuple[int, int]:
        """``(rtt row, bandwidth column)``: the nearest RTT (log scale) and the largest grid
        bandwidth not above ``up_mbps`` (the first one below the grid): never optimistic."""
        if not (math.isfinite(up_mbps) and up_mbps > 0 and math.isfinite(rtt_ms)
                and rtt_ms >= 0):
            raise DnntuneError(f"policy lookup needs a positive bandwidth and RTT, got "
                               f"{up_mbps!r} Mbit/s, {rtt_ms!r} ms")
        col = max(bisect.bisect_right(self.up_mbps, up_mbps) - 1, 0)
        logs = np.log(np.maximum(np.asarray(self.rtt_ms), 1e-3))
        row = int(np.argmin(np.abs(logs - math.log(max(rtt_ms, 1e-3)))))
        return row, col

    def best(self, metric: str, up_mbps: float, rtt_ms: float) -> int:
        row, col = self.cell(up_mbps, rtt_ms)
        return self.choice[_metric(metric)][row][col]

    def predicted(self, metric: str, up_mbps: float, rtt_ms: float) -> tuple[float, float]:
        """The chosen cut's predicted ``(latency ms, energy mJ)`` at this link."""
        row, col = self.cell(up_mbps, rtt_ms)
        metric = _metric(metric)
        return self.latency_ms[metric][row][col], self.energy_mj[metric][row][col]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": POLICY_SCHEMA, "link": self.link, "radio": self.radio,
                "hysteresis": self.hysteresis, "up_mbps": list(self.up_mbps),
                "rtt_ms": list(self.rtt_ms), "cuts": list(self.cuts),
                "metrics": {m: {"cut": [list(r) for r in self.choice[m]],
                                "latency_ms": [[_short(v) for v in r]
                                               for r in self.latency_ms[m]],
                                "energy_mj": [[_short(v) for v in r]
                                              for r in self.energy_mj[m]]}
                            for m in self.choice}}

    @classmethod
    def from_dict(cls, data: Any, where: str = "policy") -> Policy:
        """Parse and check a policy document; a hole or a foreign cut is one line."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"{where}: expected a JSON object")
        if data.get("schema") != POLICY_SCHEMA:
            raise PolicyError(f"{where}: schema must be {POLICY_SCHEMA}, got "
                              f"{data.get('schema')!r}")
        up = _grid(data, "up_mbps", where, positive=True)
        rtt = _grid(data, "rtt_ms", where, positive=False)
        cuts = data.get("cuts")
        if (not isinstance(cuts, list) or not cuts
                or not all(isinstance(c, int) and c >= 0 for c in cuts)):
            raise PolicyError(f"{where}: cuts must be a non-empty list of cut indices")
        metrics = data.get("metrics")
        if not isinstance(metrics, Mapping) or not metrics:
            raise PolicyError(f"{where}: metrics must map latency/energy to tables")
        choice: dict[str, tuple[tuple[int, ...], ...]] = {}
        latency: dict[str, tuple[tuple[float, ...], ...]] = {}
        energy: dict[str, tuple[tuple[float, ...], ...]] = {}
        for metric, table in metrics.items():
            at = f"{where}: metrics.{metric}"
            if metric not in METRICS or not isinstance(table, Mapping):
                raise PolicyError(f"{at}: expected one of {', '.join(METRICS)} with a table")
            choice[metric] = _table(table.get("cut"), at + ".cut", len(rtt), len(up),
                                    lambda v: isinstance(v, int) and v in cuts, "a cut of "
                                    "'cuts'")
            latency[metric] = _table(table.get("latency_ms"), at + ".latency_ms", len(rtt),
                                     len(up), _finite, "a finite number")
            energy[metric] = _table(table.get("energy_mj"), at + ".energy_mj", len(rtt),
                                    len(up), _finite, "a finite number")
        hysteresis = data.get("hysteresis", DEFAULT_HYSTERESIS)
        if not (_finite(hysteresis) and 0 <= hysteresis < 1):
            raise PolicyError(f"{where}: hysteresis must be in [0, 1), got {hysteresis!r}")
        return cls(str(data.get("link", "")), str(data.get("radio", "")), up, rtt,
                   tuple(cuts), choice, latency, energy, float(hysteresis))


def _short(value: float) -> float:
    """Four significant digits: a prediction is no better, and the table stays small."""
    return float(f"{value:.4g}")


def _metric(metric: str) -> str:
    metric = metric.removesuffix("-first")
    if metric not in METRICS:
        raise DnntuneError(f"objective must be latency-first or energy-first, got {metric!r}")
    return metric


def _finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _grid(data: Mapping[str, Any], key: str, where: str, positive: bool) -> tuple[float, ...]:
    values = data.get(key)
    if (not isinstance(values, list) or not values or not all(_finite(v) for v in values)
            or any(b <= a for a, b in itertools.pairwise(values))
            or values[0] < 0 or (positive and values[0] <= 0)):
        raise PolicyError(f"{where}: {key} must be a non-empty increasing list of "
                          f"{'positive' if positive else 'non-negative'} numbers")
    return tuple(float(v) for v in values)


def _table(rows: Any, where: str, n_rows: int, n_cols: int, ok: Any, what: str
           ) -> tuple[tuple[Any, ...], ...]:
    if not isinstance(rows, list) or len(rows) != n_rows:
        raise PolicyError(f"{where}: expected {n_rows} rows (one per RTT)")
    for r, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n_cols:
            raise PolicyError(f"{where}[{r}]: expected {n_cols} values (one per bandwidth), "
                              f"the table has a hole")
        for c, value in enumerate(row):
            if not ok(value):
                raise PolicyError(f"{where}[{r}][{c}]: expected {what}, got {value!r}")
    return tuple(tuple(row) for row in rows)


def build_policy(inputs: CutInputs, link: Link, options: CostOptions, cuts: Sequence[int],
                 up_mbps: Sequence[float] = DEFAULT_UP_MBPS,
                 rtt_ms: Sequence[float] = DEFAULT_RTT_MS,
                 metrics: Sequence[str] = METRICS,
                 hysteresis: float = DEFAULT_HYSTERESIS) -> Policy:
    """The policy of ``cuts`` (indices into ``inputs``) on ``link`` at every grid point."""
    allowed = sorted(set(cuts))
    n = len(inputs.after)
    if not allowed or allowed[0] < 0 or allowed[-1] >= n:
        raise DnntuneError(f"policy cuts must be between 0 and {n - 1}, got {list(cuts)}")
    rates = np.asarray(up_mbps, dtype=np.float64)[:, np.newaxis]
    mask = np.full(n, np.inf)
    mask[allowed] = 0.0
    choice: dict[str, list[list[int]]] = {m: [] for m in metrics}
    latency: dict[str, list[list[float]]] = {m: [] for m in metrics}
    energy: dict[str, list[list[float]]] = {m: [] for m in metrics}
    for rtt in rtt_ms:
        table = prefix_table(inputs, dataclasses.replace(link, rtt_ms=float(rtt), trace=None),
                             options, up_mbps=rates)
        t = np.broadcast_to(table.latency_ms, (len(rates), n)) + mask
        e = np.broadcast_to(table.energy_mj, (len(rates), n)) + mask
        for metric in metrics:
            best = best_indices(t, e, Objective(f"{_metric(metric)}-first"))
            cols = np.arange(len(rates))
            choice[metric].append([int(i) for i in best])
            latency[metric].append([float(v) for v in t[cols, best]])
            energy[metric].append([float(v) for v in e[cols, best]])
    freeze = lambda rows: tuple(tuple(r) for r in rows)  # noqa: E731
    return Policy(link.name, options.radio, tuple(float(u) for u in up_mbps),
                  tuple(float(r) for r in rtt_ms), tuple(allowed),
                  {m: freeze(choice[m]) for m in metrics},
                  {m: freeze(latency[m]) for m in metrics},
                  {m: freeze(energy[m]) for m in metrics}, hysteresis)


def chosen_cuts(policy: Policy) -> list[int]:
    """Every cut some grid point chooses, in increasing order."""
    return sorted({c for table in policy.choice.values() for row in table for c in row})


class CutChooser:
    """The cut to use now, from a policy, with hysteresis (see module docstring)."""

    def __init__(self, policy: Policy, objective: str = "latency-first") -> None:
        self.policy = policy
        self.metric = _metric(objective)
        self.current: int | None = None
        self.switches = 0

    def choose(self, up_mbps: float, rtt_ms: float) -> int:
        best = self.policy.best(self.metric, up_mbps, rtt_ms)
        if self.current is None:
            self.current = best
        elif best != self.current:
            h = self.policy.hysteresis
            near = {self.policy.best(self.metric, up_mbps * (1 - h), rtt_ms),
                    self.policy.best(self.metric, up_mbps * (1 + h), rtt_ms)}
            if self.current not in near:
                self.current = best
                self.switches += 1
        return self.current
