"""DAG-optimal partitions: hand-built DAGs, brute force over closed sets, the integer
scaling's resolution, and networkx's min-cut on every zoo model."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from networkx.algorithms.flow import preflow_push

from dnntune.analysis.costs import (
    CostOptions,
    LinearCost,
    cut_inputs,
    layer_costs,
    linear_cost,
    partition_bytes,
    partition_table,
    prefix_cut_bytes,
    prefix_table,
)
from dnntune.analysis.dagcut import (
    SCALE_STEPS,
    SOURCE,
    FlowNetwork,
    capacities,
    cut_value,
    flow_digraph,
    flow_network,
    min_cut_device_set,
    optimal_partition,
    prefix_cut_values,
    solve_min_cut,
)
from dnntune.analysis.dagcut import partition_bytes as network_partition_bytes
from dnntune.analysis.links import Link, preset_links
from dnntune.analysis.partition import CUT_FIELDS
from dnntune.model.zoo import ZOO
from tests.analyzer_fixtures import build_graph, make_profiles, random_graph, random_profiles
from tests.test_costs import closed_sets

REPO = Path(__file__).resolve().parents[1]


def link(up_mbps: float, down_mbps: float, rtt_ms: float = 0.0) -> Link:
    """Radio at a flat 1 W, so energy (mJ) = transfer time (ms)."""
    return Link("lab", up_mbps=up_mbps, down_mbps=down_mbps, rtt_ms=rtt_ms,
                alpha_up_mw_per_mbps=0.0, alpha_down_mw_per_mbps=0.0, beta_mw=1000.0,
                promotion_ms=50.0, promotion_mw=800.0, tail_ms=10_000.0, tail_mw=600.0)


def two_branch_inputs():
    """in(100 kB) -> C(1 kB) -> X(heavy) ; in -> Y(1 kB) ; Z(X, Y)(1 kB, output).

    In the order [in, C, X, Y, Z], X precedes Y, so no prefix runs the cheap compressors
    C and Y on the phone while the heavy X runs in the cloud: the DAG optimum does.
    """
    graph = build_graph("two-branch", [("in", (), 100_000), ("C", ("in",), 1000),
                                       ("X", ("C",), 1000), ("Y", ("in",), 1000),
                                       ("Z", ("X", "Y"), 1000)])
    device, cloud = make_profiles(graph, [0, 1, 500, 1, 1], [0, 0.1, 5, 0.1, 0.1],
                                  [0, 1, 500, 1, 1])
    return cut_inputs(graph, layer_costs(device, cloud))


def test_dag_optimum_beats_every_prefix_cut() -> None:
    inputs = two_branch_inputs()
    lab = link(up_mbps=1.0, down_mbps=1.0)  # 125 bytes/ms
    prefixes = prefix_table(inputs, lab, CostOptions())
    best = optimal_partition(inputs, lab, CostOptions(), "latency", prefixes)
    assert best.device_layers == ("in", "C", "Y")
    assert best.prefix_index is None
    assert best.method == "min-cut"
    # Tm 2 + up 2 kB (16 ms) + down 1 kB (8 ms) + Tc X 5 + Z 0.1
    assert best.value == pytest.approx(31.1)
    assert float(prefixes.latency_ms.min()) == pytest.approx(503.0)  # mobile-only
    energy = optimal_partition(inputs, lab, CostOptions(), "energy", prefixes)
    assert energy.device_layers == ("in", "C", "Y")
    # Em + 1 W x 24 ms + the radio connected (600 mW) while the cloud computes 5.1 ms
    assert energy.value == pytest.approx(2.0 + 16.0 + 8.0 + 0.6 * 5.1)
    entry = best.to_dict()
    assert set(CUT_FIELDS) <= set(entry)
    assert entry["device_layers"] == ["in", "C", "Y"]
    assert entry["is_prefix"] is False


def test_a_tensor_with_several_cloud_readers_is_sent_once() -> None:
    """in(200 kB) -> A(50 kB) read by B and C -> D(B, C). Sending A once (50 ms at
    8 Mbit/s) and running B, C, D in the cloud costs 54.1 ms; counting A twice (104 ms)
    would lose to mobile-only (80 ms)."""
    graph = build_graph("fan-out", [("in", (), 200_000), ("A", ("in",), 50_000),
                                    ("B", ("A",), 100), ("C", ("A",), 100),
                                    ("D", ("B", "C"), 100)])
    device, cloud = make_profiles(graph, [0, 1, 39, 39, 1], [0, 0.1, 1, 1, 1])
    inputs = cut_inputs(graph, layer_costs(device, cloud))
    lab = link(up_mbps=8.0, down_mbps=8.0)
    device_set = min_cut_device_set(graph, linear_cost(inputs, lab, CostOptions(), "latency"))
    assert device_set == {"in", "A"}
    table = partition_table(inputs, device_set, lab, CostOptions())
    assert table.bytes_up[0] == 50_000
    assert table.latency_ms[0] == pytest.approx(1 + 50 + 0.1 + 3)


@pytest.mark.parametrize(("down_mbps", "expected"), [(8.0, {"in", "A", "B"}),
                                                     (1000.0, {"in"})])
def test_an_output_left_in_the_cloud_costs_its_download(down_mbps: float,
                                                        expected: set[str]) -> None:
    """in -> A(1 kB) -> B(100 kB output): B is 50 ms on the phone, 1 ms in the cloud; its
    100 kB take 100 ms to come back at 8 Mbit/s but 0.8 ms at 1 Gbit/s."""
    graph = build_graph("download", [("in", (), 10), ("A", ("in",), 1000),
                                     ("B", ("A",), 100_000)])
    device, cloud = make_profiles(graph, [0, 1, 50], [0, 1, 1])
    inputs = cut_inputs(graph, layer_costs(device, cloud))
    lab = link(up_mbps=8.0, down_mbps=down_mbps)
    lin = linear_cost(inputs, lab, CostOptions(), "latency")
    assert min_cut_device_set(graph, lin) == expected


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 8), metric=st.sampled_from(
    ["latency", "energy"]), idle=st.booleans(), rate=st.sampled_from([None, 0.2, 0.001]),
       rtt=st.sampled_from([0.0, 30.0]), up=st.sampled_from([0.5, 8.0, 200.0]))
def test_min_cut_equals_brute_force_over_closed_sets(seed: int, n: int, metric: str,
                                                     idle: bool, rate: float | None,
                                                     rtt: float, up: float) -> None:
    rng = random.Random(seed)
    graph = random_graph(rng, n)
    inputs = cut_inputs(graph, layer_costs(*random_profiles(rng, graph)))
    lab = link(up_mbps=up, down_mbps=2 * up, rtt_ms=rtt)
    options = CostOptions(idle_wait=idle, inference_rate_hz=rate)
    prefixes = prefix_table(inputs, lab, options)

    def value(table) -> float:
        return float((table.latency_ms if metric == "latency" else table.energy_mj)[0])

    candidates = [value(partition_table(inputs, s, lab, options)) for s in closed_sets(graph)]
    candidates += list(prefixes.latency_ms if metric == "latency" else prefixes.energy_mj)
    best = optimal_partition(inputs, lab, options, metric, prefixes)
    if rate == 0.2 and up == 0.5:
        # A 0.5 Mbit/s link may not finish within the 5 s gap (saturated): the min-cut's
        # linear tail is then an approximation; it must still be a valid partition.
        assert best.value >= min(candidates) - 1e-9
        return
    # Exact up to the integer scaling's stated resolution (and float round-off).
    assert best.value == pytest.approx(min(candidates), rel=1e-9, abs=best.resolution + 1e-9)
    assert best.resolution <= 1e-6 * float(np.max(prefixes.latency_ms if metric == "latency"
                                                  else prefixes.energy_mj))
    assert best.value <= float(np.min(prefixes.latency_ms if metric == "latency"
                                      else prefixes.energy_mj)) + 1e-9
    device = set(best.device_layers)
    producer = {t.name: layer.name for layer in graph.layers for t in layer.outputs}
    for layer in graph.layers:
        if layer.name in device:
            assert {producer[t] for t in layer.inputs} <= device  # closed under predecessors


def test_seeded_graphs_with_non_prefix_optima_match_brute_force() -> None:
    """Guarantee the property test's hard case is exercised: random DAGs whose optimum
    is not a prefix of the layer order."""
    found = 0
    for seed in range(150):
        rng = random.Random(seed)
        graph = random_graph(rng, rng.randint(4, 8))
        inputs = cut_inputs(graph, layer_costs(*random_profiles(rng, graph)))
        lab = link(up_mbps=0.5, down_mbps=1.0, rtt_ms=30.0)
        best = optimal_partition(inputs, lab, CostOptions(), "energy")
        if best.prefix_index is not None:
            continue
        found += 1
        brute = min(float(partition_table(inputs, s, lab, CostOptions()).energy_mj[0])
                    for s in closed_sets(graph))
        assert best.value == pytest.approx(brute, rel=1e-7)
    assert found >= 5


def test_dag_partitions_do_not_depend_on_hash_randomisation() -> None:
    """Equal-cost cuts must be broken the same way in every process (string hashing
    changes set order between runs)."""
    code = ("from tests.analyzer_fixtures import inception_like_profiles\n"
            "from dnntune.analysis.partition import analyze_profiles\n"
            "from dnntune.analysis.links import resolve_links\n"
            "a = analyze_profiles(*inception_like_profiles(), resolve_links(None))\n"
            "print([(la.dag[m].device_layers, la.dag[m].value) for la in a.links"
            " for m in ('latency', 'energy')])\n")
    outputs = set()
    for seed in ("1", "2"):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                cwd=REPO, timeout=300, env={**os.environ, "PYTHONHASHSEED": seed})
        assert result.returncode == 0, result.stderr
        outputs.add(result.stdout)
    assert len(outputs) == 1


def random_linear_cost(rng: random.Random, n: int) -> LinearCost:
    """Costs over twelve orders of magnitude, some exactly zero."""
    def draw() -> float:
        return 0.0 if rng.random() < 0.15 else 10 ** rng.uniform(-6, 6)
    return LinearCost(np.array([draw() for _ in range(n)]), np.array([draw() for _ in range(n)]),
                      10 ** rng.uniform(-9, 0), 10 ** rng.uniform(-9, 0), 0.0)


def linear_value(graph, cost: LinearCost, device: set[str]) -> float:
    """The linear cost of a device set without its fixed charge, from the cost model."""
    mask = np.array([name in device for name in graph.layer_names])
    up, down = partition_bytes(graph, device)
    return float(cost.device[mask].sum() + cost.cloud[~mask].sum() + cost.per_byte_up * up
                 + cost.per_byte_down * down)


def device_mask(graph, device: set[str]) -> np.ndarray:
    return np.array([name in device for name in graph.layer_names])


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 8),
       steps=st.sampled_from([1, 2, 5, 30, 1000, 2**20, SCALE_STEPS]))
def test_scaled_min_cut_is_within_its_resolution_of_the_exact_optimum(seed: int, n: int,
                                                                      steps: int) -> None:
    """Rounding every capacity up to whole units of u = best prefix / steps charges each
    edge between c and c + u, so the set found is worse than the exact optimum by less
    than u times the number of finite positive edges: the stated resolution. Coarse
    ``steps`` make the rounding matter; brute force over every closed set is exact."""
    rng = random.Random(seed)
    graph = random_graph(rng, n)
    cost = random_linear_cost(rng, n)
    network = flow_network(graph)
    caps = capacities(network, cost)
    values = {}
    for device in closed_sets(graph):
        value = cut_value(network, caps, device_mask(graph, device))
        # The flow graph prices every closed set as the cost model does, less the offset.
        assert value + caps.offset == pytest.approx(linear_value(graph, cost, device),
                                                    rel=1e-9, abs=1e-12)
        values[frozenset(device)] = value
    cut = solve_min_cut(network, caps, steps)
    found = cut_value(network, caps, cut.device_mask)
    best = min(values.values())
    assert frozenset(np.array(graph.layer_names)[cut.device_mask]) in values  # closed
    positive = np.count_nonzero(np.isfinite(caps.edges) & (caps.edges > 0))
    assert cut.resolution == (cut.unit * positive if cut.flow_steps else 0.0)
    assert best <= found <= best + cut.resolution + 1e-12 * max(best, 1.0)
    assert cut.unit == pytest.approx(prefix_cut_values(network, caps).min() / steps)


def test_coarse_rounding_does_pick_worse_sets_but_never_beyond_the_resolution() -> None:
    """The property test above has teeth: at 1-5 steps the rounding does change the set
    chosen on seeded random graphs, each time by less than the stated resolution, and
    at full scale the same graphs are solved exactly."""
    worse = 0
    for seed in range(300):
        rng = random.Random(seed)
        graph = random_graph(rng, rng.randint(4, 8))
        network = flow_network(graph)
        caps = capacities(network, random_linear_cost(rng, len(graph.layers)))
        best = min(cut_value(network, caps, device_mask(graph, d))
                   for d in closed_sets(graph))
        coarse = solve_min_cut(network, caps, steps=rng.choice([1, 2, 5]))
        found = cut_value(network, caps, coarse.device_mask)
        worse += found > best * (1 + 1e-9)
        assert found < best + coarse.resolution or found <= best * (1 + 1e-9)
        fine = solve_min_cut(network, caps)
        assert cut_value(network, caps, fine.device_mask) <= best * (1 + 1e-6) + fine.resolution
    assert worse >= 10


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 12))
def test_flow_network_prices_prefixes_and_bytes_as_the_cost_model(seed: int, n: int) -> None:
    rng = random.Random(seed)
    graph = random_graph(rng, n)
    network = flow_network(graph)
    caps = capacities(network, random_linear_cost(rng, n))
    np.testing.assert_array_equal(network.prefix_bytes_up, prefix_cut_bytes(graph)[0])
    inputs = {layer.name for layer in graph.layers if layer.is_input}
    names = graph.layer_names
    prefix_values = prefix_cut_values(network, caps)
    for p in range(len(names) + 1):
        device = set(names[:p]) | inputs
        mask = device_mask(graph, device)
        assert prefix_values[p] == pytest.approx(cut_value(network, caps, mask), rel=1e-12)
        assert network_partition_bytes(network, mask) == partition_bytes(graph, device)


def networkx_mask(network: FlowNetwork, caps) -> np.ndarray:
    """The device side of networkx's min-cut (preflow-push on float capacities)."""
    _, (source_side, _) = nx.minimum_cut(flow_digraph(network, caps), SOURCE, network.sink,
                                         flow_func=preflow_push)
    return np.array([node in source_side for node in range(1, network.layer_count + 1)])


