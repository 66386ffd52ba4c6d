"""Estimated floating-point operations per layer (2 FLOPs per multiply-add).

Estimates cover the common layer types of CNNs, MLPs and RNNs from the layer's class
name, its config and its concrete input/output shapes; other layers count 0. They are
for ranking and plotting, not for timing: the profiler measures time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from math import prod
from typing import Any

Shape = tuple[int, ...]
Estimator = Callable[[Mapping[str, Any], Sequence[Shape], Sequence[Shape]], int]


def _kernel(config: Mapping[str, Any]) -> int:
    return prod(config.get("kernel_size", (1,)))


def _conv(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    c_in = ins[0][-1]
    groups = config.get("groups", 1) or 1
    macs = prod(outs[0]) * _kernel(config) * c_in // groups
    return 2 * macs + (prod(outs[0]) if config.get("use_bias") else 0)


def _depthwise(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    return 2 * prod(outs[0]) * _kernel(config) + (prod(outs[0]) if config.get("use_bias") else 0)


def _separable(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    c_in = ins[0][-1]
    mult = config.get("depth_multiplier", 1)
    spatial = prod(outs[0][:-1])
    depthwise = 2 * spatial * c_in * mult * _kernel(config)
    pointwise = 2 * spatial * c_in * mult * outs[0][-1]
    return depthwise + pointwise


def _dense(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    return 2 * prod(ins[0]) * outs[0][-1] + (prod(outs[0]) if config.get("use_bias") else 0)


def _elementwise(factor: int) -> Estimator:
    return lambda config, ins, outs: factor * prod(outs[0])


def _merge(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    return max(len(ins) - 1, 1) * prod(outs[0])


def _pool(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    return prod(outs[0]) * prod(config.get("pool_size", (1,)))


def _global_pool(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    return prod(ins[0])


def _recurrent(gates: int) -> Estimator:
    def estimate(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
        batch, steps, features = ins[0][0], ins[0][1], ins[0][-1]
        units = int(config["units"])
        matmuls = 2 * gates * units * (features + units)
        pointwise = 4 * gates * units  # bias, activations, cell/state updates
        return batch * steps * (matmuls + pointwise)
    return estimate


ESTIMATORS: dict[str, Estimator] = {
    "Conv1D": _conv, "Conv2D": _conv, "Conv3D": _conv,
    "Conv2DTranspose": lambda c, i, o: 2 * prod(i[0]) * _kernel(c) * o[0][-1],
    "DepthwiseConv2D": _depthwise, "DepthwiseConv1D": _depthwise,
    "SeparableConv2D": _separable, "SeparableConv1D": _separable,
    "Dense": _dense, "EinsumDense": _dense,
    "BatchNormalization": _elementwise(2), "LayerNormalization": _elementwise(5),
    "ReLU": _elementwise(1), "Activation": _elementwise(1), "Softmax": _elementwise(3),
    "LeakyReLU": _elementwise(1), "PReLU": _elementwise(1), "ELU": _elementwise(1),
    "Add": _merge, "Subtract": _merge, "Multiply": _merge, "Average": _merge,
    "Maximum": _merge, "Minimum": _merge,
    "MaxPooling1D": _pool, "MaxPooling2D": _pool, "AveragePooling1D": _pool,
    "AveragePooling2D": _pool,
    "GlobalAveragePooling1D": _global_pool, "GlobalAveragePooling2D": _global_pool,
    "GlobalMaxPooling1D": _global_pool, "GlobalMaxPooling2D": _global_pool,
    "LSTM": _recurrent(4), "GRU": _recurrent(3), "SimpleRNN": _recurrent(1),
}


def estimate_flops(layer_type: str, config: Mapping[str, Any], input_shapes: Sequence[Shape],
                   output_shapes: Sequence[Shape]) -> int:
    """FLOPs of one call of a layer; 0 for unknown types or missing shapes.

    Example:
        >>> estimate_flops("Dense", {"use_bias": True}, [(1, 784)], [(1, 512)])
        803328
    """
    estimator = ESTIMATORS.get(layer_type)
    if estimator is None or not input_shapes or not output_shapes:
        return 0
    try:
        return int(estimator(config, input_shapes, output_shapes))
    except (KeyError, IndexError, TypeError):
        return 0
