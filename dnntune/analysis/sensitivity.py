"""How robust a recommendation is: uplink breakpoints and what-if compute scaling.

* :func:`uplink_segments`: over a range of constant uplink bandwidths (default
  0.05-1000 Mbit/s), the intervals on which each cut is the best, found by a dense
  vectorised sweep on a log grid, then bisection of every change to a relative
  tolerance (a cut best on an interval narrower than one grid step can be missed).
* :func:`what_if`: the best cut per link when the device or the cloud computes
  ``k`` times faster (e.g. "cloud 10x faster").
* :func:`energy_robustness`: whether the energy-first cut on a link changes when every
  radio power is halved or doubled, or under the other radio modes (part of every
  ``dnntune analyze`` report, one line per link).

Example:
    >>> # segs = uplink_segments(analysis.inputs, preset_links()["4g"], Objective(),
    >>> #                        CostOptions())
    >>> # [(round(s.from_mbps, 2), s.after) for s in segs]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from dnntune.analysis.costs import CostOptions, CutInputs, prefix_table
from dnntune.analysis.links import Link, scaled_radio
from dnntune.analysis.partition import Analysis, Objective, best_indices
from dnntune.errors import ConfigError

DEFAULT_RANGE_MBPS = (0.05, 1000.0)
DEFAULT_SCENARIOS = ((1.0, 10.0), (1.0, 0.1), (2.0, 1.0), (0.5, 1.0))
RADIO_FACTORS = (0.5, 2.0)


def best_cut_for_uplinks(inputs: CutInputs, link: Link, objective: Objective,
                         options: CostOptions, up_mbps: npt.ArrayLike,
                         chunk: int | None = None) -> npt.NDArray[np.int64]:
    """Best prefix cut for each constant uplink bandwidth (-1: none feasible).

    Evaluated ``chunk`` bandwidths at a time (default: blocks of about 16k values, 128 kB
    per array, which stay in cache; measured 2-3x faster than large blocks).
    """
    rates = np.atleast_1d(np.asarray(up_mbps, dtype=np.float64))
    if np.any(~np.isfinite(rates) | (rates <= 0)):
        raise ConfigError("uplink sweep", "bandwidths must be positive Mbit/s")
    chunk = chunk or max(16, 2**14 // len(inputs.after))
    out = np.empty(len(rates), dtype=np.int64)
    for start in range(0, len(rates), chunk):
        block = rates[start:start + chunk, np.newaxis]
        table = prefix_table(inputs, link, options, up_mbps=block)
        out[start:start + chunk] = best_indices(table.latency_ms, table.energy_mj, objective)
    return out


@dataclass(frozen=True)
class UplinkSegment:
    """On uplinks from ``from_mbps`` to ``to_mbps`` the best cut is ``index`` (-1: none)."""

    from_mbps: float
    to_mbps: float
    index: int
    after: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def uplink_segments(inputs: CutInputs, link: Link, objective: Objective,
                    options: CostOptions,
                    range_mbps: tuple[float, float] = DEFAULT_RANGE_MBPS,
                    grid: int = 2048, rel_tol: float = 1e-9) -> list[UplinkSegment]:
    """Intervals of constant uplink bandwidth sharing one best cut, in increasing order.

    The link's downlink, RTT and radio power stay as they are; a trace uplink is
    replaced by constant rates.
    """
    lo, hi = range_mbps
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ConfigError("uplink range", f"expected 0 < low < high Mbit/s, got {range_mbps}")
    xs = np.geomspace(lo, hi, grid)
    best = best_cut_for_uplinks(inputs, link, objective, options, xs)

    def best_at(x: float) -> int:
        return int(best_cut_for_uplinks(inputs, link, objective, options, [x])[0])

    edges = [lo]
    indices = [int(best[0])]
    for k in np.flatnonzero(best[1:] != best[:-1]):
        left, right = float(xs[k]), float(xs[k + 1])
        while indices[-1] != int(best[k + 1]):
            edge = _bisect(best_at, left, right, indices[-1], rel_tol)
            edges.append(edge)
            indices.append(best_at(edge))
            left = edge
    edges.append(hi)
    return [UplinkSegment(edges[i], edges[i + 1], idx, inputs.after[idx] if idx >= 0 else None)
            for i, idx in enumerate(indices)]


def _bisect(best_at: Any, left: float, right: float, current: int, rel_tol: float) -> float:
    """Smallest bandwidth in ``(left, right]`` (to ``rel_tol``) whose best is not ``current``."""
    while right / left - 1.0 > rel_tol:
        mid = math.sqrt(left * right)
        if best_at(mid) == current:
            left = mid
        else:
            right = mid
    return right


def uplink_breakpoints(segments: Sequence[UplinkSegment]) -> list[float]:
    """The bandwidths (Mbit/s) at which the best cut changes."""
    return [s.from_mbps for s in segments[1:]]


def what_if(inputs: CutInputs, links: Iterable[Link], objective: Objective,
            options: CostOptions,
            scenarios: Iterable[tuple[float, float]] = DEFAULT_SCENARIOS) -> list[dict[str, Any]]:
    """Best cut per link when compute is ``(device_speedup, cloud_speedup)`` times faster.

    Returns:
        One dict per scenario and link: speedups, link, best ``index``/``after`` (or
        ``None``), its ``latency_ms`` and ``energy_mj``.
    """
    links = list(links)
    rows = []
    for device_speedup, cloud_speedup in scenarios:
        scaled = inputs.scaled(device_speedup, cloud_speedup)
        for link in links:
            table = prefix_table(scaled, link, options)
            i = int(best_indices(table.latency_ms, table.energy_mj, objective))
            rows.append({"device_speedup": device_speedup, "cloud_speedup": cloud_speedup,
                         "link": link.name, "index": i if i >= 0 else None,
                         "after": scaled.after[i] if i >= 0 else None,
                         "latency_ms": float(table.latency_ms[i]) if i >= 0 else None,
                         "energy_mj": float(table.energy_mj[i]) if i >= 0 else None})
    return rows


def add_sensitivity(analysis: Analysis,
                    range_mbps: tuple[float, float] = DEFAULT_RANGE_MBPS,
                    scenarios: Iterable[tuple[float, float]] = DEFAULT_SCENARIOS) -> Analysis:
    """``analysis`` with, per link, its uplink segments, breakpoints and what-if rows."""
    scenarios = list(scenarios)
    per_link: dict[str, Any] = {}
    for la in analysis.links:
        segs = uplink_segments(analysis.inputs, la.link, analysis.objective, analysis.options,
                               range_mbps)
        per_link[la.link.name] = {
            "uplink_range_mbps": list(range_mbps),
            "uplink_segments": [_as_cut(analysis.inputs, s.to_dict()) for s in segs],
            "uplink_breakpoints_mbps": uplink_breakpoints(segs),
            "what_if": [_as_cut(analysis.inputs, row) for row in
                        what_if(analysis.inputs, [la.link], analysis.objective,
                                analysis.options, scenarios)],
        }
    return replace(analysis, sensitivity=per_link)


def energy_robustness(inputs: CutInputs, link: Link, objective: Objective,
                      options: CostOptions) -> dict[str, Any]:
    """Does the energy-first cut on ``link`` survive the radio's uncertainty?

    The cut is recomputed with every radio power (transfer fit, connected/tail,
    promotion) times 0.5 and 2 (:func:`~dnntune.analysis.links.scaled_radio`), and under
    each other radio mode (warm, cold; a periodic analysis is compared with both).
    ``objective`` is used if it is energy-first (its constraints kept), else plain
    energy-first.

    Returns:
        ``{"index", "after", "robust", "variants": [{"what", "index", "after",
        "energy_mj"}]}``; ``index`` ``None`` when no cut is feasible.
    """
    if objective.metric != "energy":
        objective = Objective("energy-first")

    def best(lk: Link, opts: CostOptions) -> tuple[int | None, float | None]:
        table = prefix_table(inputs, lk, opts)
        i = int(best_indices(table.latency_ms, table.energy_mj, objective))
        return (i, float(table.energy_mj[i])) if i >= 0 else (None, None)

    cases = [(f"radio power x{f:g}", scaled_radio(link, f), options) for f in RADIO_FACTORS]
    cases += [(f"radio {mode}", link, replace(options, radio=mode, inference_rate_hz=None))
              for mode in ("warm", "cold") if mode != options.radio]
    base, _ = best(link, options)
    variants = []
    for what, lk, opts in cases:
        i, energy = best(lk, opts)
        variants.append(_as_cut(inputs, {"what": what, "index": i,
                                         "after": inputs.after[i] if i is not None else None,
                                         "energy_mj": energy}))
    chosen = _as_cut(inputs, {"index": base,
                              "after": inputs.after[base] if base is not None else None})
    same = all((v["index"], v.get("encoding")) == (chosen["index"], chosen.get("encoding"))
               for v in variants)
    return {**chosen, "robust": same, "variants": variants}


def add_robustness(analysis: Analysis) -> Analysis:
    """``analysis`` with :func:`energy_robustness` for every link (``robustness``)."""
    return replace(analysis, robustness={
        la.link.name: energy_robustness(analysis.inputs, la.link, analysis.objective,
                                        analysis.options)
        for la in analysis.links})


def _as_cut(inputs: CutInputs, row: dict[str, Any]) -> dict[str, Any]:
    """With wire encodings, a row number as its cut index and encoding."""
    i = row.get("index")
    if inputs.cut_index is None or inputs.row_fields is None or i is None or i < 0:
        return row
    return {**row, "index": int(inputs.cut_index[i]),
            "encoding": inputs.row_fields["encoding"][i]}
