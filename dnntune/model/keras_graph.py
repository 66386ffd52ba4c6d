"""Read the layer graph out of a functional Keras model, nested models flattened.

Walks the model's own nodes (one per layer call), orders them deterministically
(topological, ties broken by the model's layer order) and describes each with concrete
shapes. A functional or Sequential model used as a layer inside another (a
``keras.applications`` backbone, a Sequential block) is walked in place: each of its
layer calls becomes a node named after where it lives (``backbone/block_3_project``),
so the backbone has cut points, timings and FLOPs of its own. Nested models named in
``atomic`` stay one node. A layer called more than once (a shared layer) gets one node
per call (``encoder@1``). Nothing here changes the model: the nodes are the model's own,
and the instrumenter and the split replay them, so every part of dnntune agrees on
layer names and order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
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
    """One call of a Keras operation, with the names dnntune gives it and its tensors.

    Attributes:
        name: Unique node name; ``scope/layer`` inside a nested model, ``layer@i`` for
            the i-th call of a shared layer.
        node: The Keras node (the operation and its symbolic call arguments).
        inputs: dnntune names of ``node.input_tensors``, in the same order.
        output_names: dnntune names of ``node.outputs``.
    """

    name: str
    node: Any  # keras Node
    inputs: tuple[str, ...]
    output_names: tuple[str, ...]

    @property
    def operation(self) -> Any:
        return self.node.operation

    @property
    def is_input(self) -> bool:
        return bool(self.node.is_input)

    def call(self, values: Mapping[str, Any]) -> list[Any]:
        """Run the operation on concrete tensors looked up by name; flat outputs."""
        import keras

        local = {id(t): values[n] for t, n in zip(self.node.input_tensors, self.inputs,
                                                   strict=True)}
        args, kwargs = self.node.arguments.fill_in(local)
        return list(keras.tree.flatten(self.operation(*args, **kwargs)))


@dataclass(frozen=True)
class ModelWalk:
    """A model's nodes in dnntune's order, nested models flattened.

    Attributes:
        nodes: Every node, topologically ordered; input layers of the top model only.
        inputs: Names of the model's input tensors.
        outputs: Names of the model's output tensors, in the model's order.
        nested: Every call of a nested model, as ``(node name, model name, walked in
            place)``.
    """

    nodes: tuple[ModelNode, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nested: tuple[tuple[str, str, bool], ...] = ()


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


def walk_model(model: Any, atomic: Collection[str] = ()) -> ModelWalk:
    """Flatten ``model`` into :class:`ModelNode` s, nested models in place.

    Args:
        model: A functional or built Sequential Keras model.
        atomic: Nested models (by layer name or scoped name) to keep as one node.

    Example:
        >>> # walk = walk_model(model); [n.name for n in walk.nodes][:3]
    """
    model = as_functional(model)
    nodes: list[ModelNode] = []
    names: dict[int, str] = {}
    nested: list[tuple[str, str, bool]] = []
    outputs = _walk(model, "", names, frozenset(atomic), nodes, nested)
    inputs = [names[id(t)] for t in model.inputs]
    return ModelWalk(tuple(nodes), tuple(inputs), tuple(outputs), tuple(nested))


def model_nodes(model: Any, atomic: Collection[str] = ()) -> list[ModelNode]:
    """The model's nodes in dnntune's deterministic order (see :func:`walk_model`)."""
    return list(walk_model(model, atomic).nodes)


def _ordered_nodes(model: Any) -> list[Any]:
    """One functional model's own nodes, topological, ties broken by layer order."""
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
    return [by_id[i] for i in nx.lexicographical_topological_sort(dag, key=lambda i: key[i])]


def _walk(model: Any, scope: str, names: dict[int, str], atomic: frozenset[str],
          out: list[ModelNode], nested: list[tuple[str, str, bool]]) -> list[str]:
    """Append ``model``'s nodes (flattening nested models) to ``out``; its output names.

    ``names`` maps ``id(KerasTensor)`` of ``model``'s inputs to dnntune tensor names
    (empty for the top model, whose input layers name their own tensors).
    """
    ordered = _ordered_nodes(model)
    calls: dict[int, int] = {}
    for n in ordered:
        calls[id(n.operation)] = calls.get(id(n.operation), 0) + 1
    for n in ordered:
        op = n.operation
        name = op.name if calls[id(op)] == 1 else f"{op.name}@{op._inbound_nodes.index(n)}"
        name = f"{scope}/{name}" if scope else name
        if n.is_input:
            if not scope:  # a nested model's inputs are the tensors its caller passed
                out.append(ModelNode(name, n, (), (f"{name}:0",)))
                names[id(n.outputs[0])] = f"{name}:0"
            continue
        inputs = tuple(names[id(t)] for t in n.input_tensors)
        inner = _flattenable(n, name, atomic)
        if _nested_functional(op) is not None:
            nested.append((name, op.name, inner is not None))
        if inner is not None:
            feed = {id(t): names[id(a)] for t, a in zip(inner.inputs, _call_inputs(n),
                                                          strict=True)}
            produced = _walk(inner, name, feed, atomic, out, nested)
            names.update(zip((id(t) for t in n.outputs), produced, strict=True))
            continue
        output_names = tuple(f"{name}:{i}" for i in range(len(n.outputs)))
        out.append(ModelNode(name, n, inputs, output_names))
        names.update(zip((id(t) for t in n.outputs), output_names, strict=True))
    return [names[id(t)] for t in model.outputs]


