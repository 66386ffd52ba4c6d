"""Models as users bring them: built here, saved with Keras, loaded as files.

Sized so each layer does enough work (tens of µs) for the profile to mean something,
and small enough that the suite stays fast. Random weights; BatchNorm statistics are
calibrated before saving so activations do not collapse.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

SEED = 7


def _keras() -> Any:
    from dnntune.model.loading import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(SEED)
    return keras


def transfer_tiny_resnet() -> Any:
    """Transfer learning on a small zoo backbone: ``x = base(inputs)``, pool, classify."""
    keras = _keras()
    from dnntune.model.zoo import ZOO, fresh_layer_names

    with fresh_layer_names():
        base = ZOO["tiny_resnet"].build((32, 32, 3))
    inputs = keras.Input((32, 32, 3), name="image")
    x = base(inputs)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="transfer_tiny")


def transfer_mobilenet_v2(size: int = 96) -> Any:
    """A MobileNetV2 backbone (no top) nested as one layer, as in Keras's guide."""
    keras = _keras()
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False,
                                          weights=None)
    inputs = keras.Input((size, size, 3), name="image")
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(5, name="classes")(x)
    return keras.Model(inputs, outputs, name="transfer_mnv2")


def siamese() -> Any:
    """Two inputs through one shared Sequential encoder and one shared Dense layer."""
    keras = _keras()
    layers = keras.layers
    encoder = keras.Sequential([keras.Input((256,)), layers.Dense(512, activation="relu",
                                                                  name="hidden"),
                                layers.Dense(256, name="embedding")], name="encoder")
    project = layers.Dense(256, activation="tanh", name="project")
    left, right = keras.Input((256,), name="left"), keras.Input((256,), name="right")
    a, b = project(encoder(left)), project(encoder(right))
    distance = layers.Subtract(name="difference")([a, b])
    score = layers.Dense(1, activation="sigmoid", name="same")(distance)
    return keras.Model([left, right], score, name="siamese")


def two_outputs() -> Any:
    """A class head and a dense map head on a shared trunk that holds a Sequential block."""
    keras = _keras()
    layers = keras.layers
    block = keras.Sequential([keras.Input((16, 16, 16)),
                              layers.Conv2D(32, 3, padding="same", name="conv_a"),
                              layers.BatchNormalization(name="bn_a"),
                              layers.ReLU(name="relu_a")], name="block")
    image = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="stem")(image)
    x = block(x)
    classes = layers.Dense(10, name="classes")(layers.GlobalAveragePooling2D(name="pool")(x))
    mask = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(
        layers.UpSampling2D(2, name="upsample")(x))
    return keras.Model(image, [classes, mask], name="two_outputs")


def attention_encoder(tokens: int = 32, width: int = 64) -> Any:
    """One transformer encoder block on token ids: attention, LayerNorm, feed-forward."""
    keras = _keras()
    layers = keras.layers
    ids = keras.Input((tokens,), dtype="int32", name="tokens")
    x = layers.Embedding(1000, width, name="embed")(ids)
    attended = layers.MultiHeadAttention(num_heads=4, key_dim=width // 4, name="attention")(
        x, x)
    x = layers.LayerNormalization(name="norm_1")(layers.Add(name="residual_1")([x, attended]))
    hidden = layers.Dense(4 * width, activation="relu", name="ffn_in")(x)
    x = layers.LayerNormalization(name="norm_2")(layers.Add(name="residual_2")(
        [x, layers.Dense(width, name="ffn_out")(hidden)]))
    outputs = layers.Dense(2, name="logits")(layers.GlobalAveragePooling1D(name="pool")(x))
    return keras.Model(ids, outputs, name="attention_encoder")


BUILDERS: dict[str, Callable[[], Any]] = {
    "transfer_tiny": transfer_tiny_resnet,
    "transfer_mnv2": transfer_mobilenet_v2,
    "siamese": siamese,
    "two_outputs": two_outputs,
    "attention_encoder": attention_encoder,
}


def save_user_model(name: str, folder: Path) -> Path:
    """Build ``name``, calibrate its BatchNorm statistics, save it as ``.keras``."""
    from dnntune.model.loading import calibrate_batchnorm, generate_inputs

    model = BUILDERS[name]()
    shapes = [tuple(1 if d is None else d for d in t.shape) for t in model.inputs]
    calibrate_batchnorm(model, generate_inputs(shapes, [str(t.dtype) for t in model.inputs],
                                               SEED))
    path = Path(folder) / f"{name}.keras"
    model.save(path)
    return path
