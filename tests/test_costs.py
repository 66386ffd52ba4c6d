"""The cost model on a chain whose every number is worked out by hand."""

from __future__ import annotations

import dataclasses
import random
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnntune.analysis.costs import (
    CostOptions,
    call_shares,
    cut_inputs,
    layer_costs,
    linear_cost,
    partition_bytes,
    partition_table,
    prefix_cut_bytes,
    prefix_table,
)
from dnntune.analysis.links import Link
from dnntune.errors import ConfigError, DnntuneError
from dnntune.model.cuts import enumerate_cuts
from dnntune.model.graph import LayerGraph
from dnntune.profiling.profile import EnergyInfo
from tests.analyzer_fixtures import (
    chain_graph,
    inception_like_graph,
    make_profile,
    make_profiles,
    random_graph,
    random_profiles,
)

# in(1 MB) -> l1(250 kB) -> l2(10 kB) -> l3(4 kB, the model output)
CHAIN_BYTES = [1_000_000, 250_000, 10_000, 4_000]
DEVICE_MS, CLOUD_MS, DEVICE_MJ = [0, 100, 50, 10], [0, 10, 5, 1], [0, 200, 100, 20]
# 8 Mbit/s = 1000 bytes/ms both ways; P_up = 100*8+200 = 1000 mW, P_down = 50*8+200 = 600 mW.
LINK = Link("lab", up_mbps=8.0, down_mbps=8.0, rtt_ms=20.0, alpha_up_mw_per_mbps=100.0,
            alpha_down_mw_per_mbps=50.0, beta_mw=200.0, promotion_ms=100.0,
            promotion_mw=1000.0, tail_ms=1000.0, tail_mw=500.0)


def chain_inputs(idle_power_mw: float = 0.0):
    graph = chain_graph(CHAIN_BYTES)
    device, cloud = make_profiles(graph, DEVICE_MS, CLOUD_MS, DEVICE_MJ, idle_power_mw)
    return cut_inputs(graph, layer_costs(device, cloud))


def test_every_cut_on_the_chain_by_hand() -> None:
    table = prefix_table(chain_inputs(), LINK, CostOptions())
    np.testing.assert_array_equal(table.bytes_up, [1e6, 1e6, 250e3, 10e3, 0])
    np.testing.assert_array_equal(table.bytes_down, [4000, 4000, 4000, 4000, 0])
    np.testing.assert_allclose(table.tm_ms, [0, 0, 100, 150, 160])
    np.testing.assert_allclose(table.tc_ms, [16, 16, 6, 1, 0])
    np.testing.assert_allclose(table.tt_ms, [1024, 1024, 274, 34, 0])  # RTT + up + down
    np.testing.assert_allclose(table.latency_ms, [1040, 1040, 380, 185, 160])
    np.testing.assert_allclose(table.em_mj, [0, 0, 200, 300, 320])
    # 1000 mW x t_up + 600 mW x 4 ms + 500 mW (connected) x (RTT + Tc), in mJ
    np.testing.assert_allclose(table.wait_mj, [18, 18, 13, 10.5, 0])
    np.testing.assert_allclose(table.et_mj, [1020.4, 1020.4, 265.4, 22.9, 0])
    np.testing.assert_allclose(table.energy_mj, [1020.4, 1020.4, 465.4, 322.9, 320])
    assert table.saturated is None


def test_framework_overheads_are_paid_only_where_they_occur() -> None:
    """An RPC (fixed + per MB) only when something crosses; a graph call per side only
    when that side runs layers (validate found these systematic)."""
    options = CostOptions(rpc_ms=5.0, rpc_ms_per_mb=2.0, device_call_ms=1.5,
                          cloud_call_ms=3.0)
    table = prefix_table(chain_inputs(), LINK, options)
    crossing = np.array([1e6, 1e6, 250e3, 10e3, 0]) + np.array([4000, 4000, 4000, 4000, 0])
    rpc = 5.0 + 2.0 * crossing / 1e6
    rpc[-1] = 0.0  # mobile-only: no call
    np.testing.assert_allclose(table.tt_ms, np.array([1024, 1024, 274, 34, 0]) + rpc)
    # No layer holds weights, so each of the 3 layers carries a third of a whole call.
    np.testing.assert_allclose(table.tm_ms, [0, 0, 100.5, 151, 161.5])
    np.testing.assert_allclose(table.tc_ms, [19, 19, 8, 2, 0])
    with pytest.raises(ConfigError, match="--rpc-ms"):
        CostOptions(rpc_ms=-1.0)


