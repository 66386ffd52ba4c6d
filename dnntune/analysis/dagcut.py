"""The DAG-optimal partition: the best device set over *all* sets closed under
predecessors, not only prefixes of one topological order, as a minimum s-t cut (DADS,
Hu et al., INFOCOM 2019).

Graph: source ``s`` = the phone, sink ``t`` = the cloud; a layer on the source side runs
on the phone. Edge ``s -> v`` costs ``v``'s cloud cost (cut when ``v`` is in the cloud),
``v -> t`` its device cost. For every data edge ``u -> v`` an infinite edge ``v -> u``
forbids a cloud layer feeding a device layer. A tensor crossing costs its upload once,
however many cloud layers read it: a tensor with several readers goes through an
auxiliary node ``a`` (``u -> a`` at the upload cost, ``a -> reader`` infinite). Input
layers are pinned to the phone; an output computed in the cloud costs its download on
``s -> producer``. The fixed per-inference charge (RTT, radio promotion and tail) is
added afterwards; the min-cut set is then compared with every prefix cut (which covers
mobile-only and cloud-only), so the answer is never worse than the best prefix.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
from networkx.algorithms.flow import preflow_push

from dnntune.analysis.costs import (
    CostOptions,
    CostTable,
    CutInputs,
    LinearCost,
    linear_cost,
    partition_table,
    prefix_table,
)
from dnntune.analysis.links import Link
from dnntune.model.graph import LayerGraph

SOURCE = ("source",)
SINK = ("sink",)


@dataclass(frozen=True, eq=False)
class DagPartition:
    """The best device set for one metric on one link.

    Attributes:
        metric: ``"latency"`` or ``"energy"``.
        device_layers: Layers on the phone, in graph order.
        table: Its costs by the cost model (length-1 arrays).
        prefix_index: The prefix cut it equals, or ``None`` if it is not a prefix.
        method: ``"min-cut"`` or ``"prefix"`` (a prefix cut was at least as good).
    """

    metric: str
    device_layers: tuple[str, ...]
    table: CostTable
    prefix_index: int | None
    method: str

    @property
    def value(self) -> float:
        return float(_metric_array(self.table, self.metric)[0])

    def to_dict(self) -> dict[str, Any]:
        index = len(self.device_layers) if self.prefix_index is None else self.prefix_index
        return {"index": index, "after": self.device_layers[-1] if self.device_layers else None,
                **self.table.row(0), "metric": self.metric, "method": self.method,
                "is_prefix": self.prefix_index is not None,
                "device_layers": list(self.device_layers)}


def min_cut_device_set(graph: LayerGraph, cost: LinearCost) -> frozenset[str]:
    """Device set minimising ``cost`` without its fixed charge, input layers included.

    Example:
        >>> # dev = min_cut_device_set(inputs.graph, linear_cost(inputs, link, opts, "latency"))
    """
    capacity = flow_capacities(graph, cost)
    flow_graph = nx.DiGraph()
    flow_graph.add_nodes_from((SOURCE, SINK))
    for (a, b), cap in capacity.items():
        if math.isinf(cap):
            flow_graph.add_edge(a, b)  # no capacity attribute = infinite in networkx
        elif cap > 0:
            flow_graph.add_edge(a, b, capacity=cap)
    residual = preflow_push(flow_graph, SOURCE, SINK, value_only=True)
    cloud_side = _reaching_sink(residual, 1e-10 * residual.graph["flow_value"])
    names = graph.layer_names
    return frozenset(names[node[1]] for node in flow_graph
                     if node[0] == "layer" and node not in cloud_side)


def _reaching_sink(residual: nx.DiGraph, tol: float) -> set[Any]:
    """Nodes with a residual path to the sink, ignoring round-off below ``tol``: ties
    between equal cuts are then broken the same way on every run."""
    reached = {SINK}
    stack = [SINK]
    while stack:
        v = stack.pop()
        for u, attr in residual.pred[v].items():
            if u not in reached and attr["capacity"] - attr["flow"] > tol:
                reached.add(u)
                stack.append(u)
    return reached


def flow_capacities(graph: LayerGraph, cost: LinearCost) -> dict[tuple[Any, Any], float]:
    """Edge capacities of the flow graph (``math.inf`` for constraints)."""
    capacity: dict[tuple[Any, Any], float] = defaultdict(float)
    position = {name: i for i, name in enumerate(graph.layer_names)}
    readers: dict[str, list[int]] = defaultdict(list)
    for i, layer in enumerate(graph.layers):
        node = ("layer", i)
        capacity[(SOURCE, node)] += math.inf if layer.is_input else float(cost.cloud[i])
        capacity[(node, SINK)] += float(cost.device[i])
        for tname in dict.fromkeys(layer.inputs):
            readers[tname].append(i)
    for tname, users in readers.items():
        tensor = graph.tensor(tname)
        producer = ("layer", position[tensor.layer])
        upload = cost.per_byte_up * tensor.bytes
        for r in users:
            capacity[(("layer", r), producer)] = math.inf
        if len(users) == 1:
            capacity[(producer, ("layer", users[0]))] += upload
        else:
            aux = ("tensor", tname)
            capacity[(producer, aux)] += upload
            for r in users:
                capacity[(aux, ("layer", r))] = math.inf
    for tname in dict.fromkeys(graph.model_outputs):
        i = position[graph.tensor(tname).layer]
        if not graph.layers[i].is_input:
            capacity[(SOURCE, ("layer", i))] += cost.per_byte_down * graph.tensor(tname).bytes
    # Every cut severs exactly one of s -> v and v -> t, so taking their common part off
    # both changes all cuts equally: same minimum, hundreds fewer trivial augmenting paths.
    for i in range(len(graph.layers)):
        to_cloud, to_device = (SOURCE, ("layer", i)), (("layer", i), SINK)
        common = min(capacity[to_cloud], capacity[to_device])
        if math.isfinite(common):
            capacity[to_cloud] -= common
            capacity[to_device] -= common
    return capacity


def optimal_partition(inputs: CutInputs, link: Link, options: CostOptions, metric: str,
                      prefixes: CostTable | None = None) -> DagPartition:
    """The best device set for ``metric`` on ``link`` over all closed sets.

    Args:
        inputs: The model's cut inputs.
        link: The link (a trace uplink enters the min-cut at its mean rate; the result
            is then costed with the trace like every cut).
        options: Energy-model options.
        metric: ``"latency"`` or ``"energy"``.
        prefixes: The prefix-cut table on this link, if already computed.

    Example:
        >>> # best = optimal_partition(inputs, preset_links()["4g"], CostOptions(), "latency")
        >>> # best.device_layers, best.table.latency_ms[0]
    """
    prefixes = prefix_table(inputs, link, options) if prefixes is None else prefixes
    names = inputs.graph.layer_names
    device = min_cut_device_set(inputs.graph, linear_cost(inputs, link, options, metric))
    ordered = tuple(n for n in names if n in device)
    table = partition_table(inputs, ordered, link, options)
    prefix_values = _metric_array(prefixes, metric)
    other = _metric_array(prefixes, "energy" if metric == "latency" else "latency")
    best_prefix = int(np.lexsort((np.arange(len(prefix_values)), other, prefix_values))[0])
    if prefix_values[best_prefix] <= _metric_array(table, metric)[0] * (1 + 1e-12):
        method = "min-cut" if ordered == names[:best_prefix] else "prefix"
        return DagPartition(metric, names[:best_prefix], _select(prefixes, best_prefix),
                            best_prefix, method)
    is_prefix = ordered == names[:len(ordered)]
    return DagPartition(metric, ordered, table, len(ordered) if is_prefix else None, "min-cut")


def _metric_array(table: CostTable, metric: str) -> np.ndarray:
    return table.latency_ms if metric == "latency" else table.energy_mj


def _select(table: CostTable, i: int) -> CostTable:
    fields: dict[str, Any] = {k: (None if v is None else np.asarray(v)[i:i + 1])
                              for k, v in vars(table).items()}
    return CostTable(**fields)
