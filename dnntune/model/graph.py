"""The layer graph: plain, frozen data that describes a model without TensorFlow.

A :class:`LayerGraph` lists the model's layers in one deterministic topological order.
Each layer names the tensors it consumes and describes the tensors it produces
(shape with the batch dimension, dtype, bytes). Profiles embed the same description,
so the analyzer can rebuild the graph from a saved profile with no model at hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from dnntune.errors import ConfigError


@dataclass(frozen=True)
class TensorSpec:
    """One tensor a layer produces.

    Attributes:
        name: ``"<layer>:<output index>"``, unique in the graph.
        shape: Concrete shape, batch dimension first.
        dtype: NumPy dtype name, e.g. ``"float32"``.
        bytes: ``prod(shape) * itemsize``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int

    @property
    def layer(self) -> str:
        """Name of the layer that produces this tensor."""
        return self.name.rsplit(":", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "tensor") -> TensorSpec:
        try:
            return cls(name=str(data["name"]), shape=tuple(int(d) for d in data["shape"]),
                       dtype=str(data["dtype"]), bytes=int(data["bytes"]))
        except KeyError as exc:
            raise ConfigError(where, f"missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(where, f"bad value ({exc})") from None


@dataclass(frozen=True)
class LayerNode:
    """One layer (one call of a Keras operation) in the graph.

    Attributes:
        name: Unique layer name.
        type: Class name, e.g. ``"Conv2D"``; ``"InputLayer"`` for model inputs.
        inputs: Names of the tensors consumed, in call order (may repeat).
        outputs: Tensors produced.
        params: Number of weights (trainable and not).
        flops: Estimated floating-point operations for one batch (2 per multiply-add).
    """

    name: str
    type: str
    inputs: tuple[str, ...]
    outputs: tuple[TensorSpec, ...]
    params: int = 0
    flops: int = 0

    @property
    def output_bytes(self) -> int:
        return sum(t.bytes for t in self.outputs)

    @property
    def is_input(self) -> bool:
        return self.type == "InputLayer"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "inputs": list(self.inputs),
            "outputs": [t.to_dict() for t in self.outputs],
            "output_shapes": [list(t.shape) for t in self.outputs],
            "output_bytes": self.output_bytes,
            "params": self.params,
            "flops": self.flops,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "layer") -> LayerNode:
        try:
            name = str(data["name"])
            here = f"{where} {name!r}"
            return cls(
                name=name,
                type=str(data["type"]),
                inputs=tuple(str(t) for t in data["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t, f"{here} output")
                              for t in data["outputs"]),
                params=int(data.get("params", 0)),
                flops=int(data.get("flops", 0)),
            )
        except KeyError as exc:
            raise ConfigError(where, f"missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(where, f"bad value ({exc})") from None


@dataclass(frozen=True)
class LayerGraph:
    """A model's layers in topological order, with its input and output tensors.

    Layers of nested models are listed in place (``backbone/conv``) unless the nested
    model is named in ``atomic``, which the user asked to keep as one layer.

    Example:
        >>> from dnntune.model.graph import LayerGraph, LayerNode, TensorSpec
        >>> x = TensorSpec("in:0", (1, 4), "float32", 16)
        >>> y = TensorSpec("fc:0", (1, 2), "float32", 8)
        >>> g = LayerGraph("toy", (LayerNode("in", "InputLayer", (), (x,)),
        ...                        LayerNode("fc", "Dense", ("in:0",), (y,), 10, 16)),
        ...                ("in:0",), ("fc:0",))
        >>> g.layer_names
        ('in', 'fc')
    """

    model_name: str
    layers: tuple[LayerNode, ...]
    model_inputs: tuple[str, ...]
    model_outputs: tuple[str, ...]
    atomic: tuple[str, ...] = ()
    _tensors: dict[str, TensorSpec] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_layers(self.layers, self.model_inputs, self.model_outputs, self.model_name)
        self._tensors.update({t.name: t for layer in self.layers for t in layer.outputs})

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def tensor(self, name: str) -> TensorSpec:
        return self._tensors[name]

    def to_networkx(self) -> nx.DiGraph:
        """A DiGraph of layers; edge ``u -> v`` carries the tensors and bytes v reads from u."""
        g = nx.DiGraph(model=self.model_name)
        for index, layer in enumerate(self.layers):
            g.add_node(layer.name, index=index, type=layer.type, params=layer.params,
                       flops=layer.flops, output_bytes=layer.output_bytes,
                       output_shapes=[t.shape for t in layer.outputs])
        for layer in self.layers:
            for tname in dict.fromkeys(layer.inputs):
                src = self._tensors[tname].layer
                if g.has_edge(src, layer.name):
                    g.edges[src, layer.name]["tensors"].append(tname)
                    g.edges[src, layer.name]["bytes"] += self._tensors[tname].bytes
                else:
                    g.add_edge(src, layer.name, tensors=[tname],
                               bytes=self._tensors[tname].bytes)
        return g

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.model_name,
                                "model_inputs": list(self.model_inputs),
                                "model_outputs": list(self.model_outputs),
                                "layers": [layer.to_dict() for layer in self.layers]}
        if self.atomic:
            data["atomic"] = list(self.atomic)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "graph") -> LayerGraph:
        try:
            layers = tuple(LayerNode.from_dict(d, f"{where} layers[{i}]")
                           for i, d in enumerate(data["layers"]))
            return cls(str(data["model"]), layers, tuple(data["model_inputs"]),
                       tuple(data["model_outputs"]),
                       tuple(str(a) for a in data.get("atomic", ())))
        except KeyError as exc:
            raise ConfigError(where, f"missing key {exc.args[0]!r}") from None


