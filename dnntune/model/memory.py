"""Peak memory of running a model at a shape and batch, estimated before it is built.

A server must refuse a request whose model would not fit before it builds it: building
MobileNetV2 at 832x832 and calibrating its BatchNorm statistics took 10.8 GB. The
estimate comes from the layer graph (pure data): the weights, and the bytes of every
layer's output, each times a factor measured on the zoo against the real peak resident
memory of building, calibrating and running the model (``benchmarks/bench_memory.py``),
chosen so that the estimate stays an upper bound. A zoo model at another shape than its
layer graph's is scaled by the ratio of input elements: activations grow with it, and
so may weights (VGG's dense layers after a Flatten); both are scaled, never shrunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from dnntune.model.graph import LayerGraph

# Measured factors (benchmarks/bench_memory.py, docs/servers.md): peak resident growth of
# build + calibrate + one forward pass, against the graph's figures.
WEIGHT_FACTOR = 5.0       # the built model, its calibration, its saved copy, the loaded copy
ACTIVATION_FACTOR = 12.0  # TensorFlow's buffers, the training-mode pass, the kernels' scratch
FIXED_BYTES = 256 << 20   # what any build costs beyond the model (graph tracing, caches)


@dataclass(frozen=True)
class MemoryEstimate:
    """An upper bound on the memory one request's model takes, and what it is made of."""

    weights_bytes: int
    activation_bytes: int
    peak_bytes: int

    def describe(self) -> str:
        mib = 1 << 20
        return (f"about {self.peak_bytes / mib:,.0f} MiB: {self.weights_bytes / mib:,.0f} MiB "
                f"of weights and {self.activation_bytes / mib:,.0f} MiB of layer outputs")


def estimate_memory(graph: LayerGraph, input_shape: tuple[int, ...] | None = None,
                    batch_size: int | None = None) -> MemoryEstimate:
    """The memory of ``graph``'s model run at ``input_shape`` (without batch) and
    ``batch_size``; both default to the graph's own.

    Example:
        >>> from dnntune.model.graph import LayerNode, TensorSpec
        >>> x = TensorSpec("in:0", (1, 1000), "float32", 4000)
        >>> y = TensorSpec("fc:0", (1, 10), "float32", 40)
        >>> g = LayerGraph("toy", (LayerNode("in", "InputLayer", (), (x,)),
        ...     LayerNode("fc", "Dense", ("in:0",), (y,), params=10010)), ("in:0",), ("fc:0",))
        >>> estimate_memory(g, (2000,), 4).activation_bytes
        32320
    """
    own = graph.tensor(graph.model_inputs[0]).shape
    own_batch = own[0] if own and own[0] else 1
    scale = 1.0
    if input_shape is not None and own[1:]:
        scale = max(1.0, prod(input_shape) / prod(own[1:]))
    batch = (batch_size or own_batch) / own_batch
    weights = int(sum(layer.params for layer in graph.layers) * 4 * scale)
    activations = int(sum(t.bytes for layer in graph.layers for t in layer.outputs)
                      * scale * batch)
    peak = int(WEIGHT_FACTOR * weights + ACTIVATION_FACTOR * activations + FIXED_BYTES)
    return MemoryEstimate(weights, activations, peak)
