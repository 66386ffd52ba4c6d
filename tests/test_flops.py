"""FLOPs of attention, normalisation, embedding, recurrent and nested layers, against
counts done by hand on small cases (2 FLOPs per multiply-add)."""

from __future__ import annotations

import keras
import pytest

from dnntune.model.keras_graph import build_layer_graph


def flops_of(model) -> dict[str, int]:
    return {layer.name: layer.flops for layer in build_layer_graph(model).layers}


def test_self_attention_and_cross_attention():
    tokens = keras.Input((4,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(50, 8, name="embed")(tokens)
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, name="self")
    attended = mha(x, x)
    other = keras.Input((6, 5), name="memory")
    cross = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=4,
                                            name="cross")(query=attended, value=other)
    got = flops_of(keras.Model([tokens, other], cross))
    assert got["embed"] == 0  # a table lookup
    # self: T = S = 4 positions of width 8, 2 heads of 3, output width 8, with biases.
    q = k = v = 4 * (2 * 8 * 6 + 6)  # 4 positions × (8×6 multiply-adds + 6 biases)
    out = 4 * (2 * 6 * 8 + 8)
    scale = 4 * 6
    scores = 2 * 4 * 4 * (2 * 3)  # 2 heads × 4×4 scores × 3-long dot products
    softmax = 2 * 4 * 4 * 3
    weighted = 2 * 4 * 4 * (2 * 3)
    assert got["self"] == q + k + v + out + scale + scores + softmax + weighted == 2144
    # cross: 4 queries of width 8 over 6 memory slots of width 5; value heads of 4
    q = 4 * (2 * 8 * 6 + 6)
    k = 6 * (2 * 5 * 6 + 6)
    v = 6 * (2 * 5 * 8 + 8)
    out = 4 * (2 * 8 * 8 + 8)
    scale = 4 * 6
    scores = 2 * 4 * 6 * (2 * 3) + 2 * 4 * 6 * 3 + 2 * 4 * 6 * (2 * 4)
    assert got["cross"] == q + k + v + out + scale + scores


def test_layer_normalization():
    x = keras.Input((4, 8))
    full = keras.layers.LayerNormalization(name="full")(x)
    bare = keras.layers.LayerNormalization(center=False, scale=False, name="bare")(x)
    rms = keras.layers.RMSNormalization(name="rms")(x)
    got = flops_of(keras.Model(x, [full, bare, rms]))
    # per element: mean, centre, square, variance, normalise (5), then scale and shift
    assert got["full"] == 32 * 7
    assert got["bare"] == 32 * 5
    assert got["rms"] == 32 * 4  # square, mean, normalise, scale


@pytest.mark.parametrize(("layer", "per_step"), [
    # 2 units on 3 features. LSTM: 4 gates × (3 + 2) inputs × 2 units multiply-adds,
    # then 17 pointwise FLOPs per unit.
    (keras.layers.LSTM(2, name="rnn"), 2 * 4 * 2 * 5 + 17 * 2),
    # GRU (reset_after): 3 gates, 17 pointwise FLOPs per unit (6 of them biases)
    (keras.layers.GRU(2, name="rnn"), 2 * 3 * 2 * 5 + 17 * 2),
    (keras.layers.GRU(2, reset_after=False, name="rnn"), 2 * 3 * 2 * 5 + 14 * 2),
    (keras.layers.SimpleRNN(2, name="rnn"), 2 * 1 * 2 * 5 + 3 * 2),
])
def test_recurrent_layers(layer, per_step):
    x = keras.Input((5, 3))
    assert flops_of(keras.Model(x, layer(x)))["rnn"] == 5 * per_step


def test_bidirectional_runs_both_directions():
    x = keras.Input((5, 3))
    out = keras.layers.Bidirectional(keras.layers.LSTM(2), name="bi")(x)
    assert flops_of(keras.Model(x, out))["bi"] == 2 * 5 * (2 * 4 * 2 * 5 + 17 * 2)


def test_einsum_dense():
    x = keras.Input((4, 8))
    out = keras.layers.EinsumDense("abc,cde->abde", output_shape=(4, 2, 3),
                                   bias_axes="de", name="proj")(x)
    # 4 positions × 8 inputs × 6 outputs multiply-adds, plus 4 × 6 biases
    assert flops_of(keras.Model(x, out))["proj"] == 2 * 4 * 8 * 6 + 4 * 6


def test_nested_model_counts_its_layers_when_kept_whole():
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, keras.layers.Dense(3, name="d")(
        keras.layers.Dense(4, name="c")(inner_in)), name="inner")
    x = keras.Input((6,), name="x")
    model = keras.Model(x, inner(x))
    dense_c, dense_d = 2 * 6 * 4 + 4, 2 * 4 * 3 + 3
    assert flops_of(model) == {"x": 0, "inner/c": dense_c, "inner/d": dense_d}
    whole = build_layer_graph(model, atomic=["inner"])
    assert {layer.name: layer.flops for layer in whole.layers} == {
        "x": 0, "inner": dense_c + dense_d}
