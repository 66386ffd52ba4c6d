"""Model loading: the built-in zoo by name, a user's ``.keras`` / ``.h5`` file, or a
TensorFlow graph (a frozen ``.pb`` or a SavedModel directory, :mod:`dnntune.model.tf_graph`).

:func:`load_model` returns a :class:`LoadedModel`: a functional Keras model with
concrete input shapes, its name, where it came from and its layer graph. Loading is
the edge where bad input is caught: unknown names, missing or corrupt files,
subclassed models and bad shapes all become one-line :class:`DnntuneError`s.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnntune.errors import DnntuneError
from dnntune.model.graph import LayerGraph

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
DEFAULT_SEED = 1234


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to analyse.

    Attributes:
        name: Zoo name or file stem.
        source: ``"zoo"`` or the file path.
        model: The functional Keras model (treat as read-only).
        graph: Its layer graph at ``batch_size``.
        batch_size: Batch dimension used for shapes and bytes.
        seed: Seed used to build (zoo) and to generate inputs.
        file: The model file these exact weights were loaded from (a user's file, or
            the cached build of a calibrated zoo model), or None when the model was
            rebuilt in memory. Remote sides are sent this file, never asked to rebuild.
    """

    name: str
    source: str
    model: Any
    graph: LayerGraph
    batch_size: int
    seed: int
    file: str | None = None

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Input shapes with the batch dimension."""
        return tuple(self.graph.tensor(t).shape for t in self.graph.model_inputs)

    @property
    def input_dtypes(self) -> tuple[str, ...]:
        return tuple(self.graph.tensor(t).dtype for t in self.graph.model_inputs)

    def example_inputs(self, seed: int | None = None) -> list[np.ndarray]:
        """Random inputs of the right shapes and dtypes (integers stay in a small range)."""
        return generate_inputs(self.input_shapes, self.input_dtypes,
                               self.seed if seed is None else seed)


def import_keras() -> Any:
    """Import Keras (and TensorFlow) without the C++ start-up chatter on stderr.

    TensorFlow logs from C++ before Python can configure logging, so the stderr file
    descriptor itself is pointed at /dev/null for the duration of the import. Set
    ``TF_CPP_MIN_LOG_LEVEL`` yourself to see TensorFlow's native logs.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        import keras
        import tensorflow  # noqa: F401 - loads the native library while stderr is quiet
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    if quiet:  # e.g. "N calls triggered tf.function retracing": one function per split
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
    return keras


def known_models() -> list[str]:
    from dnntune.model.zoo import ZOO

    return sorted(ZOO)


def parse_input_shape(text: str) -> list[tuple[int, ...]]:
    """Parse ``"224,224,3"`` (one input) or ``"20;224,224,3"`` (several), batch excluded.

    Example:
        >>> parse_input_shape("224,224,3")
        [(224, 224, 3)]
    """
    shapes = []
    for part in text.split(";"):
        try:
            dims = tuple(int(d) for d in part.split(",") if d.strip())
        except ValueError:
            dims = ()
        if not dims or any(d <= 0 for d in dims):
            raise DnntuneError(
                f"--input-shape {text!r}: expected positive integers without the batch "
                "dimension, e.g. 224,224,3 (several inputs separated by ';')")
        shapes.append(dims)
    return shapes


