"""Analyzer benchmark on a synthetic InceptionV3-sized profile (313 layers, a DAG with
four-branch inception modules).

Run from the repository root::

    .venv/bin/python benchmarks/bench_analyzer.py [--full-baseline]

Each figure is the best of several runs (``time.perf_counter``), printed next to a
straightforward pure-Python loop computing the same result in the same run; the two
results are checked to agree. Targets (issue 5): all cuts x 3 links x 2 objectives
<= 10 ms; a sweep of 100,000 uplink bandwidths <= 1 s; the DAG min-cut <= 100 ms.
The sweep's pure-Python loop is timed on 1,000 bandwidths and scaled by 100 unless
``--full-baseline`` is given.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnntune.analysis.costs import (
    CostOptions,
    CutInputs,
    LinearCost,
    cut_inputs,
    layer_costs,
    linear_cost,
    partition_table,
    prefix_table,
)
from dnntune.analysis.dagcut import SOURCE, capacities, flow_network, min_cut_device_set
from dnntune.analysis.links import Link, preset_links
from dnntune.analysis.partition import Objective, analyze_profiles, best_indices
from dnntune.analysis.sensitivity import best_cut_for_uplinks
from dnntune.model.graph import LayerGraph
from tests.analyzer_fixtures import inception_like_profiles

OBJECTIVES = (Objective("latency-first"), Objective("energy-first"))


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Smallest wall time of ``repeat`` calls, in seconds, and the last result."""
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def vectorised_cuts(inputs: CutInputs, links: list[Link], options: CostOptions) -> list[int]:
    out = []
    for link in links:
        table = prefix_table(inputs, link, options)
        out += [int(best_indices(table.latency_ms, table.energy_mj, o)) for o in OBJECTIVES]
    return out


def python_cuts(inputs: CutInputs, links: list[Link]) -> list[int]:
    """The same table and choice with plain Python floats and running sums."""
    costs = inputs.costs
    dev, cloud, dev_mj = (a.tolist() for a in (costs.device_ms, costs.cloud_ms, costs.device_mj))
    up_b, down_b = inputs.bytes_up.tolist(), inputs.bytes_down.tolist()
    out = []
    for link in links:
        rows = []
        tm, em, tc = 0.0, 0.0, sum(cloud)
        for p in range(len(dev) + 1):
            t_up = up_b[p] / (link.up_mbps * 125.0)
            t_down = down_b[p] / (link.down_mbps * 125.0)
            tt = (link.rtt_ms if up_b[p] + down_b[p] > 0 else 0.0) + t_up + t_down
            et = (link.up_power_mw() * t_up + link.down_power_mw() * t_down) / 1000.0
            rows.append((tm + tt + tc, em + et))
            if p < len(dev):
                tm, em, tc = tm + dev[p], em + dev_mj[p], tc - cloud[p]
        out.append(min(range(len(rows)), key=lambda i: (rows[i][0], rows[i][1])))
        out.append(min(range(len(rows)), key=lambda i: (rows[i][1], rows[i][0])))
    return out


def python_sweep(inputs: CutInputs, link: Link, rates: np.ndarray) -> list[int]:
    """Latency-first best cut per uplink rate, one rate and one cut at a time."""
    fixed = (inputs.tm_ms + inputs.tc_ms).tolist()
    up_b, down_b = inputs.bytes_up.tolist(), inputs.bytes_down.tolist()
    out = []
    for rate in rates.tolist():
        best, best_t = -1, math.inf
        for p in range(len(fixed)):
            crosses = up_b[p] + down_b[p] > 0
            t = (fixed[p] + (link.rtt_ms if crosses else 0.0) + up_b[p] / (rate * 125.0)
                 + down_b[p] / (link.down_mbps * 125.0))
            if t < best_t:
                best, best_t = p, t
        out.append(best)
    return out


