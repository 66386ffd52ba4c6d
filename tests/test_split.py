"""head + tail equals the whole model, at every cut of a small model and a spread of big ones."""

from __future__ import annotations

import numpy as np
import pytest

from dnntune.errors import DnntuneError
from dnntune.model.loading import compile_model
from dnntune.model.split import Splitter


def spread(n_cuts: int, count: int, must: list[int]) -> list[int]:
    picks = set(np.linspace(0, n_cuts - 1, count).astype(int).tolist()) | set(must)
    return sorted(picks)


def check_cuts(loaded, indices):
    x = loaded.example_inputs()
    # the split runs head and tail as compiled graphs: compare with the compiled model
    expected = compile_model(loaded.model)(x)
    splitter = Splitter(loaded.model, loaded.graph)
    for index in indices:
        split = splitter.split(index)
        got = split.run(x)
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            # same eager execution on both sides: identical up to float reassociation
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6 * float(np.abs(e).max()),
                                       err_msg=f"cut {index}")
        crossing = [t.name for t in split.cut.tensors]
        assert list(split.tail_inputs) == crossing
        if split.head is not None:
            assert list(split.head_outputs[:len(crossing)]) == crossing
    return splitter


def test_every_cut_of_tiny_resnet(zoo_model):
    loaded = zoo_model("tiny_resnet")
    splitter = check_cuts(loaded, range(len(loaded.graph.layers) + 1))
    assert any(len(c.tensors) == 2 for c in splitter.cuts)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_spread_of_cuts_of_big_models(zoo_model, name):
    loaded = zoo_model(name)
    cuts_with_two = [c.index for c in Splitter(loaded.model, loaded.graph).cuts
                     if len(c.tensors) == 2]
    indices = spread(len(loaded.graph.layers) + 1, 10, cuts_with_two[:: max(1, len(
        cuts_with_two) // 3)][:3])
    assert len(indices) >= 10
    assert sum(1 for i in indices if i in cuts_with_two) >= 2
    check_cuts(loaded, indices)


def test_split_leaves_the_users_model_untouched(zoo_model):
    loaded = zoo_model("tiny_resnet")
    before = {layer.name: len(layer._inbound_nodes) for layer in loaded.model.layers}
    splitter = Splitter(loaded.model, loaded.graph)
    for index in (0, 5, 12, len(loaded.graph.layers)):
        splitter.split(index)
    after = {layer.name: len(layer._inbound_nodes) for layer in loaded.model.layers}
    assert before == after


def test_cloud_only_and_mobile_only_have_one_side_each(zoo_model):
    loaded = zoo_model("tiny_resnet")
    splitter = Splitter(loaded.model, loaded.graph)
    cloud_only = splitter.split(0)
    mobile_only = splitter.split(len(loaded.graph.layers))
    assert cloud_only.head is None and cloud_only.tail is not None
    assert mobile_only.tail is None and mobile_only.head is not None
    assert mobile_only.cut.bytes_up == 0


def test_bad_cut_index_is_a_clear_error(zoo_model):
    loaded = zoo_model("tiny_resnet")
    with pytest.raises(DnntuneError, match="cut index 99 out of range: expected 0 to 21"):
        Splitter(loaded.model, loaded.graph).split(99)


@pytest.mark.slow
def test_crossing_bytes_of_mobilenet_v2_match_an_independent_count(zoo_model):
    """Counted by hand from MobileNetV2's architecture (float32, batch 1)."""
    loaded = zoo_model("mobilenet_v2")
    splitter = Splitter(loaded.model, loaded.graph)
    by_after = {c.after: c for c in splitter.cuts}
    f32 = 4
    assert splitter.cuts[0].bytes_up == 224 * 224 * 3 * f32
    # after block 2's residual add: one 56x56x24 tensor
    assert by_after["block_2_add"].bytes_up == 56 * 56 * 24 * f32
    # inside block 2: block 1's output (needed by the add) and the 144-channel expansion
    inside = by_after["block_2_expand"]
    assert [t.name for t in inside.tensors] == ["block_1_project_BN:0", "block_2_expand:0"]
    assert inside.bytes_up == (56 * 56 * 24 + 56 * 56 * 144) * f32
    # the largest cut is block 1's zero-padded 113x113x96 expansion (≈4.9 MB)
    largest = max(splitter.cuts, key=lambda c: c.bytes_up)
    assert largest.after == "block_1_pad"
    assert largest.bytes_up == 113 * 113 * 96 * f32 == 4_903_296
    # an independent count from Keras's own tensors: output shape of each consumer's input
    for cut in (inside, by_after["block_5_depthwise"]):
        independent = 0
        for tensor in cut.tensors:
            shape = loaded.model.get_layer(tensor.layer).output.shape
            independent += int(np.prod([1 if d is None else d for d in shape])) * f32
        assert independent == cut.bytes_up
