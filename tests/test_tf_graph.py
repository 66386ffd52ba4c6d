"""TensorFlow graphs as models: a frozen GraphDef ``.pb`` and a SavedModel directory.

The graphs are made here from a tiny Keras model with a skip connection, by TensorFlow's
own freezing (``convert_variables_to_constants_v2``) and ``tf.saved_model.save``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dnntune.config import parse_config
from dnntune.errors import DnntuneError
from tests.conftest import assert_one_line_error, run_cli


def _tiny_keras():
    from dnntune.model.loading import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(7)
    x = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(6, 3, padding="same", name="stem")(x)
    h = keras.layers.BatchNormalization(name="stem_bn")(h)
    a = keras.layers.ReLU(name="stem_relu")(h)
    b = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(a)
    b = keras.layers.Conv2D(6, 1, name="project")(b)
    h = keras.layers.Add(name="skip_add")([a, b])  # a crosses every cut inside the block
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    y = keras.layers.Dense(5, name="logits")(h)
    return keras.Model(x, y, name="tiny_block")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """(keras model, frozen .pb path, SavedModel dir)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    model = _tiny_keras()
    folder = tmp_path_factory.mktemp("graphs")
    spec = tf.TensorSpec((None, 8, 8, 3), tf.float32, name="image")
    run = tf.function(lambda x: model(x, training=False))
    frozen = convert_variables_to_constants_v2(run.get_concrete_function(spec))
    pb = folder / "tiny_block.pb"
    pb.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    module = tf.Module()
    module.model = model
    module.serve = tf.function(lambda image: model(image, training=False),
                               input_signature=[spec])
    saved = folder / "tiny_block_saved"
    tf.saved_model.save(module, str(saved), signatures=module.serve)
    return model, pb, saved


def _keras_graph(model):
    from dnntune.model.keras_graph import build_layer_graph

    return build_layer_graph(model)


@pytest.mark.parametrize("source", ["pb", "saved_model"])
def test_graph_layers_are_name_scopes_and_cuts_match_the_keras_model(graphs, source):
    from dnntune.model.cuts import enumerate_cuts
    from dnntune.model.loading import load_model

    model, pb, saved = graphs
    loaded = load_model(str(pb if source == "pb" else saved))
    keras_graph = _keras_graph(model)
    names = loaded.graph.layer_names
    # One scope per Keras layer, in the same order (the output identity is folded in).
    assert len(names) == len(keras_graph.layers) == 9
    assert names[0] == "image" and loaded.graph.layers[0].is_input
    for scope, layer in zip(names[1:], keras_graph.layer_names[1:], strict=True):
        assert scope.split("/")[-1].startswith(layer), (scope, layer)
    assert loaded.graph.layers[1].type == "Conv2D"
    assert loaded.graph.layers[4].type == "DepthwiseConv2dNative"
    cuts, keras_cuts = enumerate_cuts(loaded.graph), enumerate_cuts(keras_graph)
    assert len(cuts) == len(names) + 1
    assert [c.bytes_up for c in cuts] == [c.bytes_up for c in keras_cuts]
    assert [len(c.tensors) for c in cuts] == [len(c.tensors) for c in keras_cuts]
    assert max(len(c.tensors) for c in cuts) == 2  # the skip connection crosses with dw
    # Weights are the layers' own (frozen constants): conv 3*3*3*6 + 6, dense 6*5 + 5.
    assert loaded.graph.layers[1].params == 168 and loaded.graph.layers[-1].params == 35
    assert loaded.graph.layers[1].flops == 2 * 8 * 8 * 6 * 3 * 3 * 3


@pytest.mark.parametrize("source", ["pb", "saved_model"])
def test_every_split_equals_the_unsplit_graph(graphs, source):
    from dnntune.model.loading import call_model, load_model
    from dnntune.model.split import Splitter

    model, pb, saved = graphs
    loaded = load_model(str(pb if source == "pb" else saved))
    inputs = loaded.example_inputs()
    (whole,) = loaded.model(inputs)
    (keras_out,) = call_model(model, inputs)
    np.testing.assert_allclose(whole, keras_out, rtol=1e-5, atol=1e-6)
    splitter = Splitter(loaded.model, loaded.graph)
    for index in range(len(splitter.cuts)):
        split = splitter.split(index)
        (got,) = split.run(inputs)
        np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6 * float(np.abs(whole).max()),
                                   err_msg=f"cut {index}")
        if split.head is not None:  # the head returns exactly the crossing tensors
            held = split.run_head(inputs)
            for tensor in split.cut.tensors:
                assert held[tensor.name].shape == tensor.shape
    assert splitter.split(0).head is None and splitter.split(len(splitter.cuts) - 1).tail is None