def structure_notes(graph: LayerGraph) -> list[str]:
    """One line each on how nested models and shared layers appear in ``graph``.

    Reads only the names: ``scope/layer`` for a layer of a nested model, ``layer@i``
    for the i-th call of a shared layer.

    Example:
        >>> x = TensorSpec("in:0", (1, 4), "float32", 16)
        >>> y = TensorSpec("enc/fc:0", (1, 2), "float32", 8)
        >>> structure_notes(LayerGraph("toy", (LayerNode("in", "InputLayer", (), (x,)),
        ...     LayerNode("enc/fc", "Dense", ("in:0",), (y,))), ("in:0",), ("enc/fc:0",)))
        ['nested models listed layer by layer: enc (1 layers)']
    """
    scopes: dict[str, int] = {}
    calls: dict[str, int] = {}
    for layer in graph.layers:
        scope, _, base = layer.name.rpartition("/")
        if scope:
            scopes[scope] = scopes.get(scope, 0) + 1
        if "@" in base:
            shared = f"{scope}/{base.split('@', 1)[0]}" if scope else base.split("@", 1)[0]
            calls[shared] = calls.get(shared, 0) + 1
    notes = []
    if scopes:
        notes.append("nested models listed layer by layer: " + ", ".join(
            f"{scope} ({count} layers)" for scope, count in scopes.items()))
    if graph.atomic:
        notes.append("nested models kept whole (--atomic): " + ", ".join(graph.atomic))
    if calls:
        notes.append("shared layers, one node per call: " + ", ".join(
            f"{name} ({count} calls)" for name, count in calls.items()))
    return notes


def count_params(graph: LayerGraph) -> int:
    """The model's weights, each counted once: a shared layer's nodes (``layer@i``, one
    per call, also as a scope: ``encoder@i/layer``) hold the same weights, so only one
    of them counts.

    Example:
        >>> x = TensorSpec("in:0", (1, 4), "float32", 16)
        >>> a = TensorSpec("fc@1:0", (1, 4), "float32", 16)
        >>> b = TensorSpec("fc@2:0", (1, 4), "float32", 16)
        >>> count_params(LayerGraph("toy", (LayerNode("in", "InputLayer", (), (x,)),
        ...     LayerNode("fc@1", "Dense", ("in:0",), (a,), params=20),
        ...     LayerNode("fc@2", "Dense", ("fc@1:0",), (b,), params=20)), ("in:0",),
        ...     ("fc@2:0",)))
        20
    """
    weights: dict[str, int] = {}
    for layer in graph.layers:  # a shared nested model's calls: "encoder@0/hidden", ...
        weights[re.sub(r"@\d+(?=/|$)", "", layer.name)] = layer.params
    return sum(weights.values())


def validate_layers(layers: Iterable[LayerNode], model_inputs: Iterable[str],
                    model_outputs: Iterable[str], where: str) -> None:
    """Check names are unique and every tensor is produced before it is consumed."""
    produced: set[str] = set()
    seen: set[str] = set()
    for layer in layers:
        if layer.name in seen:
            raise ConfigError(where, f"layer name {layer.name!r} appears twice")
        seen.add(layer.name)
        for tname in layer.inputs:
            if tname not in produced:
                raise ConfigError(where, f"layer {layer.name!r} reads tensor {tname!r} "
                                         "before any earlier layer produces it")
        produced.update(t.name for t in layer.outputs)
    for tname in (*model_inputs, *model_outputs):
        if tname not in produced:
            raise ConfigError(where, f"model tensor {tname!r} is produced by no layer")
