"""Loading user model files: .keras and .h5, functional and Sequential, and bad files."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from dnntune.errors import DnntuneError
from dnntune.models import call_model, load_model, parse_input_shape


def small_functional() -> keras.Model:
    inp = keras.Input(shape=(12,), name="features")
    a = keras.layers.Dense(8, activation="relu", name="a")(inp)
    b = keras.layers.Dense(8, name="b")(a)
    out = keras.layers.Add(name="sum")([a, b])
    return keras.Model(inp, out, name="user_model")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_functional_file_round_trips(tmp_path, suffix):
    model = small_functional()
    path = tmp_path / f"user{suffix}"
    model.save(path)
    loaded = load_model(str(path))
    assert loaded.name == "user"
    assert loaded.graph.layer_names == ("features", "a", "b", "sum")
    x = loaded.example_inputs()
    np.testing.assert_allclose(call_model(loaded.model, x)[0], call_model(model, x)[0],
                               rtol=1e-6)


def test_sequential_file_loads_as_a_graph(tmp_path):
    model = keras.Sequential([keras.Input(shape=(6,)), keras.layers.Dense(4, name="d1"),
                              keras.layers.Dense(2, name="d2")], name="seq")
    path = tmp_path / "seq.keras"
    model.save(path)
    loaded = load_model(str(path))
    assert [layer.type for layer in loaded.graph.layers] == ["InputLayer", "Dense", "Dense"]
    assert loaded.input_shapes == ((1, 6),)


def test_unknown_dimensions_need_an_input_shape(tmp_path):
    inp = keras.Input(shape=(None, None, 3), name="image")
    out = keras.layers.Conv2D(4, 3, name="conv")(inp)
    path = tmp_path / "fcn.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(DnntuneError, match="unknown dimension.*--input-shape"):
        load_model(str(path))
    loaded = load_model(str(path), parse_input_shape("32,32,3"), batch_size=2)
    assert loaded.graph.tensor("conv:0").shape == (2, 30, 30, 4)
    assert loaded.graph.tensor("conv:0").bytes == 2 * 30 * 30 * 4 * 4


def test_missing_corrupt_and_wrong_files(tmp_path):
    with pytest.raises(DnntuneError, match="no such model file"):
        load_model(str(tmp_path / "absent.keras"))
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"this is not a zip archive")
    with pytest.raises(DnntuneError, match="corrupt.keras: not a .keras archive"):
        load_model(str(corrupt))
    truncated = tmp_path / "truncated.keras"
    good = load_model("tiny_resnet").file
    assert good is not None
    truncated.write_bytes(Path(good).read_bytes()[:4000])
    with pytest.raises(DnntuneError, match="truncated.keras: not a .keras archive"):
        load_model(str(truncated))
    h5 = tmp_path / "random.h5"
    h5.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DnntuneError, match="random.h5: not an HDF5 file"):
        load_model(str(h5))
    zipped = tmp_path / "other.keras"
    import zipfile

    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    with pytest.raises(DnntuneError, match="a zip archive but not a Keras model"):
        load_model(str(zipped))
    with pytest.raises(DnntuneError, match="model name is empty"):
        load_model("")
    text = tmp_path / "model.txt"
    text.write_text("hello")
    with pytest.raises(DnntuneError, match="expected a Keras model file"):
        load_model(str(text))


def test_subclassed_model_is_refused_with_the_reason(tmp_path):
    @keras.saving.register_keras_serializable(package="dnntune_tests")
    class Tower(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    model = Tower()
    model(np.zeros((1, 5), "float32"))
    path = tmp_path / "tower.keras"
    model.save(path)
    with pytest.raises(DnntuneError, match="subclassed Keras model.*only functional and "
                                           "Sequential models can be split, because"):
        load_model(str(path))
    from dnntune.keras_graph import build_layer_graph
    with pytest.raises(DnntuneError, match="only functional and Sequential"):
        build_layer_graph(model)


@pytest.mark.parametrize("text", ["", "224,x,3", "0,4", "-1", "3;;2"])
def test_bad_input_shapes(text):
    with pytest.raises(DnntuneError, match="expected positive integers"):
        parse_input_shape(text)


def test_unknown_model_lists_the_zoo():
    with pytest.raises(DnntuneError, match="unknown model 'mobilenet_v9'.*mobilenet_v2"):
        load_model("mobilenet_v9")
