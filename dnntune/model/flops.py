"""Estimated floating-point operations per layer (2 FLOPs per multiply-add).

Estimates cover the common layer types of CNNs, MLPs, RNNs and transformers from the
layer's class name, its config and its concrete input/output shapes; layers that only
move data (reshape, concatenation, padding, an Embedding's table lookup) and unknown
types count 0. They are for ranking and plotting, not for timing: the profiler measures
time. Each estimator's comment gives the count it makes, so a hand count can check it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from math import prod
from typing import Any

Shape = tuple[int, ...]
Estimator = Callable[[Mapping[str, Any], Sequence[Shape], Sequence[Shape]], int]
NamedEstimator = Callable[[Mapping[str, Any], Mapping[str, Shape], Sequence[Shape]], int]


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


# Per time step and sample, U units, F input features: the input and recurrent matmuls,
# then pointwise work per unit. LSTM: 4 sums of the two matmuls, 4 biases, 3 sigmoids +
# 2 tanh, c = f*c + i*g (3), h = o*tanh(c) (1): 17. GRU with reset_after (Keras's
# default): 2 sums (z, r), 6 biases (input and recurrent), 2 sigmoids, r*h_part (1),
# + x_part (1), tanh (1), h = z*h + (1-z)*hh (4): 17; without reset_after: 3 biases, 14.
# SimpleRNN: 1 sum, 1 bias, 1 activation: 3.
def _recurrent(gates: int, pointwise: Callable[[Mapping[str, Any]], int]) -> Estimator:
    def estimate(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
        batch, steps, features = ins[0][0], ins[0][1], ins[0][-1]
        units = int(config["units"])
        matmuls = 2 * gates * units * (features + units)
        return batch * steps * (matmuls + pointwise(config) * units)
    return estimate


def _lstm_pointwise(config: Mapping[str, Any]) -> int:
    return 17 if config.get("use_bias", True) else 13


def _gru_pointwise(config: Mapping[str, Any]) -> int:
    biases = (6 if config.get("reset_after", True) else 3) if config.get("use_bias", True) else 0
    return 11 + biases


def _rnn_pointwise(config: Mapping[str, Any]) -> int:
    return 3 if config.get("use_bias", True) else 2


def _bidirectional(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]
                   ) -> int:
    """Both directions of the wrapped layer, plus the merge unless it concatenates."""
    inner = config["layer"]
    one_way = ESTIMATORS[inner["class_name"]](inner["config"], ins, outs)
    merge = 0 if config.get("merge_mode", "concat") in ("concat", None) else prod(outs[0])
    return 2 * one_way + merge


def _layer_norm(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    """Per element: mean (1 add), centre (1), square (1), variance (1 add), normalise
    (1 multiply by the row's rsqrt), then scale (1) and centre (1) when enabled."""
    per_element = 5 + (1 if config.get("scale", True) else 0) + (
        1 if config.get("center", True) else 0)
    return per_element * prod(outs[0])


def _einsum_dense(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    """2 × the product of every index's size (one multiply-add per index tuple) + bias."""
    lhs, out_term = str(config["equation"]).split("->")
    in_term = lhs.split(",")[0]
    sizes: dict[str, int] = {}
    broadcast = 1
    for term, shape in ((in_term, ins[0]), (out_term, outs[0])):
        head, _, tail = term.partition("...")
        if "..." in term and term is in_term:
            broadcast = prod(shape[len(head):len(shape) - len(tail)])
        for letter, size in (*zip(head, shape, strict=False),
                             *zip(tail, shape[len(shape) - len(tail):], strict=False)):
            sizes.setdefault(letter, size)
    bias = prod(outs[0]) if config.get("bias_axes") else 0
    return 2 * broadcast * prod(sizes.values()) + bias


def _multi_head_attention(config: Mapping[str, Any], ins: Mapping[str, Shape],
                          outs: Sequence[Shape]) -> int:
    """Q/K/V projections, scaling Q, QKᵀ, softmax (3 per score), scores × V, output
    projection; biases when ``use_bias``. T query and S key positions, H heads."""
    query, value = ins["query"], ins["value"]
    key = ins.get("key", value)
    batch, t_len, s_len = query[0], prod(query[1:-1]), prod(value[1:-1])
    heads, key_dim = int(config["num_heads"]), int(config["key_dim"])
    value_dim = int(config.get("value_dim") or key_dim)
    out_dim = prod(outs[0]) // (batch * t_len)
    bias = 1 if config.get("use_bias", True) else 0
    projections = batch * (
        (2 * query[-1] + bias) * t_len * heads * key_dim
        + (2 * key[-1] + bias) * s_len * heads * key_dim
        + (2 * value[-1] + bias) * s_len * heads * value_dim
        + (2 * heads * value_dim + bias) * t_len * out_dim)
    scale = batch * t_len * heads * key_dim
    scores = batch * heads * t_len * s_len * (2 * key_dim + 3 + 2 * value_dim)
    return projections + scale + scores


def _dot_attention(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]
                   ) -> int:
    """keras.layers.Attention: QKᵀ, softmax (3 per score), scores × V."""
    query, value = ins[0], ins[1]
    batch, t_len, s_len = query[0], prod(query[1:-1]), prod(value[1:-1])
    return batch * t_len * s_len * (2 * query[-1] + 3 + 2 * value[-1])


def _zero(config: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    return 0


ESTIMATORS: dict[str, Estimator] = {
    "Conv1D": _conv, "Conv2D": _conv, "Conv3D": _conv,
    "Conv2DTranspose": lambda c, i, o: 2 * prod(i[0]) * _kernel(c) * o[0][-1],
    "DepthwiseConv2D": _depthwise, "DepthwiseConv1D": _depthwise,
    "SeparableConv2D": _separable, "SeparableConv1D": _separable,
    "Dense": _dense, "EinsumDense": _einsum_dense,
    "BatchNormalization": _elementwise(2), "LayerNormalization": _layer_norm,
    # RMSNormalization per element: square, mean (1 add), normalise, scale.
    "RMSNormalization": _elementwise(4),
    "Rescaling": _elementwise(2), "Normalization": _elementwise(2),
    "ReLU": _elementwise(1), "Activation": _elementwise(1), "Softmax": _elementwise(3),
    "LeakyReLU": _elementwise(1), "PReLU": _elementwise(1), "ELU": _elementwise(1),
    "Add": _merge, "Subtract": _merge, "Multiply": _merge, "Average": _merge,
    "Maximum": _merge, "Minimum": _merge,
    "MaxPooling1D": _pool, "MaxPooling2D": _pool, "AveragePooling1D": _pool,
    "AveragePooling2D": _pool,
    "GlobalAveragePooling1D": _global_pool, "GlobalAveragePooling2D": _global_pool,
    "GlobalMaxPooling1D": _global_pool, "GlobalMaxPooling2D": _global_pool,
    "LSTM": _recurrent(4, _lstm_pointwise), "GRU": _recurrent(3, _gru_pointwise),
    "SimpleRNN": _recurrent(1, _rnn_pointwise), "Bidirectional": _bidirectional,
    "Attention": _dot_attention,
    # A table lookup: no arithmetic (as fvcore and thop count it).
    "Embedding": _zero,
}
# Estimators that need to know which input is which (query, value, key).
NAMED_ESTIMATORS: dict[str, NamedEstimator] = {"MultiHeadAttention": _multi_head_attention}


def estimate_flops(layer_type: str, config: Mapping[str, Any], input_shapes: Sequence[Shape],
                   output_shapes: Sequence[Shape], input_names: Sequence[str] = ()) -> int:
    """FLOPs of one call of a layer; 0 for unknown types or missing shapes.

    Args:
        layer_type: The layer's class name.
        config: Its ``get_config()``.
        input_shapes: Concrete shapes (batch first) of the tensors it reads, in order.
        output_shapes: Concrete shapes of the tensors it produces.
        input_names: The call parameter each input is passed as (e.g. ``"query"``);
            needed by layers whose inputs play different roles.

    Example:
        >>> estimate_flops("Dense", {"use_bias": True}, [(1, 784)], [(1, 512)])
        803328
    """
    if not input_shapes or not output_shapes:
        return 0
    try:
        if layer_type in NAMED_ESTIMATORS:
            named: dict[str, Shape] = {}
            for name, shape in zip(input_names, input_shapes, strict=False):
                named.setdefault(name, shape)
            return int(NAMED_ESTIMATORS[layer_type](config, named, output_shapes))
        estimator = ESTIMATORS.get(layer_type)
        return 0 if estimator is None else int(estimator(config, input_shapes, output_shapes))
    except (KeyError, IndexError, TypeError):
        return 0
