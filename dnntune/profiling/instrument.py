"""The graph instrumenter: per-layer timers compiled into one ``tf.function`` pass.

As DNNTune does, every layer is bracketed by ``tf.timestamp()`` ops inside the graph.
A chain of control dependencies orders them: a layer's start stamp runs after the
previous layer's end stamp, the layer reads its inputs through ``tf.identity`` ops that
depend on its start stamp, and its end stamp depends on its outputs. So layers run one
after another and each stamp pair brackets exactly one layer's work, with no Python in
between. The model is not modified: the function calls its layers on new tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dnntune.model.keras_graph import ModelNode, as_functional, walk_model
from dnntune.model.loading import import_keras


def configure_runtime(num_threads: int, cpu_affinity: tuple[int, ...] = ()) -> dict[str, Any]:
    """Pin the process and set TensorFlow's thread pools; call before the first op runs.

    Inter-op parallelism is 1 so layers never overlap; intra-op is ``num_threads``.
    Grappler's dependency optimizer is turned off: it prunes the identity ops the
    timer chain relies on and reports a cycle on ResNet-style graphs.

    Returns:
        What is actually in force (TensorFlow ignores thread settings once it has run
        an op): ``{"intra_op", "inter_op", "cpu_affinity", "applied"}``.
    """
    import os

    import_keras()
    import tensorflow as tf

    if cpu_affinity:
        os.sched_setaffinity(0, set(cpu_affinity))
    applied = True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # the runtime is already initialised in this process
        applied = False
    tf.config.optimizer.set_experimental_options({"dependency_optimization": False})
    return {
        # 0 means "TensorFlow's default": one thread per core.
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads()
        or len(os.sched_getaffinity(0)),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "cpu_affinity": tuple(sorted(os.sched_getaffinity(0))),
        "applied": applied,
    }


class InstrumentedModel:
    """A compiled pass over a functional model that also returns per-layer timestamps.

    Calling it returns ``(outputs, stamps)`` where ``stamps`` holds ``layers + 1``
    timestamps in seconds: layer ``i`` ran between stamps ``i`` and ``i + 1``, one per
    node of :func:`~dnntune.model.keras_graph.walk_model` (input layers get a zero-length
    interval). Layers of nested models are timed one by one, in place.

    Args:
        model: A functional or Sequential Keras model (never modified).
        atomic: Nested models to time as one layer (the graph's ``atomic``).

    Example:
        >>> # inst = InstrumentedModel(loaded.model, loaded.graph.atomic)
        >>> # outputs, stamps = inst([x])
    """

    def __init__(self, model: Any, atomic: tuple[str, ...] = ()) -> None:
        import_keras()
        import tensorflow as tf

        self.model = as_functional(model)
        walk = walk_model(self.model, atomic)
        self.nodes: list[ModelNode] = list(walk.nodes)
        self._inputs, self._outputs = walk.inputs, walk.outputs
        self._fn: Callable[..., Any] = tf.function(self._run, autograph=False)

    @property
    def layer_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def _run(self, *inputs: Any) -> tuple[list[Any], Any]:
        import tensorflow as tf

        values: dict[str, Any] = dict(zip(self._inputs, inputs, strict=True))
        stamps = [tf.timestamp()]
        for mn in self.nodes:
            if mn.is_input:
                stamps.append(stamps[-1])
                continue
            # The layer reads its inputs through identities that wait for the previous
            # stamp; the next stamp waits for all of the layer's outputs.
            with tf.control_dependencies([stamps[-1]]):
                guarded = {name: tf.identity(values[name]) for name in dict.fromkeys(mn.inputs)}
            flat = mn.call(guarded)
            with tf.control_dependencies(flat):
                stamps.append(tf.timestamp())
            values.update(zip(mn.output_names, flat, strict=True))
        outs = [values[name] for name in self._outputs]
        return outs, tf.stack(stamps)

    def __call__(self, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        outs, stamps = self._fn(*inputs)
        return [np.asarray(o) for o in outs], np.asarray(stamps)


def compile_plain(model: Any) -> Callable[[list[np.ndarray]], tuple[list[np.ndarray], float]]:
    """The uninstrumented model as one compiled pass (the baseline).

    Only two stamps bracket the whole model, so the pass runs as the model would, and
    its in-graph duration excludes the Python/TensorFlow call overhead (which grows with
    the number of captured weights and is no layer's cost).

    Returns:
        ``call(inputs) -> (outputs, in_graph_seconds)``.
    """
    keras = import_keras()
    import tensorflow as tf

    model = as_functional(model)
    structure = model.input

    @tf.function(autograph=False)
    def run(*inputs: Any) -> Any:
        start = tf.timestamp()
        # As in the instrumented pass: the inputs wait for the start stamp.
        with tf.control_dependencies([start]):
            guarded = [tf.identity(x) for x in inputs]
        outputs = tf.nest.flatten(model(keras.tree.pack_sequence_as(structure, guarded),
                                        training=False))
        with tf.control_dependencies(outputs):
            end = tf.timestamp()
        return outputs, end - start

    def call(inputs: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        outputs, seconds = run(*inputs)
        return [np.asarray(o) for o in outputs], float(seconds)
    return call
