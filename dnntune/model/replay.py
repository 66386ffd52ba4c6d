"""Run a slice of a model's flattened node list as one compiled function.

The split's head and tail are such slices: named tensors in, named tensors out. They
call the model's own layers (the same weights, nothing copied or rebuilt), so a cut
inside a nested backbone, or between two calls of a shared layer, splits exactly
where a Keras sub-model could not be built. Calling layers on concrete tensors adds no
node to them: the user's model is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dnntune.errors import DnntuneError
from dnntune.model.keras_graph import ModelNode


class NodeProgram:
    """Nodes replayed in order as one ``tf.function``, compiled on first call.

    Args:
        nodes: The nodes to run, in the walk's order (input layers are skipped).
        input_names: Names of the tensors fed in, in call order.
        output_names: Names of the tensors returned, in order.
        name: For messages.

    Raises:
        DnntuneError: if a node reads a tensor that is neither fed in nor produced
            earlier in the program.

    Example:
        >>> # head = NodeProgram(walk.nodes[:40], walk.inputs, ("block_3_add:0",), "head")
        >>> # (crossing,) = head([x])
    """

    def __init__(self, nodes: Sequence[ModelNode], input_names: Sequence[str],
                 output_names: Sequence[str], name: str) -> None:
        self.nodes = tuple(n for n in nodes if not n.is_input)
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.name = name
        available = set(self.input_names)
        for mn in self.nodes:
            missing = [t for t in mn.inputs if t not in available]
            if missing:
                raise DnntuneError(f"{name}: node {mn.name!r} reads {missing}, which the "
                                   "program neither receives nor computes")
            available.update(mn.output_names)
        absent = [t for t in self.output_names if t not in available]
        if absent:
            raise DnntuneError(f"{name}: outputs {absent} are neither inputs nor computed")
        self._fn: Callable[..., Any] | None = None
        self._timed_fn: Callable[..., Any] | None = None

    def run_symbolic(self, *inputs: Any) -> list[Any]:
        """The program's body on TensorFlow tensors (traced by ``tf.function``)."""
        values: dict[str, Any] = dict(zip(self.input_names, inputs, strict=True))
        for mn in self.nodes:
            values.update(zip(mn.output_names, mn.call(values), strict=True))
        return [values[n] for n in self.output_names]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run on arrays (in ``input_names`` order); arrays in ``output_names`` order."""
        if self._fn is None:
            from dnntune.model.loading import import_keras

            import_keras()
            import tensorflow as tf

            self._fn = tf.function(self.run_symbolic, autograph=False)
        return [np.asarray(o) for o in self._fn(*inputs)]

    def timed(self, inputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """Like calling it, plus the program's in-graph seconds (two stamps bracket it,
        as in :func:`dnntune.profiling.instrument.compile_plain`; no Python dispatch)."""
        if self._timed_fn is None:
            from dnntune.model.loading import import_keras

            import_keras()
            self._timed_fn = timed_function(self.run_symbolic)
        outs, seconds = self._timed_fn(*inputs)
        return [np.asarray(o) for o in outs], float(seconds)


def timed_function(run_symbolic: Callable[..., Any]) -> Callable[..., Any]:
    """``run_symbolic`` compiled with two ``tf.timestamp`` stamps around it, as in
    :func:`dnntune.profiling.instrument.compile_plain`: the compiled function returns
    ``(outputs, seconds)``, the in-graph time with no Python dispatch."""
    import tensorflow as tf

    def bracketed(*args: Any) -> Any:
        start = tf.timestamp()
        with tf.control_dependencies([start]):
            guarded = [tf.identity(a) for a in args]
        outs = run_symbolic(*guarded)
        with tf.control_dependencies(outs):
            end = tf.timestamp()
        return outs, end - start
    return tf.function(bracketed, autograph=False)
