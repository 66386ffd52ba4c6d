"""Custom layers the zoo needs, registered so saved models load in Keras safe mode."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dnntune")
class ChannelSplit(keras.layers.Layer):
    """Split the last axis into two equal halves (ShuffleNet V2's channel split)."""

    def call(self, x: Any) -> Any:
        half = x.shape[-1] // 2
        return x[..., :half], x[..., half:]

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> Any:
        half = input_shape[-1] // 2
        return (*input_shape[:-1], half), (*input_shape[:-1], input_shape[-1] - half)


@keras.saving.register_keras_serializable(package="dnntune")
class ChannelShuffle(keras.layers.Layer):
    """Interleave channels across ``groups`` (ShuffleNet's channel shuffle)."""

    def __init__(self, groups: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = groups

    def call(self, x: Any) -> Any:
        h, w, c = x.shape[1], x.shape[2], x.shape[3]
        x = ops.reshape(x, (-1, h, w, self.groups, c // self.groups))
        x = ops.transpose(x, (0, 1, 2, 4, 3))
        return ops.reshape(x, (-1, h, w, c))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "groups": self.groups}