def load_model(spec: str, input_shapes: Sequence[tuple[int, ...]] | None = None,
               batch_size: int = 1, seed: int = DEFAULT_SEED, calibrate: bool = True,
               name: str | None = None, atomic: Sequence[str] = ()) -> LoadedModel:
    """Load a zoo model by name or a Keras model file.

    Args:
        spec: A zoo name (see :func:`known_models`) or a path to a ``.keras``/``.h5`` file.
        input_shapes: Input shapes without the batch dimension; needed when the file's
            model has unknown dimensions, and rebuilds the model at that shape otherwise.
        batch_size: Batch dimension for the layer graph.
        seed: Seed for zoo weights and calibration inputs.
        calibrate: Calibrate BatchNorm statistics of random-weight zoo models. A
            calibrated zoo model is built once and cached (:mod:`dnntune.model.cache`);
            every later load, in any process, reads the same bytes.
        name: Name to record instead of the zoo name or file stem.
        atomic: Nested models to keep as one layer (all others are listed layer by layer).

    Example:
        >>> # lm = load_model("mobilenet_v2"); len(lm.graph.layers) == 156
    """
    import_keras()
    if batch_size < 1:
        raise DnntuneError(f"batch size must be at least 1, got {batch_size}")
    from dnntune.model.keras_graph import as_functional, build_layer_graph
    from dnntune.model.zoo import ZOO

    if not spec.strip():
        raise DnntuneError(f"model name is empty: expected a .keras/.h5 file or one of "
                           f"{', '.join(known_models())}")
    from dnntune.model.tf_graph import is_graph_spec, load_graph_model

    if spec not in ZOO and is_graph_spec(spec):  # a frozen .pb or a SavedModel directory
        if atomic:
            raise DnntuneError(f"--atomic {','.join(atomic)}: a TensorFlow graph has no nested "
                               "models; its layers are name scopes (?depth=N for coarser ones)")
        graph_model, layer_graph = load_graph_model(spec, input_shapes, batch_size, name)
        return LoadedModel(graph_model.name, spec, graph_model, layer_graph, batch_size, seed,
                           str(graph_model.spec.path))
    if spec in ZOO:
        entry = ZOO[spec]
        shapes = list(input_shapes) if input_shapes else [entry.input_shape]
        if len(shapes) != 1:
            raise DnntuneError(f"--input-shape: {spec} has one input, got {len(shapes)} shapes")
        shape = tuple(shapes[0])
        if calibrate:  # the cached, calibrated bytes: the same model in every process
            model, path = _load_cached_zoo_model(spec, shape, seed)
        else:
            model, path = build_zoo_model(spec, shape, seed), None
        name, source = name or spec, "zoo"
    elif _looks_like_path(spec):
        path = Path(spec)
        model = as_functional(_load_file(path), spec)
        if input_shapes:
            model, path = _with_input_shapes(model, list(input_shapes), spec), None
        name, source = name or Path(spec).stem, spec
    else:
        raise DnntuneError(f"unknown model {spec!r}: expected a .keras/.h5 file or one of "
                           f"{', '.join(known_models())}")
    graph = build_layer_graph(model, batch_size, name, atomic)
    return LoadedModel(name, source, model, graph, batch_size, seed,
                       str(path) if path is not None else None)


def build_zoo_model(spec: str, shape: tuple[int, ...], seed: int) -> Any:
    """A fresh zoo model with seeded random weights and uncalibrated BatchNorm."""
    keras = import_keras()
    from dnntune.model.zoo import ZOO, fresh_layer_names

    keras.utils.set_random_seed(seed)
    try:
        with fresh_layer_names():
            return ZOO[spec].build(shape)
    except ValueError as exc:
        raise DnntuneError(f"--input-shape {shape} does not fit {spec}: "
                           f"{str(exc).splitlines()[0]}") from None


def _load_cached_zoo_model(spec: str, shape: tuple[int, ...], seed: int) -> tuple[Any, Path]:
    from dnntune.model.cache import forget, zoo_model_file
    from dnntune.model.keras_graph import as_functional

    path = zoo_model_file(spec, shape, seed)
    try:
        return as_functional(_load_file(path), spec), path
    except DnntuneError:  # a damaged cache file: build it again, once
        forget(path)
        path = zoo_model_file(spec, shape, seed)
        return as_functional(_load_file(path), spec), path


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(MODEL_SUFFIXES) or os.sep in spec or Path(spec).exists()


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise DnntuneError(f"{path}: no such model file")
    if path.suffix not in MODEL_SUFFIXES:
        raise DnntuneError(f"{path}: expected a Keras model file ending in "
                           f"{', '.join(MODEL_SUFFIXES)}")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise DnntuneError(f"{path}: cannot read the model file ({exc.strerror})") from None
    import keras

    import dnntune.model.zoo_layers  # noqa: F401 - registers the zoo's custom layers

    _check_container(path)
    class_name = _saved_class_name(path)
    if class_name is not None and class_name not in ("Functional", "Sequential", "Model"):
        raise DnntuneError(
            f"{path}: holds a subclassed Keras model ({class_name}); only functional and "
            "Sequential models can be split, because a subclassed model's call() is Python "
            "code with no layer graph to place layers on or find the crossing tensors of")
    try:
        # safe_mode refuses Lambda layers' pickled code: loading never runs foreign code.
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DnntuneError(f"{path}: not a loadable Keras model ({first[:200]})") from None


def _check_container(path: Path) -> None:
    """Name what is wrong with a file that is not even the right kind of archive.

    (Keras would say "File not found" for a file that exists but is not a zip.)
    """
    import zipfile

    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise DnntuneError(f"{path}: not a .keras archive (a .keras file is a zip archive; "
                           f"this one is not, or it is truncated)")
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        if not h5py.is_hdf5(path):
            raise DnntuneError(f"{path}: not an HDF5 file (truncated, or not a Keras "
                               f"{path.suffix} model)")
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise DnntuneError(f"{path}: a zip archive but not a Keras model "
                                   f"(no config.json inside)")


