"""Every zoo model builds offline and yields the graph it should."""

from __future__ import annotations

import numpy as np
import pytest

from dnntune.model.cuts import enumerate_cuts
from dnntune.model.loading import load_model, model_hash
from dnntune.model.zoo import ZOO


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_builds_with_the_expected_layer_count(name):
    loaded = load_model(name, calibrate=False)
    entry = ZOO[name]
    assert len(loaded.graph.layers) == entry.expected_layers
    # every Keras layer of the model appears once, under its own name
    assert set(loaded.graph.layer_names) == {layer.name for layer in loaded.model.layers}
    cuts = enumerate_cuts(loaded.graph)
    assert len(cuts) == len(loaded.graph.layers) + 1
    assert cuts[-1].bytes_up == 0
    assert loaded.input_shapes == ((1, *entry.input_shape),)
    assert sum(layer.params for layer in loaded.graph.layers) == loaded.model.count_params()


def test_published_sizes_of_the_zoo():
    """Parameter counts and FLOPs against the papers' / keras.applications' figures."""
    expectations = {  # name: (params, GFLOPs at 2 FLOPs per MAC, tolerance)
        "mobilenet_v2": (3_538_984, 0.6, 0.1),      # 300 M MACs (Sandler et al. 2018)
        "resnet50": (25_636_712, 7.7, 0.1),          # 3.8-4.1 G MACs
        "shufflenet_v2_0.5x": (1_374_744, 0.082, 0.1),  # 41 M MACs (Ma et al. 2018)
    }
    for name, (params, gflops, tol) in expectations.items():
        graph = load_model(name, calibrate=False).graph
        assert sum(layer.params for layer in graph.layers) == params
        measured = sum(layer.flops for layer in graph.layers) / 1e9
        assert abs(measured - gflops) / gflops < tol, (name, measured)


def test_zoo_builds_are_reproducible_in_one_process():
    a = load_model("mobilenet_v2")
    b = load_model("mobilenet_v2")
    assert a.graph.layer_names == b.graph.layer_names
    assert model_hash(a.model) == model_hash(b.model)
    assert model_hash(a.model) != model_hash(load_model("mobilenet_v2", seed=7).model)


def test_calibrated_batchnorm_keeps_activations_alive(zoo_model):
    import keras

    loaded = zoo_model("mobilenet_v2")
    probe = keras.Model(loaded.model.inputs,
                        loaded.model.get_layer("block_16_project_BN").output)
    deep = np.asarray(probe(loaded.example_inputs()[0]))
    assert 0.3 < float(np.std(deep)) < 3.0
    raw = load_model("mobilenet_v2", calibrate=False)
    probe_raw = keras.Model(raw.model.inputs, raw.model.get_layer("block_16_project_BN").output)
    assert float(np.std(np.asarray(probe_raw(raw.example_inputs()[0])))) < 0.05
