"""Cut points: every prefix of the layer order, and the tensors that cross each one.

Cut ``p`` puts the first ``p`` layers of :attr:`LayerGraph.layers` on the device and
the rest in the cloud. Cut 0 is cloud-only (the raw input is sent), cut ``L`` is
mobile-only (nothing is sent and the output stays on the device). Model inputs are
always *produced* on the device: the phone holds the data, so at cut 0 (and at any
cut that has run only input layers) the raw input tensors cross.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dnntune.model.graph import LayerGraph, TensorSpec


@dataclass(frozen=True)
class Cut:
    """One cut point.

    Attributes:
        index: Number of layers on the device (0 = cloud-only, L = mobile-only).
        after: Name of the last device layer, or ``None`` for cut 0.
        tensors: Tensors sent up to the cloud, each once, in graph order.
        bytes_up: Total bytes of ``tensors``.
        bytes_down: Bytes of the model outputs computed in the cloud, sent back.
    """

    index: int
    after: str | None
    tensors: tuple[TensorSpec, ...]
    bytes_up: int
    bytes_down: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "after": self.after,
            "tensors": [{"name": t.name, "shape": list(t.shape), "bytes": t.bytes}
                        for t in self.tensors],
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }


def crossing_tensors(graph: LayerGraph, device_layers: Iterable[str]) -> tuple[TensorSpec, ...]:
    """Tensors produced on the device and read by at least one cloud layer.

    Args:
        graph: The layer graph.
        device_layers: Names of the layers placed on the device (need not be a prefix,
            but must be closed under predecessors for the result to be meaningful).

    Returns:
        The crossing tensors, each counted once, in the order they are produced.
    """
    on_device = set(device_layers) | {layer.name for layer in graph.layers if layer.is_input}
    needed: set[str] = set()
    for layer in graph.layers:
        if layer.name not in on_device:
            needed.update(t for t in layer.inputs if graph.tensor(t).layer in on_device)
    return tuple(t for layer in graph.layers if layer.name in on_device
                 for t in layer.outputs if t.name in needed)


def enumerate_cuts(graph: LayerGraph) -> list[Cut]:
    """Every prefix cut of ``graph``: ``len(graph.layers) + 1`` cuts, in one sweep.

    Example:
        >>> from dnntune.model.graph import LayerGraph, LayerNode, TensorSpec
        >>> x = TensorSpec("in:0", (1, 4), "float32", 16)
        >>> y = TensorSpec("fc:0", (1, 2), "float32", 8)
        >>> g = LayerGraph("toy", (LayerNode("in", "InputLayer", (), (x,)),
        ...                        LayerNode("fc", "Dense", ("in:0",), (y,))),
        ...                ("in:0",), ("fc:0",))
        >>> [(c.index, c.bytes_up, c.bytes_down) for c in enumerate_cuts(g)]
        [(0, 16, 8), (1, 16, 8), (2, 0, 0)]
    """
    layers = graph.layers
    position = {layer.name: i for i, layer in enumerate(layers)}
    # last_use[t]: position of the last layer reading tensor t; a tensor produced at or
    # before the cut crosses iff some reader sits after the cut.
    last_use: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for tname in layer.inputs:
            last_use[tname] = i
    # One sweep: ``live`` holds the tensors made on the device that a later layer still
    # reads (model inputs from the start), keyed by producer position then output order.
    live = {(position[t.layer], k): t for layer in layers if layer.is_input
            for k, t in enumerate(layer.outputs) if t.name in last_use}
    down = [0] * (len(layers) + 2)  # difference array: outputs computed in the cloud
    for name in dict.fromkeys(graph.model_outputs):
        producer = position[graph.tensor(name).layer]
        if not layers[producer].is_input:
            down[0] += graph.tensor(name).bytes
            down[producer + 1] -= graph.tensor(name).bytes
    cuts: list[Cut] = []
    bytes_down = 0
    for p in range(len(layers) + 1):
        if p:
            done = layers[p - 1]
            if not done.is_input:
                live.update(((p - 1, k), t) for k, t in enumerate(done.outputs)
                            if last_use.get(t.name, -1) >= p)
            for key in [key for key, t in live.items() if last_use[t.name] < p]:
                del live[key]
        bytes_down += down[p]
        crossing = tuple(live[key] for key in sorted(live))
        cuts.append(Cut(index=p, after=layers[p - 1].name if p else None, tensors=crossing,
                        bytes_up=sum(t.bytes for t in crossing), bytes_down=bytes_down))
    return cuts
