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

The max-flow is scipy's compiled Dinic (:func:`scipy.sparse.csgraph.maximum_flow`), which
takes 32-bit integer capacities. Every capacity ``c`` is scaled by a unit ``u`` and
rounded *up*, so an edge is charged between ``c`` and ``c + u``: the set found costs less
than ``u * m`` above the exact optimum, ``m`` being the number of finite positive edges
(:attr:`MinCut.resolution`). ``u`` is the best prefix cut's value over ``2**29``
(:data:`SCALE_STEPS`), so the resolution is ``m / 2**29`` of that value: a few parts per
million at 800 layers, far below the noise of any timing.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_array
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from dnntune.analysis.costs import (
    CostOptions,
    CostTable,
    CutInputs,
    LinearCost,
    cost_table,
    linear_cost,
    prefix_table,
)
from dnntune.analysis.links import Link
from dnntune.model.graph import LayerGraph

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
SOURCE = 0
# Integer steps the best prefix cut is worth. Clipped infinite edges (SCALE_STEPS + m + 1)
# plus the flow Dinic adds to their reverse residuals stay below 2**31 (scipy's int32).
SCALE_STEPS = 2**29


@dataclass(frozen=True, eq=False)
class DagPartition:
    """The best device set for one metric on one link.

    Attributes:
        metric: ``"latency"`` or ``"energy"``.
        device_layers: Layers on the phone, in graph order.
        table: Its costs by the cost model (length-1 arrays).
        prefix_index: The prefix cut it equals, or ``None`` if it is not a prefix.
        method: ``"min-cut"`` or ``"prefix"`` (a prefix cut was at least as good).
        resolution: At most this much above the exact optimum of the min-cut's linear
            cost (ms for latency, mJ for energy; see :class:`MinCut`).
    """

    metric: str
    device_layers: tuple[str, ...]
    table: CostTable
    prefix_index: int | None
    method: str
    resolution: float = 0.0

    @property
    def value(self) -> float:
        return float(_metric_array(self.table, self.metric)[0])

    def to_dict(self) -> dict[str, Any]:
        index = len(self.device_layers) if self.prefix_index is None else self.prefix_index
        return {"index": index, "after": self.device_layers[-1] if self.device_layers else None,
                **self.table.row(0), "metric": self.metric, "method": self.method,
                "is_prefix": self.prefix_index is not None,
                "device_layers": list(self.device_layers)}


@dataclass(frozen=True, eq=False)
class FlowNetwork:
    """The flow graph of a layer graph, without capacities (they depend on the link and
    metric). Nodes: 0 = source, ``1..L`` = layers in graph order, then one auxiliary node
    per tensor with several readers, and the sink last. Edges, in this order: ``L``
    ``s -> layer``, ``L`` ``layer -> t``, the uploads, the infinite ones; each pair once.

    Attributes:
        node_count: Number of nodes.
        tails, heads: Every edge's nodes.
        is_input: Per layer, whether it is an input (pinned to the phone).
        download_bytes: Per layer, bytes of the model outputs it computes (0 for inputs).
        upload_bytes: Per upload edge (``producer -> reader`` or ``-> auxiliary``), the
            bytes that cross when it is cut.
        prefix_bytes_up: Bytes crossing each of the ``L + 1`` prefix cuts.
    """

    node_count: int
    tails: npt.NDArray[np.int32]
    heads: npt.NDArray[np.int32]
    is_input: BoolArray
    download_bytes: FloatArray
    upload_bytes: FloatArray
    prefix_bytes_up: FloatArray

    @property
    def sink(self) -> int:
        return self.node_count - 1

    @property
    def layer_count(self) -> int:
        return len(self.is_input)


