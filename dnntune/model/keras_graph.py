"""Read the layer graph out of a functional Keras model.

Walks the model's own nodes (one per layer call), orders them deterministically
(topological, ties broken by the model's layer order) and describes each with concrete
shapes. Nothing here changes the model. The same walk drives the instrumenter and the
split, so every part of dnntune agrees on layer names and order.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import networkx as nx
import numpy as np

from dnntune.errors import DnntuneError
from dnntune.model.flops import estimate_flops
from dnntune.model.graph import LayerGraph, LayerNode, TensorSpec


@dataclass(frozen=True)
class ModelNode:
    """One call of a Keras operation in the model, with the name dnntune gives it."""

    name: str
    node: Any  # keras Node
    output_names: tuple[str, ...]

    @property
    def operation(self) -> Any:
        return self.node.operation

    @property
    def is_input(self) -> bool:
        return bool(self.node.is_input)


def check_functional(model: Any, where: str = "model") -> None:
    """Raise unless ``model`` has a functional graph (Functional or built Sequential)."""
    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    if not nodes_by_depth or not getattr(model, "inputs", None):
        raise DnntuneError(
            f"{where}: {type(model).__name__} is a subclassed Keras model with no functional "
            "graph; only functional and Sequential models can be split, because dnntune "
            "needs the layer graph to place each layer and find the tensors that cross a cut")


def as_functional(model: Any, where: str = "model") -> Any:
    """The functional graph behind ``model``: itself, or a built Sequential's inner graph."""
    import keras

    if isinstance(model, keras.Sequential):
        inner = getattr(model, "_functional", None)
        if inner is None:
            raise DnntuneError(f"{where}: the Sequential model was never built, so its input "
                               "shape is unknown; save it after calling it once or after "
                               "keras.Input(...)")
        return inner
    check_functional(model, where)
    return model


def model_nodes(model: Any) -> list[ModelNode]:
    """The model's nodes in dnntune's deterministic topological order."""
    check_functional(model)
    nodes = [n for depth in model._nodes_by_depth.values() for n in depth]
    op_rank = {id(op): i for i, op in enumerate(model.operations)}
    key = {id(n): (op_rank.get(id(n.operation), len(op_rank)),
                   n.operation._inbound_nodes.index(n)) for n in nodes}
    dag = nx.DiGraph()
    producer: dict[int, Any] = {id(t): n for n in nodes for t in n.outputs}
    for n in nodes:
        dag.add_node(id(n))
        for t in n.input_tensors:
            parent = producer.get(id(t))
            if parent is not None:
                dag.add_edge(id(parent), id(n))
    by_id = {id(n): n for n in nodes}
    ordered = [by_id[i] for i in nx.lexicographical_topological_sort(dag, key=lambda i: key[i])]

    calls: dict[int, int] = {}
    for n in ordered:
        calls[id(n.operation)] = calls.get(id(n.operation), 0) + 1
    result = []
    for n in ordered:
        name = n.operation.name
        if calls[id(n.operation)] > 1:  # a shared layer: one graph node per call
            name = f"{name}@{n.operation._inbound_nodes.index(n)}"
        result.append(ModelNode(name, n, tuple(f"{name}:{i}" for i in range(len(n.outputs)))))
    return result


def tensor_names(nodes: list[ModelNode]) -> dict[int, str]:
    """Map ``id(KerasTensor)`` to its dnntune name, for every tensor the nodes produce."""
    return {id(t): name for mn in nodes for t, name in zip(mn.node.outputs, mn.output_names,
                                                          strict=True)}


def build_layer_graph(model: Any, batch_size: int = 1, model_name: str | None = None
                      ) -> LayerGraph:
    """Describe ``model`` as a :class:`LayerGraph` with concrete shapes and bytes.

    Args:
        model: A functional or built Sequential Keras model.
        batch_size: Replaces the ``None`` batch dimension in every shape.
        model_name: Name recorded in the graph (defaults to ``model.name``).

    Raises:
        DnntuneError: for a subclassed model, or a shape with unknown dimensions.

    Example:
        >>> # graph = build_layer_graph(keras.applications.MobileNetV2(weights=None))
    """
    nodes = model_nodes(model)
    names = tensor_names(nodes)
    layers = []
    for mn in nodes:
        outputs = tuple(_tensor_spec(t, name, batch_size, mn.name)
                        for t, name in zip(mn.node.outputs, mn.output_names, strict=True))
        inputs = tuple(names[id(t)] for t in mn.node.input_tensors if id(t) in names)
        in_shapes = [_concrete(t.shape, batch_size, mn.name) for t in mn.node.input_tensors]
        op = mn.operation
        config = _config(op)
        layer_type = "InputLayer" if mn.is_input else type(op).__name__
        layers.append(LayerNode(
            name=mn.name, type=layer_type, inputs=inputs, outputs=outputs,
            params=int(op.count_params()) if getattr(op, "built", False)
            and hasattr(op, "count_params") else 0,
            flops=estimate_flops(layer_type, config, in_shapes, [t.shape for t in outputs]),
        ))
    return LayerGraph(
        model_name or model.name, tuple(layers),
        model_inputs=tuple(names[id(t)] for t in model.inputs),
        model_outputs=tuple(names[id(t)] for t in model.outputs),
    )


def _config(op: Any) -> dict[str, Any]:
    try:
        config = op.get_config()
    except (NotImplementedError, TypeError, AttributeError):
        return {}
    return config if isinstance(config, dict) else {}


def _concrete(shape: tuple[Any, ...], batch_size: int, layer: str) -> tuple[int, ...]:
    dims = [batch_size if (i == 0 and d is None) else d for i, d in enumerate(shape)]
    if any(d is None for d in dims):
        raise DnntuneError(
            f"layer {layer!r} has an unknown dimension in its shape {tuple(shape)}; "
            "give the model's input shape (--input-shape or model.input_shape in the config)")
    return tuple(int(d) for d in dims)


def _tensor_spec(tensor: Any, name: str, batch_size: int, layer: str) -> TensorSpec:
    shape = _concrete(tensor.shape, batch_size, layer)
    dtype = np.dtype(str(tensor.dtype))
    return TensorSpec(name=name, shape=shape, dtype=dtype.name,
                      bytes=prod(shape) * dtype.itemsize)