def python_min_cut(graph: LayerGraph, cost: LinearCost) -> tuple[float, set[Any]]:
    """Edmonds-Karp max flow (BFS augmenting paths) on dicts, on the same flow graph as
    dnntune.analysis.dagcut; returns the cut value and the source side."""
    network = flow_network(graph)
    sink = network.sink
    residual: dict[Any, dict[Any, float]] = {}
    for a, b, cap in zip(network.tails.tolist(), network.heads.tolist(),
                         capacities(network, cost).edges.tolist(), strict=True):
        residual.setdefault(a, {})[b] = residual.get(a, {}).get(b, 0.0) + cap
        residual.setdefault(b, {}).setdefault(a, 0.0)
    flow = 0.0
    while True:
        parent: dict[Any, Any] = {SOURCE: None}
        queue = deque([SOURCE])
        while queue and sink not in parent:
            u = queue.popleft()
            for v, cap in residual[u].items():
                if cap > 1e-12 and v not in parent:
                    parent[v] = u
                    queue.append(v)
        if sink not in parent:
            return flow, set(parent)
        path: list[tuple[Any, Any]] = []
        v = sink
        while parent[v] is not None:
            path.append((parent[v], v))
            v = parent[v]
        push = min(residual[u][v] for u, v in path)
        for u, v in path:
            residual[u][v] -= push
            residual[v][u] += push
        flow += push


def report(rows: list[tuple[str, float, float, str, str]]) -> None:
    print(f"{'figure':<46} {'dnntune':>12} {'pure Python':>13} {'ratio':>8}  target")
    for name, fast, slow, note, target in rows:
        print(f"{name:<46} {fast * 1e3:>9.3f} ms {slow * 1e3:>10.1f} ms "
              f"{f'{slow / fast:.2g}x':>8}  {target}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-baseline", action="store_true",
                        help="time the pure-Python sweep on all 100,000 bandwidths")
    args = parser.parse_args()
    device, cloud = inception_like_profiles()
    links = list(preset_links().values())
    options = CostOptions()
    prep, inputs = best_time(lambda: cut_inputs(device.graph, layer_costs(device, cloud)), 20)
    print(f"model: {inputs.graph.model_name} ({len(inputs.graph.layers)} layers, "
          f"{len(inputs.after)} cuts); inputs (profiles -> prefix sums and cut bytes): "
          f"{prep * 1e3:.2f} ms once per profile pair")
    rows = []

    fast, got = best_time(lambda: vectorised_cuts(inputs, links, options), 50)
    slow, want = best_time(lambda: python_cuts(inputs, links), 5)
    assert got == want, (got, want)
    rows.append(("all cuts x 3 links x 2 objectives", fast, slow, "", "<= 10 ms"))

    rates = np.geomspace(0.05, 1000.0, 100_000)
    link = links[1]
    fast, got = best_time(lambda: best_cut_for_uplinks(inputs, link, Objective(), options,
                                                       rates), 3)
    subset = rates if args.full_baseline else rates[::100]
    slow, want = best_time(lambda: python_sweep(inputs, link, subset), 1)
    assert got[:: 1 if args.full_baseline else 100].tolist() == want
    scale = len(rates) / len(subset)
    note = "" if scale == 1 else f" (loop timed on {len(subset):,} rates, x{scale:.0f})"
    rows.append(("sweep of 100,000 uplink bandwidths (4g)", fast, slow * scale, note, "<= 1 s"))

    for metric in ("latency", "energy"):
        lin = linear_cost(inputs, links[2], options, metric)
        fast, got = best_time(partial(min_cut_device_set, inputs.graph, lin), 10)
        slow, (_, side) = best_time(partial(python_min_cut, inputs.graph, lin), 1)
        names = inputs.graph.layer_names
        want = {names[node - 1] for node in side if 1 <= node <= len(names)}
        values = [float(getattr(partition_table(inputs, s, links[2], options),
                                "latency_ms" if metric == "latency" else "energy_mj")[0])
                  for s in (got, want)]
        assert math.isclose(*values, rel_tol=1e-9), values  # equal cuts; ties may differ
        rows.append((f"DAG min-cut, {metric} (wifi)", fast, slow,
                     " (scipy Dinic vs a plain Edmonds-Karp loop)", "<= 100 ms"))
    report(rows)
    whole, _ = best_time(lambda: analyze_profiles(device, cloud, links), 3)
    print(f"whole analysis (3 links, tables, objectives, Pareto, 6 min-cuts): "
          f"{whole * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