def flow_network(graph: LayerGraph) -> FlowNetwork:
    """The flow graph of ``graph``, in one pass over its layers and tensors.

    :func:`network_of` keeps the last few, for callers that solve one graph many times.
    """
    count = len(graph.layers)
    position = {name: i + 1 for i, name in enumerate(graph.layer_names)}  # node ids
    readers: dict[str, list[int]] = defaultdict(list)
    for node, layer in enumerate(graph.layers, 1):
        for tname in dict.fromkeys(layer.inputs):
            readers[tname].append(node)
    is_input = [layer.is_input for layer in graph.layers]
    upload: dict[tuple[int, int], float] = defaultdict(float)
    infinite: dict[tuple[int, int], None] = {}
    crossing = [0.0] * (count + 2)  # difference array of the bytes up at prefix cuts
    aux = count + 1
    for tname, users in readers.items():
        tensor = graph.tensor(tname)
        producer = position[tensor.layer]
        # Layer node n is prefix cut n's last device layer; inputs are always on it.
        crossing[0 if is_input[producer - 1] else producer] += tensor.bytes
        crossing[users[-1]] -= tensor.bytes
        infinite.update(((r, producer), None) for r in users)
        if len(users) == 1:
            upload[(producer, users[0])] += tensor.bytes
            continue
        upload[(producer, aux)] += tensor.bytes
        infinite.update(((aux, r), None) for r in users)
        aux += 1
    download = np.zeros(count)
    for tname in dict.fromkeys(graph.model_outputs):
        download[position[graph.tensor(tname).layer] - 1] += graph.tensor(tname).bytes
    inputs = np.array(is_input, dtype=bool)
    download[inputs] = 0.0
    layers = np.arange(1, count + 1)
    pairs = np.array([*upload, *infinite], dtype=np.int32).reshape(-1, 2)
    tails = np.concatenate([np.zeros_like(layers), layers, pairs[:, 0]]).astype(np.int32)
    heads = np.concatenate([layers, np.full_like(layers, aux), pairs[:, 1]]).astype(np.int32)
    return FlowNetwork(aux + 1, tails, heads, inputs, download,
                       np.fromiter(upload.values(), np.float64, len(upload)),
                       np.cumsum(crossing)[:-1])