def test_named_input_and_output_and_a_batch(graphs):
    from dnntune.model.loading import load_model

    _, pb, _ = graphs
    loaded = load_model(f"{pb}?input=image:0&output=Identity&dtype=float32", batch_size=3)
    assert loaded.graph.model_inputs == ("image:0",)
    assert loaded.input_shapes == ((3, 8, 8, 3),)
    (out,) = loaded.model(loaded.example_inputs())
    assert out.shape == (3, 5)
    with pytest.raises(DnntuneError, match="data_type int8 given, but input 'image' is float32"):
        load_model(f"{pb}?dtype=int8")
    coarse = load_model(f"{pb}?depth=1")  # every Keras layer lives in one top scope
    assert len(coarse.graph.layers) == 2


def test_the_timed_pass_has_one_interval_per_scope(graphs):
    from dnntune.model.loading import load_model
    from dnntune.profiling.profiler import ProfileSettings, profile_model

    _, pb, _ = graphs
    loaded = load_model(str(pb))
    profile = profile_model(loaded, ProfileSettings(num_runs=3, warmup_runs=1, energy="none"))
    assert [lp.layer.name for lp in profile.layers] == list(loaded.graph.layer_names)
    assert profile.layers[0].latency.mean_ms == 0.0  # the input layer
    assert all(lp.latency.mean_ms > 0 for lp in profile.layers[1:])
    assert profile.meta.model_hash == loaded.model.fingerprint()
    assert profile.param_bytes == 4 * sum(layer.params for layer in loaded.graph.layers)


def test_dnntune_config_format_maps_onto_dnntune(graphs, tmp_path, capsys):
    _, pb, _ = graphs
    (tmp_path / pb.name).write_bytes(pb.read_bytes())
    config = parse_config({"file": pb.name, "input_name": "image", "input_shape": "2,8,8,3",
                           "output_name": "Identity", "data_type": "DT_FLOAT",
                           "framework": "tensorflow", "links": ["wifi"]},
                          str(tmp_path / "dnntune.yaml"))
    assert config.model == f"{tmp_path / pb.name}?input=image&output=Identity&dtype=float32"
    assert config.batch_size == 2 and config.input_shape == (8, 8, 3)
    assert config.links == ("wifi",)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dnntune: warning: {tmp_path / 'dnntune.yaml'}: DNNTune key(s) dnntune "
                   "does not use: framework"]
    nested = parse_config({"model": {"file": str(pb), "input_name": ["image"]}}, "c.yaml")
    assert nested.model == f"{pb}?input=image"
    with pytest.raises(DnntuneError, match="key 'input_shape' must be the input's full shape"):
        parse_config({"file": str(pb), "input_shape": [0, 8]}, "c.yaml")