def _nested_functional(op: Any) -> Any:
    """The functional graph of a nested Functional/Sequential model, else ``None``."""
    import keras

    if not isinstance(op, keras.Model):
        return None
    inner = getattr(op, "_functional", None) if isinstance(op, keras.Sequential) else op
    if inner is None or not getattr(inner, "_nodes_by_depth", None):
        return None
    return inner


def _call_inputs(node: Any) -> list[Any]:
    import keras

    return list(keras.tree.flatten(node.arguments.args[0])) if node.arguments.args else []


def _flattenable(node: Any, name: str, atomic: frozenset[str]) -> Any:
    """The nested model's graph if this call can be walked in place, else ``None``.

    A call is walked in place when the operation is a functional or Sequential model
    not named in ``atomic``, called on one structure of tensors matching its inputs in
    number and dtype, with no other tensor argument (e.g. an explicit mask).
    """
    inner = _nested_functional(node.operation)
    if inner is None or node.operation.name in atomic or name in atomic:
        return None
    passed = _call_inputs(node)
    if (len(passed) != len(node.input_tensors) or len(passed) != len(inner.inputs)
            or len(node.outputs) != len(inner.outputs)):
        return None
    if any(str(a.dtype) != str(t.dtype) or len(a.shape) != len(t.shape)
           for a, t in zip(passed, inner.inputs, strict=True)):
        return None
    return inner


def tensor_names(nodes: list[ModelNode]) -> dict[int, str]:
    """Map ``id(KerasTensor)`` to its dnntune name, for every tensor the nodes produce."""
    return {id(t): name for mn in nodes for t, name in zip(mn.node.outputs, mn.output_names,
                                                          strict=True)}


def build_layer_graph(model: Any, batch_size: int = 1, model_name: str | None = None,
                      atomic: Collection[str] = ()) -> LayerGraph:
    """Describe ``model`` as a :class:`LayerGraph` with concrete shapes and bytes.

    Args:
        model: A functional or built Sequential Keras model.
        batch_size: Replaces the ``None`` batch dimension in every shape.
        model_name: Name recorded in the graph (defaults to ``model.name``).
        atomic: Nested models to keep as one node (see :func:`walk_model`).

    Raises:
        DnntuneError: for a subclassed model, or a shape with unknown dimensions.

    Example:
        >>> # graph = build_layer_graph(keras.applications.MobileNetV2(weights=None))
    """
    walk = walk_model(model, atomic)
    known = {n for call in walk.nested for n in call[:2]}
    unknown = sorted(set(atomic) - known)
    if unknown:
        raise DnntuneError(
            f"--atomic {','.join(unknown)}: no nested model of that name; nested models: "
            f"{', '.join(sorted({c[0] for c in walk.nested})) or 'none'}")
    specs = infer_specs(walk, batch_size)
    layers = []
    for mn in walk.nodes:
        op = mn.operation
        layer_type = "InputLayer" if mn.is_input else type(op).__name__
        outputs = tuple(specs[n] for n in mn.output_names)
        flops = 0
        if not mn.is_input:
            flops = node_flops(mn, [specs[n].shape for n in mn.inputs],
                               [t.shape for t in outputs])
        layers.append(LayerNode(
            name=mn.name, type=layer_type, inputs=mn.inputs, outputs=outputs,
            params=int(op.count_params()) if getattr(op, "built", False)
            and hasattr(op, "count_params") else 0, flops=flops))
    return LayerGraph(model_name or model.name, tuple(layers), model_inputs=walk.inputs,
                      model_outputs=walk.outputs, atomic=tuple(sorted(set(atomic))))