def test_promotion_and_tail_when_the_radio_idles_between_inferences() -> None:
    # 0.5 inferences/s: 2000 ms gap > 1000 ms tail: promotion (100 ms, 1000 mW) + tail.
    table = prefix_table(chain_inputs(), LINK, CostOptions(inference_rate_hz=0.5))
    np.testing.assert_allclose(table.tail_mj, [600, 600, 600, 600, 0])
    np.testing.assert_allclose(table.tt_ms, [1124, 1124, 374, 134, 0])
    np.testing.assert_allclose(table.energy_mj, [1620.4, 1620.4, 1065.4, 922.9, 320])


def test_tail_when_the_radio_never_idles() -> None:
    # 2 inferences/s: 500 ms gap < 1000 ms tail: 500 mW for the gap minus the transfers
    # and the wait (counted in up/down/wait_mj).
    table = prefix_table(chain_inputs(), LINK, CostOptions(inference_rate_hz=2.0))
    np.testing.assert_allclose(table.tail_mj, [0, 0, 500 * (500 - 254 - 26) / 1000,
                                               500 * (500 - 14 - 21) / 1000, 0])
    np.testing.assert_allclose(table.tt_ms, [1024, 1024, 274, 34, 0])  # no promotion
    assert table.saturated is not None
    assert table.saturated.tolist() == [True, True, False, False, False]


def test_idle_wait_energy() -> None:
    table = prefix_table(chain_inputs(idle_power_mw=100.0), LINK, CostOptions(idle_wait=True))
    # 0.1 W x T, for every cut (mobile-only too)
    np.testing.assert_allclose(table.idle_mj, [104.0, 104.0, 38.0, 18.5, 16.0])
    np.testing.assert_allclose(table.energy_mj - table.em_mj - table.call_mj - table.et_mj,
                               table.idle_mj)


def test_missing_layer_energy_is_estimated_from_power() -> None:
    graph = chain_graph(CHAIN_BYTES)
    info = EnergyInfo("estimated:cpu-model", idle_power_mw=500.0, active_power_mw=2500.0)
    device = make_profile(graph, DEVICE_MS, [0.0, None, 7.0, None], energy=info)
    cloud = make_profile(graph, CLOUD_MS, side="cloud")
    costs = layer_costs(device, cloud)
    np.testing.assert_allclose(costs.device_mj, [0.0, 200.0, 7.0, 20.0])  # ms x 2000 mW
    assert costs.estimated_layers == 2
    assert costs.energy_label == "estimated:cpu-model"


def test_profiles_of_different_models_are_rejected() -> None:
    graph = chain_graph(CHAIN_BYTES)
    device = make_profile(graph, DEVICE_MS, model_hash="aaaa")
    cloud = make_profile(graph, CLOUD_MS, side="cloud", model_hash="bbbb")
    with pytest.raises(DnntuneError, match="different models"):
        layer_costs(device, cloud)
    other = make_profile(chain_graph(CHAIN_BYTES[:3]), CLOUD_MS[:3], side="cloud")
    with pytest.raises(DnntuneError, match="different layers"):
        layer_costs(make_profile(graph, DEVICE_MS), other)  # same hash, fewer layers


def test_non_finite_layer_costs_are_rejected() -> None:
    graph = chain_graph(CHAIN_BYTES)
    device, cloud = make_profiles(graph, DEVICE_MS, [0, float("nan"), 5, 1], DEVICE_MJ)
    with pytest.raises(DnntuneError, match="layer 'l1': cloud latency mean_ms must be"):
        layer_costs(device, cloud)
    device, cloud = make_profiles(graph, DEVICE_MS, CLOUD_MS, [0, -1.0, 0, 0])
    with pytest.raises(DnntuneError, match="layer 'l1': device energy_mj"):
        layer_costs(device, cloud)


def test_what_if_scaling() -> None:
    inputs = chain_inputs()
    scaled = inputs.scaled(device_speedup=2.0, cloud_speedup=10.0)
    np.testing.assert_allclose(scaled.tm_ms, inputs.tm_ms / 2)
    np.testing.assert_allclose(scaled.em_mj, inputs.em_mj / 2)
    np.testing.assert_allclose(scaled.tc_ms, inputs.tc_ms / 10)
    with pytest.raises(ConfigError, match="--cloud-speedup"):
        inputs.scaled(cloud_speedup=0.0)


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="--inference-rate"):
        CostOptions(inference_rate_hz=0.0)


def test_prefix_bytes_equal_enumerate_cuts_on_an_inception_sized_dag() -> None:
    graph = inception_like_graph()
    up, down = prefix_cut_bytes(graph)
    cuts = enumerate_cuts(graph)
    assert up.tolist() == [c.bytes_up for c in cuts]
    assert down.tolist() == [c.bytes_down for c in cuts]


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 8))
def test_prefix_and_partition_bytes_agree_with_cuts(seed: int, n: int) -> None:
    graph = random_graph(random.Random(seed), n)
    up, down = prefix_cut_bytes(graph)
    for cut in enumerate_cuts(graph):
        assert (up[cut.index], down[cut.index]) == (cut.bytes_up, cut.bytes_down)
        assert partition_bytes(graph, graph.layer_names[:cut.index]) == (cut.bytes_up,
                                                                         cut.bytes_down)