def test_cli_graph_lists_scopes_and_bad_graphs_are_one_line(graphs, tmp_path):
    _, pb, _ = graphs
    result = run_cli(["graph", "--model", str(pb), "--format", "json"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["layers"][1]["name"].endswith("/stem_1")
    assert len(doc["cuts"]) == len(doc["layers"]) + 1

    assert_one_line_error(run_cli(["graph", "--model", f"{pb}?input=pixels"]),
                          str(pb), "no input named 'pixels'", "placeholders: image")
    assert_one_line_error(run_cli(["graph", "--model", f"{pb}?output=probs"]),
                          str(pb), "no output named 'probs'")
    corrupt = tmp_path / "corrupt.pb"
    corrupt.write_bytes(pb.read_bytes()[: len(pb.read_bytes()) // 3])
    assert_one_line_error(run_cli(["graph", "--model", str(corrupt)]),
                          str(corrupt), "not a TensorFlow GraphDef")
    junk = tmp_path / "junk.pb"
    junk.write_text("not a graph at all\n")
    assert_one_line_error(run_cli(["graph", "--model", str(junk)]), str(junk))
    config = tmp_path / "dnntune.yaml"
    config.write_text(f"file: {pb}\ninput_name: pixels\noutput_name: Identity\n")
    assert_one_line_error(run_cli(["profile", "--config", str(config), "--no-store"]),
                          "no input named 'pixels'")
    # A name the graph lacks, before any server starts (graphs are sent to servers since
    # issue 24: tests/test_graph_servers.py).
    assert_one_line_error(run_cli(["analyze", "--model", f"{pb}?output=probs", "--links",
                                   "wifi", "--no-store"]), "output=probs", "no op 'probs'")
    assert_one_line_error(run_cli(["convert", "--model", str(pb), "--out", str(tmp_path / "c")]),
                          "LiteRT conversion takes Keras models only")


def test_profile_and_analyze_a_frozen_graph_from_the_cli(graphs, tmp_path):
    _, pb, _ = graphs
    for side, threads in (("device", "1"), ("cloud", "2")):
        result = run_cli(["profile", "--model", str(pb), "--side", side, "--num_threads",
                          threads, "--num_runs", "5", "--warmup_runs", "1", "--energy", "none",
                          "--no-store", "--out", str(tmp_path / f"{side}.json")])
        assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads((tmp_path / "device.json").read_text())
    assert [layer["name"] for layer in doc["layers"]][1].endswith("/stem_1")
    result = run_cli(["analyze", "--device", str(tmp_path / "device.json"), "--cloud",
                      str(tmp_path / "cloud.json"), "--links", "wifi,3g", "--no-store",
                      "--no-plots", "--out", str(tmp_path / "out"), "--format", "json"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tiny_block" in result.stdout


def test_corrupt_saved_model_is_one_line(tmp_path):
    folder = tmp_path / "broken_saved"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(DnntuneError, match="not a loadable SavedModel"):
        from dnntune.model.loading import load_model

        load_model(str(folder))
    assert Path(folder).is_dir()


def _write_v1_graph(path: Path, shape) -> None:
    """A hand-made graph whose scope A feeds B, which feeds A again."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, shape, name="x")
        with tf.name_scope("net/A"):
            a = tf.add(x, 1.0, name="add")
        with tf.name_scope("net/B"):
            b = tf.multiply(a, 2.0, name="mul")
        with tf.name_scope("net/A/"):  # back into A (the trailing / reuses the scope)
            c = tf.subtract(b, a, name="sub")
        with tf.name_scope("net/C"):
            tf.nn.relu(c, name="out")
    path.write_bytes(graph.as_graph_def().SerializeToString())


def test_scopes_that_feed_each_other_merge_and_unknown_shapes_need_a_shape(tmp_path):
    from dnntune.model.loading import load_model
    from dnntune.model.split import Splitter

    pb = tmp_path / "cycle.pb"
    _write_v1_graph(pb, (None, 4))
    loaded = load_model(f"{pb}?output=net/C/out")
    assert loaded.graph.layer_names == ("x", "net/A+net/B", "net/C")
    x = loaded.example_inputs()[0]
    splitter = Splitter(loaded.model, loaded.graph)
    for index in range(len(splitter.cuts)):
        (got,) = splitter.split(index).run([x])
        np.testing.assert_allclose(got, np.maximum((x + 1) * 2 - (x + 1), 0), rtol=1e-6)
    _write_v1_graph(pb, (None, None))
    assert_one_line_error(run_cli(["graph", "--model", str(pb)]), str(pb), "input 'x' has shape",
                          "--input-shape")
    shaped = load_model(str(pb), input_shapes=[(6,)])
    assert shaped.input_shapes == ((1, 6),)


def test_fold_puts_batchnorm_and_activation_in_the_convolutions_layer(graphs):
    from dnntune.model.loading import load_model
    from dnntune.model.split import Splitter

    _, pb, _ = graphs
    loaded = load_model(f"{pb}?fold=1")
    short = [name.split("/")[-1] for name in loaded.graph.layer_names]
    # stem + stem_bn + stem_relu are one layer; dw, project, the two-input add, pool, logits
    assert short == ["image", "stem_1", "dw_1", "project_1", "skip_add_1", "pool_1",
                     "logits_1"]
    inputs = loaded.example_inputs()
    (whole,) = loaded.model(inputs)
    splitter = Splitter(loaded.model, loaded.graph)
    for index in range(len(splitter.cuts)):
        (got,) = splitter.split(index).run(inputs)
        np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6 * float(np.abs(whole).max()))
    with pytest.raises(DnntuneError, match="fold= must be 0 or 1"):
        load_model(f"{pb}?fold=yes")