def infer_specs(walk: ModelWalk, batch_size: int,
                input_shapes: list[tuple[int, ...]] | None = None) -> dict[str, TensorSpec]:
    """Concrete shape, dtype and bytes of every tensor of ``walk``, by name.

    A node's recorded Keras shapes are used when its inputs have the shapes it was
    built with and they are fully known; otherwise (a nested model built at another
    input size or with unknown dimensions, a layer Keras left partly unknown) its
    output shapes are inferred from the actual input shapes.

    Args:
        walk: The flattened model.
        batch_size: Replaces the ``None`` batch dimension.
        input_shapes: Shapes (batch included) of the model inputs, to use instead of
            the input layers' own.
    """
    given = dict(zip(walk.inputs, input_shapes or (), strict=False))
    specs: dict[str, TensorSpec] = {}
    for mn in walk.nodes:
        shapes = [_with_batch(t.shape, batch_size) for t in mn.node.outputs]
        if mn.is_input and mn.output_names[0] in given:
            shapes = [given[mn.output_names[0]]]
        elif not mn.is_input:
            actual = [specs[n].shape for n in mn.inputs]
            if (actual != [_with_batch(t.shape, batch_size) for t in mn.node.input_tensors]
                    or any(d is None for shape in shapes for d in shape)):
                shapes = _output_shapes(mn, [specs[n] for n in mn.inputs])
        for t, name, shape in zip(mn.node.outputs, mn.output_names, shapes, strict=True):
            specs[name] = _tensor_spec(shape, str(t.dtype), name, mn.name)
    return specs


def _output_shapes(mn: ModelNode, inputs: list[TensorSpec]) -> list[tuple[Any, ...]]:
    """Output shapes of a node called on inputs of other shapes than it was built with."""
    from keras import KerasTensor

    symbolic = {id(t): KerasTensor(spec.shape, dtype=spec.dtype)
                for t, spec in zip(mn.node.input_tensors, inputs, strict=True)}
    args, kwargs = mn.node.arguments.fill_in(symbolic)
    try:
        result = mn.operation.compute_output_spec(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise DnntuneError(f"layer {mn.name!r} cannot run on inputs of shapes "
                           f"{[s.shape for s in inputs]}: {str(exc).splitlines()[0][:200]}"
                           ) from None
    return [tuple(t.shape) for t in _flat(result)]


def node_flops(mn: ModelNode, input_shapes: list[tuple[int, ...]],
               output_shapes: list[tuple[int, ...]]) -> int:
    """Estimated FLOPs of one node; a nested model kept whole counts all of its layers."""
    inner = _nested_functional(mn.operation)
    if inner is not None:
        walk = walk_model(inner)
        batch = input_shapes[0][0] if input_shapes and input_shapes[0] else 1
        specs = infer_specs(walk, batch, input_shapes)
        return sum(node_flops(n, [specs[i].shape for i in n.inputs],
                              [specs[o].shape for o in n.output_names])
                   for n in walk.nodes if not n.is_input)
    return estimate_flops(type(mn.operation).__name__, _config(mn.operation), input_shapes,
                          output_shapes, input_names=_argument_names(mn))


def _argument_names(mn: ModelNode) -> list[str]:
    """The call parameter each of ``mn.node.input_tensors`` is passed as, or ``""``.

    Walks the call arguments in the order Keras flattens them into ``input_tensors``,
    so ``mha(x, x)`` names its two inputs ``query`` and ``value``.
    """
    import inspect

    import keras

    try:
        positional = list(inspect.signature(mn.operation.call).parameters)
    except (TypeError, ValueError):
        positional = []
    names = []
    arguments = (mn.node.arguments.args, mn.node.arguments.kwargs)
    for path, value in keras.tree.flatten_with_path(arguments):
        if not isinstance(value, keras.KerasTensor):
            continue
        where = path[1] if len(path) > 1 else ""
        if path[0] == 0:
            where = positional[where] if isinstance(where, int) and where < len(positional) else ""
        names.append(str(where))
    return names if len(names) == len(mn.node.input_tensors) else [""] * len(names)


def _flat(structure: Any) -> list[Any]:
    import keras

    return list(keras.tree.flatten(structure))


def _config(op: Any) -> dict[str, Any]:
    try:
        config = op.get_config()
    except (NotImplementedError, TypeError, AttributeError):
        return {}
    return config if isinstance(config, dict) else {}


def _with_batch(shape: Any, batch_size: int) -> tuple[Any, ...]:
    return tuple(batch_size if (i == 0 and d is None) else d for i, d in enumerate(shape))


def _tensor_spec(shape: tuple[Any, ...], dtype_name: str, name: str, layer: str
                 ) -> TensorSpec:
    if any(d is None for d in shape):
        raise DnntuneError(
            f"layer {layer!r} has an unknown dimension in its shape {tuple(shape)}; "
            "give the model's input shape (--input-shape or model.input_shape in the config)")
    concrete = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype_name)
    return TensorSpec(name=name, shape=concrete, dtype=dtype.name,
                      bytes=prod(concrete) * dtype.itemsize)
