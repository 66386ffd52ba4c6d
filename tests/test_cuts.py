"""Cut points on hand-built graphs whose crossing tensors are known by hand."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnntune.analysis.costs import partition_bytes
from dnntune.errors import ConfigError
from dnntune.model.cuts import crossing_tensors, enumerate_cuts
from dnntune.model.graph import LayerGraph, LayerNode, TensorSpec
from tests.analyzer_fixtures import random_graph


def t(name: str, nbytes: int) -> TensorSpec:
    return TensorSpec(f"{name}:0", (1, nbytes // 4), "float32", nbytes)


def residual_graph() -> LayerGraph:
    """in(100) -> a(40) -> b(20) -> add(a, b)(40) -> out(8); 'a' skips over 'b'."""
    return LayerGraph("residual", (
        LayerNode("in", "InputLayer", (), (t("in", 100),)),
        LayerNode("a", "Dense", ("in:0",), (t("a", 40),)),
        LayerNode("b", "Dense", ("a:0",), (t("b", 20),)),
        LayerNode("add", "Add", ("a:0", "b:0"), (t("add", 40),)),
        LayerNode("out", "Dense", ("add:0",), (t("out", 8),)),
    ), ("in:0",), ("out:0",))


def test_every_prefix_is_a_cut_with_known_bytes():
    cuts = enumerate_cuts(residual_graph())
    assert [c.index for c in cuts] == [0, 1, 2, 3, 4, 5]
    assert [c.after for c in cuts] == [None, "in", "a", "b", "add", "out"]
    assert [[x.name for x in c.tensors] for c in cuts] == [
        ["in:0"], ["in:0"], ["a:0"], ["a:0", "b:0"], ["add:0"], []]
    assert [c.bytes_up for c in cuts] == [100, 100, 40, 60, 40, 0]
    # The output comes back down unless the device computed it.
    assert [c.bytes_down for c in cuts] == [8, 8, 8, 8, 8, 0]


def test_a_tensor_read_by_two_cloud_layers_is_sent_once():
    g = residual_graph()
    # Device runs only 'a': both 'b' and 'add' read a:0, it crosses once.
    assert [x.name for x in crossing_tensors(g, ["a"])] == ["a:0"]
    assert enumerate_cuts(g)[2].bytes_up == 40


def test_multi_output_layer_sends_only_the_outputs_read_in_the_cloud():
    split = LayerNode("split", "ChannelSplit", ("in:0",),
                      (TensorSpec("split:0", (1, 5), "float32", 20),
                       TensorSpec("split:1", (1, 5), "float32", 20)))
    g = LayerGraph("multi", (
        LayerNode("in", "InputLayer", (), (t("in", 40),)),
        split,
        LayerNode("left", "Dense", ("split:0",), (t("left", 8),)),
        LayerNode("cat", "Concatenate", ("left:0", "split:1"), (t("cat", 28),)),
    ), ("in:0",), ("cat:0",))
    cuts = enumerate_cuts(g)
    assert [x.name for x in cuts[2].tensors] == ["split:0", "split:1"]
    assert [x.name for x in cuts[3].tensors] == ["split:1", "left:0"]
    assert cuts[3].bytes_up == 28


def test_two_inputs_both_cross_at_cloud_only():
    g = LayerGraph("two", (
        LayerNode("x", "InputLayer", (), (t("x", 12),)),
        LayerNode("y", "InputLayer", (), (t("y", 4),)),
        LayerNode("cat", "Concatenate", ("x:0", "y:0"), (t("cat", 16),)),
    ), ("x:0", "y:0"), ("cat:0",))
    cuts = enumerate_cuts(g)
    assert [c.bytes_up for c in cuts] == [16, 16, 16, 0]


def test_graph_rejects_a_tensor_read_before_it_is_produced():
    with pytest.raises(ConfigError, match="reads tensor 'b:0' before"):
        LayerGraph("bad", (
            LayerNode("in", "InputLayer", (), (t("in", 4),)),
            LayerNode("a", "Dense", ("b:0",), (t("a", 4),)),
            LayerNode("b", "Dense", ("in:0",), (t("b", 4),)),
        ), ("in:0",), ("a:0",))


def test_graph_round_trips_through_dict_and_networkx():
    g = residual_graph()
    assert LayerGraph.from_dict(g.to_dict()) == g
    nxg = g.to_networkx()
    assert nxg.edges["a", "add"]["bytes"] == 40
    assert sorted(nxg.successors("a")) == ["add", "b"]


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 25))
def test_one_sweep_lists_what_each_prefix_sends(seed: int, n: int):
    """The sweep against the definition, prefix by prefix: the tensors crossing the
    device set, the bytes of outputs computed in the cloud."""
    graph = random_graph(random.Random(seed), n)
    names = graph.layer_names
    for cut in enumerate_cuts(graph):
        device = set(names[:cut.index])
        assert cut.tensors == crossing_tensors(graph, device)
        up, down = partition_bytes(graph, device)
        assert (cut.bytes_up, cut.bytes_down) == (up, down)