def closed_sets(graph: LayerGraph):
    """Every device set closed under predecessors that holds all input layers."""
    producer = {t.name: layer.name for layer in graph.layers for t in layer.outputs}
    preds = {layer.name: {producer[t] for t in layer.inputs} for layer in graph.layers}
    inputs = {layer.name for layer in graph.layers if layer.is_input}
    free = [name for name in graph.layer_names if name not in inputs]
    for k in range(len(free) + 1):
        for extra in combinations(free, k):
            chosen = inputs | set(extra)
            if all(preds[v] <= chosen for v in chosen):
                yield chosen


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 7), idle=st.booleans(),
       rate=st.sampled_from([None, 0.2, 0.001, "cold"]))
@pytest.mark.parametrize("overheads", [False, True])
def test_linear_cost_equals_the_cost_table(seed: int, n: int, idle: bool,
                                           rate: float | str | None, overheads: bool) -> None:
    rng = random.Random(seed)
    graph = with_weights(random_graph(rng, n), rng)
    costs = dataclasses.replace(layer_costs(*random_profiles(rng, graph)), call_power_mw=700.0)
    inputs = cut_inputs(graph, costs)
    radio = "cold" if rate == "cold" else "warm"
    hz = rate if isinstance(rate, float) else None
    options = CostOptions(idle_wait=idle, inference_rate_hz=hz, radio=radio)
    if overheads:
        options = CostOptions(idle_wait=idle, inference_rate_hz=hz, radio=radio,
                              device_call_ms=2.5, cloud_call_ms=4.0, rpc_ms=3.0,
                              rpc_ms_per_mb=1.5)
    for metric in ("latency", "energy"):
        lin = linear_cost(inputs, LINK, options, metric)
        for device in closed_sets(graph):
            mask = np.array([name in device for name in graph.layer_names])
            up, down = partition_bytes(graph, device)
            value = (lin.device[mask].sum() + lin.cloud[~mask].sum() + lin.per_byte_up * up
                     + lin.per_byte_down * down + (lin.fixed if up + down > 0 else 0.0))
            table = partition_table(inputs, device, LINK, options)
            if table.saturated is not None and table.saturated[0]:
                continue  # the table clamps the tail there; the linear form does not
            expected = table.latency_ms[0] if metric == "latency" else table.energy_mj[0]
            assert value == pytest.approx(expected, rel=1e-9, abs=1e-9)


def with_weights(graph: LayerGraph, rng: random.Random) -> LayerGraph:
    """``graph`` with weights on a random half of its non-input layers (maybe none)."""
    layers = tuple(dataclasses.replace(layer, params=rng.choice([0, 1000]))
                   if not layer.is_input else layer for layer in graph.layers)
    return dataclasses.replace(graph, layers=layers)


def test_a_head_pays_the_call_share_of_the_weights_it_holds() -> None:
    graph = chain_graph(CHAIN_BYTES)
    weights = {"l1": 0, "l2": 3000, "l3": 1000}  # l1 a padding layer, say
    graph = dataclasses.replace(graph, layers=tuple(
        dataclasses.replace(layer, params=weights.get(layer.name, 0))
        for layer in graph.layers))
    device, cloud = make_profiles(graph, DEVICE_MS, CLOUD_MS, DEVICE_MJ)
    inputs = cut_inputs(graph, layer_costs(device, cloud))
    np.testing.assert_allclose(call_shares(graph), [0, 0, 0.5, 0.5])  # layers, not params
    table = prefix_table(inputs, LINK, CostOptions(device_call_ms=10.0, cloud_call_ms=4.0))
    # The head of l1 alone captures no weight: its layer time only.
    np.testing.assert_allclose(table.tm_ms, [0, 0, 100, 155, 170])
    np.testing.assert_allclose(table.tc_ms, [20, 20, 10, 3, 0])


@pytest.mark.parametrize("overheads", [False, True])
def test_partition_table_matches_prefix_rows(overheads: bool) -> None:
    inputs = chain_inputs(idle_power_mw=50.0)
    options = CostOptions(idle_wait=True, inference_rate_hz=0.01)
    if overheads:
        options = CostOptions(idle_wait=True, inference_rate_hz=0.01, device_call_ms=2.0,
                              cloud_call_ms=6.0, rpc_ms=1.0, rpc_ms_per_mb=0.5)
    prefixes = prefix_table(inputs, LINK, options)
    for p in range(len(inputs.after)):
        row = partition_table(inputs, inputs.graph.layer_names[:p], LINK, options).row(0)
        assert row == pytest.approx(prefixes.row(p))