def synthetic_costs(graph, rng: random.Random) -> LinearCost:
    """Per-layer costs of a real layer graph from its FLOPs: a 10 GFLOP/s phone with
    0.05 ms per layer, a cloud 5-50x faster, 2.5 W while computing."""
    device_ms = np.array([layer.flops / 1e7 * rng.uniform(0.5, 2) + 0.05 for layer in
                          graph.layers])
    cloud_ms = device_ms / np.array([rng.uniform(5, 50) for _ in graph.layers])
    return LinearCost(device_ms, cloud_ms, 0.0, 0.0, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_min_cut_equals_networkx_on_every_zoo_model_link_and_metric(name: str) -> None:
    """The compiled, scaled min-cut against networkx's float min-cut on the real layer
    graphs of the zoo, on every preset link for latency and energy."""
    from dnntune.model.loading import load_model

    graph = load_model(name, calibrate=False).graph
    base = synthetic_costs(graph, random.Random(name))
    network = flow_network(graph)
    inputs = cut_inputs(graph, layer_costs(*make_profiles(
        graph, base.device.tolist(), base.cloud.tolist(), (base.device * 2.5).tolist())))
    for link in preset_links().values():
        for metric in ("latency", "energy"):
            caps = capacities(network, linear_cost(inputs, link, CostOptions(), metric))
            cut = solve_min_cut(network, caps)
            ours = cut_value(network, caps, cut.device_mask)
            theirs = cut_value(network, caps, networkx_mask(network, caps))
            assert np.isfinite(ours)  # a closed set with every input on the phone
            assert theirs - 1e-9 * theirs <= ours <= theirs + cut.resolution, (link.name,
                                                                                metric)
            assert cut.resolution <= 1e-5 * prefix_cut_values(network, caps).min()