class _ByIdentity:
    """A hashable handle on an object by identity (a LayerGraph hashes by value, which
    walks every layer)."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ByIdentity) and other.obj is self.obj


@functools.lru_cache(maxsize=8)
def _cached_network(graph: _ByIdentity) -> FlowNetwork:
    return flow_network(graph.obj)  # type: ignore[arg-type]


def network_of(graph: LayerGraph) -> FlowNetwork:
    """:func:`flow_network` of ``graph``, built once for the last 8 graph objects (an
    analysis solves 2 metrics on every link of the same graph)."""
    return _cached_network(_ByIdentity(graph))


@dataclass(frozen=True, eq=False)
class Capacities:
    """Float capacities of a :class:`FlowNetwork` for one linear cost, in its unit.

    Every cut severs exactly one of ``s -> v`` and ``v -> t``, so their common part is
    taken off both (``offset`` in all): the same sets are optimal, and the flow has far
    fewer trivial augmenting paths. Negative per-byte costs count as 0.

    Attributes:
        edges: One per edge of the network, ``inf`` for the constraints.
        per_byte_up: Cost of one byte uploaded (the upload edges are bytes times this).
        offset: What a cut's value lacks of the linear cost without its fixed charge.
    """

    edges: FloatArray
    per_byte_up: float
    offset: float


def capacities(network: FlowNetwork, cost: LinearCost) -> Capacities:
    """Capacities of ``network`` for ``cost``."""
    inputs = network.is_input
    cloud = cost.cloud + max(cost.per_byte_down, 0.0) * network.download_bytes
    device = np.asarray(cost.device, dtype=np.float64)
    common = np.where(inputs, device, np.minimum(cloud, device))
    per_byte_up = max(cost.per_byte_up, 0.0)
    infinite = len(network.tails) - 2 * network.layer_count - len(network.upload_bytes)
    edges = np.concatenate([np.where(inputs, np.inf, cloud - common), device - common,
                            per_byte_up * network.upload_bytes, np.full(infinite, np.inf)])
    return Capacities(edges, per_byte_up, float(common.sum()))


def prefix_cut_values(network: FlowNetwork, caps: Capacities) -> FloatArray:
    """Value of every prefix cut (input layers kept on the source side), ``L + 1``
    entries: upper bounds of the minimum cut."""
    count = network.layer_count
    to_cloud = np.where(network.is_input, 0.0, caps.edges[:count])
    device = np.concatenate([[0.0], np.cumsum(caps.edges[count:2 * count])])
    cloud = np.concatenate([np.cumsum(to_cloud[::-1])[::-1], [0.0]])
    return device + cloud + caps.per_byte_up * network.prefix_bytes_up


def source_side(network: FlowNetwork, device_mask: BoolArray) -> BoolArray:
    """Per node, whether it is on the source side when ``device_mask``'s layers run on
    the phone: an auxiliary node joins them unless one of its readers is in the cloud
    (then the tensor is uploaded once)."""
    side = np.ones(network.node_count, dtype=bool)
    side[1:network.layer_count + 1] = device_mask
    side[network.sink] = False
    aux = network.tails > network.layer_count
    np.logical_and.at(side, network.tails[aux], side[network.heads[aux]])
    return side


def cut_value(network: FlowNetwork, caps: Capacities, device_mask: BoolArray) -> float:
    """Value of the cut that puts ``device_mask``'s layers on the phone (``inf`` if the
    set is not closed under predecessors or leaves an input out)."""
    side = source_side(network, device_mask)
    return float(caps.edges[side[network.tails] & ~side[network.heads]].sum())


def partition_bytes(network: FlowNetwork, device_mask: BoolArray) -> tuple[float, float]:
    """Bytes up and down when ``device_mask``'s layers (closed under predecessors, inputs
    included) run on the phone; as :func:`dnntune.analysis.costs.partition_bytes`, vectorised."""
    side = source_side(network, device_mask)
    first = 2 * network.layer_count
    tails = network.tails[first:first + len(network.upload_bytes)]
    heads = network.heads[first:first + len(network.upload_bytes)]
    up = network.upload_bytes[side[tails] & ~side[heads]].sum()
    return float(up), float(network.download_bytes[~device_mask].sum())


@dataclass(frozen=True, eq=False)
class MinCut:
    """A minimum cut found on integer capacities.

    Attributes:
        device_mask: Per layer, whether it is on the source (phone) side: the largest
            such set among the minimum cuts of the scaled capacities.
        unit: Capacity per integer step.
        resolution: ``unit x`` the number of finite positive edges (0 when the flow is
            0): the set's cut value exceeds the exact minimum by less than this.
        flow_steps: The maximum flow, in steps.
    """

    device_mask: BoolArray
    unit: float
    resolution: float
    flow_steps: int


def solve_min_cut(network: FlowNetwork, caps: Capacities,
                  steps: int = SCALE_STEPS) -> MinCut:
    """The minimum cut of ``network`` under ``caps`` with scipy's Dinic.

    Args:
        network: The flow graph.
        caps: Its capacities.
        steps: Integer steps the best prefix cut is scaled to (the resolution is
            ``m / steps`` of its value). Small values are for tests of the rounding.

    Example:
        >>> # net = flow_network(inputs.graph)
        >>> # cut = solve_min_cut(net, capacities(net, linear_cost(inputs, link, opts, "latency")))
    """
    edges = caps.edges
    positive = int(np.count_nonzero(np.isfinite(edges) & (edges > 0)))
    bound = float(prefix_cut_values(network, caps).min())
    unit = max(bound / steps, float(np.finfo(np.float64).tiny))
    clip = steps + positive + 1  # above any cut worth no more than the best prefix
    with np.errstate(over="ignore"):
        scaled = np.ceil(np.minimum(edges / unit, clip)).astype(np.int32)
    keep = scaled > 0
    shape = (network.node_count, network.node_count)
    graph = csr_array((scaled[keep], (network.tails[keep], network.heads[keep])), shape=shape)
    result = maximum_flow(graph, SOURCE, network.sink, method="dinic")
    flow = int(result.flow_value)
    if flow >= clip:
        raise RuntimeError(f"internal: max flow {flow} reached the clipped capacity {clip}")
    residual = graph - result.flow
    reaches_sink = np.zeros(network.node_count, dtype=bool)
    reaches_sink[breadth_first_order((residual > 0).T, network.sink, directed=True,
                                     return_predecessors=False)] = True
    return MinCut(~reaches_sink[1:network.layer_count + 1], unit,
                  unit * positive if flow else 0.0, flow)


def min_cut_device_set(graph: LayerGraph, cost: LinearCost) -> frozenset[str]:
    """Device set minimising ``cost`` without its fixed charge, input layers included.

    Example:
        >>> # dev = min_cut_device_set(inputs.graph, linear_cost(inputs, link, opts, "latency"))
    """
    network = flow_network(graph)
    mask = solve_min_cut(network, capacities(network, cost)).device_mask
    return frozenset(name for name, on in zip(graph.layer_names, mask, strict=True) if on)


def flow_digraph(network: FlowNetwork, caps: Capacities) -> nx.DiGraph:
    """The same flow graph for networkx (float capacities; constraint edges carry no
    capacity, which networkx reads as infinite): the reference the tests and the
    benchmark compare :func:`solve_min_cut` with."""
    digraph = nx.DiGraph()
    digraph.add_nodes_from(range(network.node_count))
    for a, b, cap in zip(network.tails.tolist(), network.heads.tolist(), caps.edges.tolist(),
                         strict=True):
        if cap == np.inf:
            digraph.add_edge(a, b)
        elif cap > 0:
            digraph.add_edge(a, b, capacity=cap)
    return digraph


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
    network = network_of(inputs.graph)
    cut = solve_min_cut(network, capacities(network, linear_cost(inputs, link, options,
                                                                 metric)))
    ordered = tuple(n for n, on in zip(names, cut.device_mask, strict=True) if on)
    table = _device_set_table(inputs, network, cut.device_mask, link, options)
    prefix_values = _metric_array(prefixes, metric)
    other = _metric_array(prefixes, "energy" if metric == "latency" else "latency")
    best_prefix = int(np.lexsort((np.arange(len(prefix_values)), other, prefix_values))[0])
    if prefix_values[best_prefix] <= _metric_array(table, metric)[0] * (1 + 1e-12):
        method = "min-cut" if ordered == names[:best_prefix] else "prefix"
        return DagPartition(metric, names[:best_prefix], _select(prefixes, best_prefix),
                            best_prefix, method, cut.resolution)
    is_prefix = ordered == names[:len(ordered)]
    return DagPartition(metric, ordered, table, len(ordered) if is_prefix else None, "min-cut",
                        cut.resolution)


def _device_set_table(inputs: CutInputs, network: FlowNetwork, device_mask: BoolArray,
                      link: Link, options: CostOptions) -> CostTable:
    """:func:`dnntune.analysis.costs.partition_table` of a layer mask, with vectorised bytes."""
    costs = inputs.costs
    up, down = partition_bytes(network, device_mask)
    head_share = float(inputs.call_share[device_mask].sum())
    return cost_table([costs.device_ms[device_mask].sum()], [costs.cloud_ms[~device_mask].sum()],
                      [costs.device_mj[device_mask].sum()], [up], [down], link, options,
                      costs.idle_power_mw, device_call_share=head_share,
                      cloud_call_share=1.0 - head_share, call_power_mw=costs.call_power_mw)


def _metric_array(table: CostTable, metric: str) -> np.ndarray:
    return table.latency_ms if metric == "latency" else table.energy_mj


def _select(table: CostTable, i: int) -> CostTable:
    fields: dict[str, Any] = {k: (None if v is None else np.asarray(v)[i:i + 1])
                              for k, v in vars(table).items()}
    return CostTable(**fields)
