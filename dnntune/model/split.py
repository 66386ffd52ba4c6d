"""Split a model at a cut into a head (device) and a tail (cloud).

The split is built from a private clone of the model, so the user's model is never
touched (Keras adds nodes to every layer a new functional model is built from).
Head outputs and tail inputs are the cut's crossing tensors in graph order; model
outputs already computed on the device are appended to the head's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dnntune.errors import DnntuneError
from dnntune.model.cuts import Cut, enumerate_cuts
from dnntune.model.graph import LayerGraph
from dnntune.model.loading import compile_model


@dataclass(frozen=True)
class SplitModel:
    """A model split at one cut.

    Attributes:
        cut: The cut.
        head: Device model (model inputs → ``head_outputs``), ``None`` if the device runs
            no layer (cloud-only).
        tail: Cloud model (``tail_inputs`` → ``tail_outputs``), ``None`` if the cloud runs
            no layer (mobile-only).
        head_outputs: Names of the head's outputs: crossing tensors, then device-held outputs.
        tail_inputs: Names of the crossing tensors the tail reads, in order.
        tail_outputs: Names of the model outputs the tail computes.
        model_inputs: Names of the model's inputs.
        model_outputs: Names of the model's outputs, in the model's order.
    """

    cut: Cut
    head: Any
    tail: Any
    head_outputs: tuple[str, ...]
    tail_inputs: tuple[str, ...]
    tail_outputs: tuple[str, ...]
    model_inputs: tuple[str, ...]
    model_outputs: tuple[str, ...]
    _compiled: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def _call(self, which: str, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the head or tail as one compiled graph, as the profiler measured them."""
        if which not in self._compiled:
            self._compiled[which] = compile_model(self.head if which == "head" else self.tail)
        return self._compiled[which](list(inputs))

    def run_head(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Run the device part; returns every tensor it holds afterwards, by name."""
        held = dict(zip(self.model_inputs, inputs, strict=True))
        if self.head is not None:
            outs = self._call("head", inputs)
            held.update(zip(self.head_outputs, outs, strict=True))
        return held

    def run_tail(self, crossing: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the cloud part on the crossing tensors (in ``tail_inputs`` order)."""
        if self.tail is None:
            return []
        return self._call("tail", crossing)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """tail(head(x)): the model outputs, in the model's order."""
        held = self.run_head(inputs)
        held.update(zip(self.tail_outputs,
                        self.run_tail([held[n] for n in self.tail_inputs]), strict=True))
        return [held[n] for n in self.model_outputs]


class Splitter:
    """Builds :class:`SplitModel` s of one model; clones it once, shares the weights.

    Example:
        >>> # splitter = Splitter(loaded.model, loaded.graph)
        >>> # split = splitter.split(40); outputs = split.run(loaded.example_inputs())
    """

    def __init__(self, model: Any, graph: LayerGraph) -> None:
        from dnntune.model.keras_graph import model_nodes
        from dnntune.model.loading import import_keras

        keras = import_keras()
        self._clone = keras.models.clone_model(model)
        self._clone.set_weights(model.get_weights())
        self.graph = graph
        self.cuts = enumerate_cuts(graph)
        nodes = model_nodes(self._clone)
        if tuple(n.name for n in nodes) != graph.layer_names:
            raise DnntuneError("the model's clone has different layer names than its graph; "
                               "give every layer a unique name")
        self._tensors = {name: t for mn in nodes
                         for t, name in zip(mn.node.outputs, mn.output_names, strict=True)}

    def split(self, index: int) -> SplitModel:
        """Split at cut ``index`` (0 = cloud-only … ``len(layers)`` = mobile-only)."""
        import keras

        if not 0 <= index < len(self.cuts):
            raise DnntuneError(f"cut index {index} out of range: expected 0 to "
                               f"{len(self.cuts) - 1} for {self.graph.model_name}")
        cut = self.cuts[index]
        layers = self.graph.layers
        device = {layer.name for layer in layers if layer.is_input}
        device.update(layer.name for layer in layers[:index])
        crossing = tuple(t.name for t in cut.tensors)
        runs_on_device = any(not layer.is_input for layer in layers[:index])
        on_device_outputs = tuple(n for n in self.graph.model_outputs
                                  if self.graph.tensor(n).layer in device)
        tail_outputs = tuple(n for n in self.graph.model_outputs if n not in on_device_outputs)
        head_outputs = crossing + tuple(n for n in on_device_outputs if n not in crossing)
        head = tail = None
        if runs_on_device and head_outputs:
            head = keras.Model(self._clone.inputs, [self._tensors[n] for n in head_outputs],
                               name=f"{self.graph.model_name}_head_{index}")
        if tail_outputs:
            tail = keras.Model([self._tensors[n] for n in crossing],
                               [self._tensors[n] for n in tail_outputs],
                               name=f"{self.graph.model_name}_tail_{index}")
        return SplitModel(cut, head, tail, head_outputs if head is not None else (),
                          crossing, tail_outputs, self.graph.model_inputs,
                          self.graph.model_outputs)

