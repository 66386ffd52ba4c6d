"""The built-in model zoo: the DNNTune study's models, built offline with random weights.

Every builder takes the input shape (without the batch dimension) and returns a
functional Keras model whose layers all have explicit, stable names, so two processes
that build the same zoo model with the same seed get the same layer names and the
same content hash. ``keras.applications`` models are built with ``weights=None``;
SqueezeNet v1.1 and ShuffleNet V2 are defined here after their papers.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Builder = Callable[[tuple[int, ...]], Any]


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its builder, default input shape (no batch) and input dtype."""

    name: str
    build: Builder
    input_shape: tuple[int, ...]
    input_dtype: str
    description: str
    expected_layers: int  # graph nodes (input layer included) at the default input shape


@contextlib.contextmanager
def fresh_layer_names() -> Iterator[None]:
    """Build with Keras's automatic layer-name counters reset, then restore them.

    ``keras.applications`` leaves some layers to be auto-named (``global_average_pooling2d``,
    ``global_average_pooling2d_1``, ...), so without this a model's layer names and hash
    would depend on what the process built before.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # a Keras without this private module: names may carry suffixes
        yield
        return
    key = "object_name_uids"
    saved = global_state.get_global_attribute(key)
    global_state.set_global_attribute(key, collections.defaultdict(int))
    try:
        yield
    finally:
        global_state.set_global_attribute(key, saved if saved is not None
                                          else collections.defaultdict(int))


def _applications(fn_name: str) -> Builder:
    def build(shape: tuple[int, ...]) -> Any:
        import keras

        fn = getattr(keras.applications, fn_name)
        return fn(weights=None, input_tensor=keras.Input(shape=shape, name="input"))
    return build


def _named(prefix: str) -> Callable[[str], str]:
    return lambda suffix: f"{prefix}_{suffix}"


def build_squeezenet_v11(shape: tuple[int, ...]) -> Any:
    """SqueezeNet v1.1 (Iandola et al., 2016; v1.1 from the authors' repository)."""
    import keras
    from keras import layers

    def fire(x: Any, name: str, squeeze: int, expand: int) -> Any:
        s = layers.Conv2D(squeeze, 1, activation="relu", name=f"{name}_squeeze1x1")(x)
        e1 = layers.Conv2D(expand, 1, activation="relu", name=f"{name}_expand1x1")(s)
        e3 = layers.Conv2D(expand, 3, padding="same", activation="relu",
                           name=f"{name}_expand3x3")(s)
        return layers.Concatenate(name=f"{name}_concat")([e1, e3])

    inp = keras.Input(shape=shape, name="input")
    x = layers.Conv2D(64, 3, strides=2, activation="relu", name="conv1")(inp)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = fire(x, "fire2", 16, 64)
    x = fire(x, "fire3", 16, 64)
    x = layers.MaxPooling2D(3, strides=2, name="pool3")(x)
    x = fire(x, "fire4", 32, 128)
    x = fire(x, "fire5", 32, 128)
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    for i, (sq, ex) in enumerate([(48, 192), (48, 192), (64, 256), (64, 256)], start=6):
        x = fire(x, f"fire{i}", sq, ex)
    x = layers.Dropout(0.5, name="drop9")(x)
    x = layers.Conv2D(1000, 1, activation="relu", name="conv10")(x)
    x = layers.GlobalAveragePooling2D(name="pool10")(x)
    out = layers.Activation("softmax", name="prob")(x)
    return keras.Model(inp, out, name="squeezenet_v11")


def build_shufflenet_v2(shape: tuple[int, ...], width: float = 0.5) -> Any:
    """ShuffleNet V2 (Ma et al., ECCV 2018), Table 5; 0.5x: 48/96/192 channels, 1024 conv5."""
    import keras
    from keras import layers

    from dnntune.model.zoo_layers import ChannelShuffle, ChannelSplit

    stage_channels = {0.5: (48, 96, 192), 1.0: (116, 232, 464)}[width]

    def conv_bn(x: Any, ch: int, name: str, relu: bool = True) -> Any:
        x = layers.Conv2D(ch, 1, use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    def dw_bn(x: Any, stride: int, name: str) -> Any:
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                   name=f"{name}_dw")(x)
        return layers.BatchNormalization(name=f"{name}_dwbn")(x)

    def unit(x: Any, out_ch: int, stride: int, name: str) -> Any:
        if stride == 1:
            left, right = ChannelSplit(name=f"{name}_split")(x)
        else:
            left = conv_bn(dw_bn(x, 2, f"{name}_l"), out_ch // 2, f"{name}_l1")
            right = x
        right = conv_bn(right, out_ch // 2, f"{name}_r1")
        right = conv_bn(dw_bn(right, stride, f"{name}_r"), out_ch // 2, f"{name}_r2")
        x = layers.Concatenate(name=f"{name}_concat")([left, right])
        return ChannelShuffle(groups=2, name=f"{name}_shuffle")(x)

    inp = keras.Input(shape=shape, name="input")
    x = layers.Conv2D(24, 3, strides=2, padding="same", use_bias=False, name="conv1")(inp)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.ReLU(name="conv1_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    for stage, (channels, repeats) in enumerate(zip(stage_channels, (4, 8, 4), strict=True),
                                                start=2):
        for i in range(repeats):
            x = unit(x, channels, 2 if i == 0 else 1, f"stage{stage}_{i + 1}")
    x = conv_bn(x, 1024, "conv5")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(1000, activation="softmax", name="fc")(x)
    return keras.Model(inp, out, name=f"shufflenet_v2_{width}x")


def build_mnist_mlp(shape: tuple[int, ...]) -> Any:
    """The Keras mnist_mlp example: 784-512-512-10 with dropout."""
    import keras
    from keras import layers

    inp = keras.Input(shape=shape, name="input")
    x = layers.Dense(512, activation="relu", name="fc1")(inp)
    x = layers.Dropout(0.2, name="drop1")(x)
    x = layers.Dense(512, activation="relu", name="fc2")(x)
    x = layers.Dropout(0.2, name="drop2")(x)
    out = layers.Dense(10, activation="softmax", name="fc3")(x)
    return keras.Model(inp, out, name="mnist_mlp")


def build_rnn_ptb_small(shape: tuple[int, ...]) -> Any:
    """TensorFlow's PTB language model, "small" config: 2 LSTM layers of 200, 20 steps."""
    import keras
    from keras import layers

    vocab, hidden = 10_000, 200
    inp = keras.Input(shape=shape, dtype="int32", name="input")
    x = layers.Embedding(vocab, hidden, name="embedding")(inp)
    x = layers.LSTM(hidden, return_sequences=True, name="lstm1")(x)
    x = layers.LSTM(hidden, return_sequences=True, name="lstm2")(x)
    out = layers.Dense(vocab, name="logits")(x)
    return keras.Model(inp, out, name="rnn_ptb_small")


def build_tiny_resnet(shape: tuple[int, ...]) -> Any:
    """A small residual CNN for fast tests: identity and projection shortcuts, BN."""
    import keras
    from keras import layers

    def block(x: Any, ch: int, stride: int, name: str) -> Any:
        y = layers.Conv2D(ch, 3, strides=stride, padding="same", name=f"{name}_conv1")(x)
        y = layers.BatchNormalization(name=f"{name}_bn1")(y)
        y = layers.ReLU(name=f"{name}_relu1")(y)
        y = layers.Conv2D(ch, 3, padding="same", name=f"{name}_conv2")(y)
        y = layers.BatchNormalization(name=f"{name}_bn2")(y)
        if stride != 1 or x.shape[-1] != ch:
            x = layers.Conv2D(ch, 1, strides=stride, name=f"{name}_proj")(x)
        y = layers.Add(name=f"{name}_add")([x, y])
        return layers.ReLU(name=f"{name}_out")(y)

    inp = keras.Input(shape=shape, name="input")
    x = layers.Conv2D(8, 3, padding="same", name="stem_conv")(inp)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = block(x, 8, 1, "block1")
    x = block(x, 16, 2, "block2")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(10, activation="softmax", name="fc")(x)
    return keras.Model(inp, out, name="tiny_resnet")


def build_tiny_mlp(shape: tuple[int, ...]) -> Any:
    """A three-layer MLP for the fastest tests."""
    import keras
    from keras import layers

    inp = keras.Input(shape=shape, name="input")
    x = layers.Dense(32, activation="relu", name="fc1")(inp)
    x = layers.Dense(16, activation="relu", name="fc2")(x)
    out = layers.Dense(4, name="fc3")(x)
    return keras.Model(inp, out, name="tiny_mlp")


ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("mobilenet_v1", _applications("MobileNet"), (224, 224, 3), "float32",
             "MobileNet v1 1.0 (keras.applications)", 91),
    ZooEntry("mobilenet_v2", _applications("MobileNetV2"), (224, 224, 3), "float32",
             "MobileNetV2 1.0 (keras.applications)", 156),
    ZooEntry("resnet50", _applications("ResNet50"), (224, 224, 3), "float32",
             "ResNet-50 v1 (keras.applications)", 177),
    ZooEntry("inception_v3", _applications("InceptionV3"), (299, 299, 3), "float32",
             "Inception v3 (keras.applications)", 313),
    ZooEntry("vgg16", _applications("VGG16"), (224, 224, 3), "float32",
             "VGG-16 (keras.applications)", 23),
    ZooEntry("squeezenet_v11", build_squeezenet_v11, (224, 224, 3), "float32",
             "SqueezeNet v1.1 (Iandola et al. 2016)", 41),
    ZooEntry("shufflenet_v2_0.5x", build_shufflenet_v2, (224, 224, 3), "float32",
             "ShuffleNet V2 0.5x (Ma et al. 2018)", 198),
    ZooEntry("mnist_mlp", build_mnist_mlp, (784,), "float32",
             "MLP 784-512-512-10 (Keras mnist_mlp example)", 6),
    ZooEntry("rnn_ptb_small", build_rnn_ptb_small, (20,), "int32",
             "2-layer LSTM PTB language model, small config", 5),
    ZooEntry("tiny_resnet", build_tiny_resnet, (32, 32, 3), "float32",
             "tiny residual CNN for tests", 21),
    ZooEntry("tiny_mlp", build_tiny_mlp, (16,), "float32", "tiny MLP for tests", 4),
)}