def _saved_class_name(path: Path) -> str | None:
    """The top-level class of a saved model, read from its config without loading it."""
    import json
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
        else:
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
                if raw is None:
                    return None
                config = json.loads(raw if isinstance(raw, str) else raw.decode())
    except (OSError, KeyError, ValueError):
        return None  # let Keras's own loader report what is wrong with the file
    name = config.get("class_name") if isinstance(config, dict) else None
    return str(name) if name else None


def _with_input_shapes(model: Any, shapes: list[tuple[int, ...]], where: str) -> Any:
    """Rebuild ``model`` on inputs of the given shapes (new layers, same weights)."""
    import keras

    if len(shapes) != len(model.inputs):
        raise DnntuneError(f"--input-shape: {where} has {len(model.inputs)} input(s), "
                           f"got {len(shapes)} shape(s)")
    inputs = [keras.Input(shape=s, dtype=t.dtype, name=t.name)
              for s, t in zip(shapes, model.inputs, strict=True)]
    try:
        feed = keras.tree.pack_sequence_as(model.input, inputs)
        clone = keras.models.clone_model(model, input_tensors=feed)
        clone.set_weights(model.get_weights())
    except (ValueError, TypeError) as exc:
        raise DnntuneError(f"--input-shape {shapes}: does not fit {where} "
                           f"({str(exc).splitlines()[0][:200]})") from None
    return clone


def generate_inputs(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str], seed: int
                    ) -> list[np.ndarray]:
    """Deterministic random inputs: N(0, 1) floats, integers in [0, 100)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in zip(shapes, dtypes, strict=True):
        if np.issubdtype(np.dtype(dtype), np.integer):
            out.append(rng.integers(0, 100, size=shape).astype(dtype))
        else:
            out.append(rng.standard_normal(shape).astype(dtype))
    return out


def calibrate_batchnorm(model: Any, inputs: Sequence[np.ndarray], batch: int = 8) -> int:
    """Set every BatchNorm's moving statistics to those of a generated batch.

    Random-weight models otherwise push activations towards 0 (or infinity) layer after
    layer, which makes numeric comparisons meaningless. One training-mode pass with
    momentum 0 makes each moving mean/variance equal to its batch statistics. Only for
    random-weight models: it overwrites the statistics in place.

    Returns:
        The number of BatchNorm layers calibrated.
    """
    import keras

    bns = [layer for layer in _all_layers(model)
           if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return 0
    rng = np.random.default_rng(0)
    data = [np.concatenate([x] + [x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype)
                                  if np.issubdtype(x.dtype, np.floating) else x
                                  for _ in range(batch - 1)]) for x in inputs]
    saved = [bn.momentum for bn in bns]
    try:
        for bn in bns:
            bn.momentum = 0.0
        call_model(model, data, training=True)
    finally:
        for bn, momentum in zip(bns, saved, strict=True):
            bn.momentum = momentum
    return len(bns)


def call_model(model: Any, inputs: Sequence[Any], training: bool = False) -> list[np.ndarray]:
    """Call a Keras model eagerly on a list of inputs; returns its outputs as a list."""
    import keras

    if _is_graph_model(model):
        return list(model(list(inputs)))
    # Feed the structure the model was built with (a tensor, or a list of one tensor).
    feed = keras.tree.pack_sequence_as(model.input, list(inputs))
    outputs = model(feed, training=training)
    return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple))
                                    else [outputs])]


def compile_model(model: Any) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """``model`` as one compiled ``tf.function`` taking and returning lists of arrays."""
    keras = import_keras()
    import tensorflow as tf

    if _is_graph_model(model):  # a TensorFlow graph: its whole pruned function
        return lambda inputs: list(model(list(inputs)))
    structure = model.input

    @tf.function(autograph=False)
    def run(*inputs: Any) -> Any:
        return tf.nest.flatten(model(keras.tree.pack_sequence_as(structure, list(inputs)),
                                     training=False))

    return lambda inputs: [np.asarray(o) for o in run(*inputs)]


def _is_graph_model(model: Any) -> bool:
    from dnntune.model.tf_graph import GraphModel

    return isinstance(model, GraphModel)


def _all_layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_all_layers(layer))
    return found


def model_hash(model: Any) -> str:
    """sha256 of the architecture (JSON config) and every weight's bytes (of a TensorFlow
    graph: of its GraphDef as loaded)."""
    if _is_graph_model(model):
        return str(model.fingerprint())
    digest = hashlib.sha256(model.to_json().encode())
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()
