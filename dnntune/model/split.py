"""Split a model at a cut into a head (device) and a tail (cloud).

The head and tail are :class:`~dnntune.model.replay.NodeProgram` s: they replay the model's
flattened node list before and after the cut, calling the model's own layers. So every
prefix cut splits, including cuts inside a nested backbone and between two calls of a
shared layer (where Keras cannot build a sub-model), and the user's model is never
touched. Head outputs and tail inputs are the cut's crossing tensors in graph order;
model outputs already computed on the device are appended to the head's outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dnntune.errors import DnntuneError
from dnntune.model.cuts import Cut, enumerate_cuts
from dnntune.model.graph import LayerGraph
from dnntune.model.replay import NodeProgram


@dataclass(frozen=True)
class SplitModel:
    """A model split at one cut.

    Attributes:
        cut: The cut.
        head: Device program (model inputs → ``head_outputs``), ``None`` if the device
            runs no layer (cloud-only).
        tail: Cloud program (``tail_inputs`` → ``tail_outputs``), ``None`` if the cloud
            runs no layer (mobile-only).
        head_outputs: Names of the head's outputs: crossing tensors, then device-held outputs.
        tail_inputs: Names of the crossing tensors the tail reads, in order.
        tail_outputs: Names of the model outputs the tail computes.
        model_inputs: Names of the model's inputs.
        model_outputs: Names of the model's outputs, in the model's order.
    """

    cut: Cut
    head: NodeProgram | Any | None  # Any: a TensorFlow graph's GraphProgram
    tail: NodeProgram | Any | None
    head_outputs: tuple[str, ...]
    tail_inputs: tuple[str, ...]
    tail_outputs: tuple[str, ...]
    model_inputs: tuple[str, ...]
    model_outputs: tuple[str, ...]

    def run_head(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Run the device part; returns every tensor it holds afterwards, by name."""
        held = dict(zip(self.model_inputs, inputs, strict=True))
        if self.head is not None:
            outs = self.head(inputs)
            held.update(zip(self.head_outputs, outs, strict=True))
        return held

    def run_head_timed(self, inputs: Sequence[np.ndarray]
                       ) -> tuple[dict[str, np.ndarray], float]:
        """:meth:`run_head` and the head's in-graph seconds (0 when cloud-only)."""
        held = dict(zip(self.model_inputs, inputs, strict=True))
        seconds = 0.0
        if self.head is not None:
            outs, seconds = self.head.timed(inputs)
            held.update(zip(self.head_outputs, outs, strict=True))
        return held, seconds

    def run_tail(self, crossing: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the cloud part on the crossing tensors (in ``tail_inputs`` order)."""
        if self.tail is None:
            return []
        return self.tail(crossing)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """tail(head(x)): the model outputs, in the model's order."""
        held = self.run_head(inputs)
        held.update(zip(self.tail_outputs,
                        self.run_tail([held[n] for n in self.tail_inputs]), strict=True))
        return [held[n] for n in self.model_outputs]


class Splitter:
    """Builds :class:`SplitModel` s of one model from its flattened node list.

    Args:
        model: The Keras model ``graph`` describes (never modified).
        graph: Its layer graph; nested models it keeps whole stay whole here too.

    Example:
        >>> # splitter = Splitter(loaded.model, loaded.graph)
        >>> # split = splitter.split(40); outputs = split.run(loaded.example_inputs())
    """

    def __init__(self, model: Any, graph: LayerGraph) -> None:
        from dnntune.model.keras_graph import walk_model
        from dnntune.model.loading import import_keras

        import_keras()
        self.graph = graph
        self.cuts = enumerate_cuts(graph)
        from dnntune.model.tf_graph import GraphModel, GraphSplitter

        self._graph_splitter = (GraphSplitter(model, graph) if isinstance(model, GraphModel)
                                else None)
        if self._graph_splitter is not None:  # a TensorFlow graph: pruned functions
            return
        self._walk = walk_model(model, graph.atomic)
        if tuple(n.name for n in self._walk.nodes) != graph.layer_names:
            raise DnntuneError("the model's nodes have different names than its graph; "
                               "was the graph built from another model?")

    def split(self, index: int) -> SplitModel:
        """Split at cut ``index`` (0 = cloud-only … ``len(layers)`` = mobile-only)."""
        if self._graph_splitter is not None:
            return self._graph_splitter.split(index)
        walk = self._walk
        return split_with(
            self.graph, self.cuts, index,
            lambda outs, name: NodeProgram(walk.nodes[:index], walk.inputs, outs, name),
            lambda ins, outs, name: NodeProgram(walk.nodes[index:], ins, outs, name))


def split_with(graph: LayerGraph, cuts: Sequence[Cut], index: int,
               make_head: Callable[[tuple[str, ...], str], Any],
               make_tail: Callable[[tuple[str, ...], tuple[str, ...], str], Any]) -> SplitModel:
    """The split at cut ``index``; ``make_head(outputs, name)`` and
    ``make_tail(inputs, outputs, name)`` build the two programs."""
    if not 0 <= index < len(cuts):
        raise DnntuneError(f"cut index {index} out of range: expected 0 to "
                           f"{len(cuts) - 1} for {graph.model_name}")
    cut = cuts[index]
    layers = graph.layers
    device = {layer.name for layer in layers if layer.is_input}
    device.update(layer.name for layer in layers[:index])
    crossing = tuple(t.name for t in cut.tensors)
    runs_on_device = any(not layer.is_input for layer in layers[:index])
    on_device_outputs = tuple(n for n in graph.model_outputs
                              if graph.tensor(n).layer in device)
    tail_outputs = tuple(n for n in graph.model_outputs if n not in on_device_outputs)
    head_outputs = crossing + tuple(n for n in on_device_outputs if n not in crossing)
    name = graph.model_name
    head = tail = None
    if runs_on_device and head_outputs:
        head = make_head(head_outputs, f"{name} head at cut {index}")
    if tail_outputs:
        tail = make_tail(crossing, tail_outputs, f"{name} tail at cut {index}")
    return SplitModel(cut, head, tail, head_outputs if head is not None else (),
                      crossing, tail_outputs, graph.model_inputs, graph.model_outputs)
