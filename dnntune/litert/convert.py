"""Convert a Keras model to LiteRT (``.tflite``) and map every LiteRT op to Keras layers.

TensorFlow's own converter folds BatchNorm into convolutions and fuses activations,
so a LiteRT op may implement several Keras layers and some Keras cut points vanish.
:func:`build_layer_map` reads the converted graph and returns a :class:`LayerMap`: for
every op (in execution order) the Keras layers it implements, and for every Keras cut
whether it exists in the LiteRT graph (no op straddles it and every crossing tensor is
a LiteRT tensor). Fused-away cuts are listed with the reason, never hidden.

Example:
    >>> # loaded = load_model("tiny_resnet")
    >>> # result = convert_model(loaded, "fp32")
    >>> # result.layer_map.surviving  # indices of the cuts that exist in LiteRT
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dnntune.errors import DnntuneError
from dnntune.model.graph import LayerGraph

if TYPE_CHECKING:
    from dnntune.model.loading import LoadedModel

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_SAMPLES = 8
_SUFFIX = re.compile(r"_\d+$")


@dataclass(frozen=True)
class OpMapping:
    """One LiteRT op and the Keras layers it implements (graph order; last = its output)."""

    index: int
    op_type: str
    outputs: tuple[str, ...]
    layers: tuple[str, ...]

    @property
    def layer(self) -> str:
        return self.layers[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "type": self.op_type, "outputs": list(self.outputs),
                "layers": list(self.layers)}


@dataclass(frozen=True)
class CutStatus:
    """Whether Keras cut ``index`` exists in the LiteRT graph, and why not."""

    index: int
    after: str | None
    exists: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "after": self.after, "exists": self.exists,
                "reason": self.reason}


@dataclass(frozen=True)
class LayerMap:
    """LiteRT ops ↔ Keras layers of one converted model."""

    model_name: str
    precision: str
    ops: tuple[OpMapping, ...]
    cuts: tuple[CutStatus, ...]

    @property
    def surviving(self) -> tuple[int, ...]:
        return tuple(c.index for c in self.cuts if c.exists)

    @property
    def fused_away(self) -> tuple[CutStatus, ...]:
        return tuple(c for c in self.cuts if not c.exists)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "precision": self.precision,
                "ops": [o.to_dict() for o in self.ops],
                "cuts": [c.to_dict() for c in self.cuts],
                "surviving_cuts": list(self.surviving)}


@dataclass(frozen=True)
class Conversion:
    """A converted model: its bytes, layer map and how long conversion took."""

    tflite: bytes
    layer_map: LayerMap
    convert_s: float


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise DnntuneError(f"--precision must be one of {', '.join(PRECISIONS)}, "
                           f"got {precision!r}")
    return precision


def convert_keras(model: Any, input_shapes: Sequence[tuple[int, ...]],
                  input_dtypes: Sequence[str], precision: str = "fp32", seed: int = 0,
                  name: str = "model") -> bytes:
    """``model`` as a ``.tflite`` flatbuffer (TFLite builtin ops only).

    int8 is post-training full-integer quantization of the weights and activations
    (float inputs and outputs), calibrated on generated inputs; fp16 stores weights as
    float16.

    Raises:
        DnntuneError: naming the ops LiteRT's builtin op set cannot express.
    """
    import tensorflow as tf

    from dnntune.model.loading import import_keras

    import_keras()
    check_precision(precision)
    spec = [tf.TensorSpec(s, d) for s, d in zip(input_shapes, input_dtypes, strict=True)]

    import keras

    if hasattr(model, "run_symbolic"):  # a head/tail replayed node by node (model.replay)
        @tf.function(input_signature=spec, autograph=False)
        def run(*xs: Any) -> Any:
            return model.run_symbolic(*xs)
    else:
        structure = model.input

        @tf.function(input_signature=spec, autograph=False)
        def run(*xs: Any) -> Any:
            return tf.nest.flatten(model(keras.tree.pack_sequence_as(structure, list(xs)),
                                         training=False))

    absl = logging.getLogger("absl")  # its deprecation note on the freezing path is noise
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return _convert(tf, run.get_concrete_function(), precision, input_shapes,
                        input_dtypes, seed, name)
    finally:
        absl.setLevel(level)


def _convert(tf: Any, function: Any, precision: str, input_shapes: Sequence[tuple[int, ...]],
             input_dtypes: Sequence[str], seed: int, name: str) -> bytes:
    from dnntune.model.loading import generate_inputs

    # Without a trackable object the converter freezes variables into constants, which
    # is what lets it fold BatchNorm into the convolutions as on a phone.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        def representative() -> Any:
            for i in range(CALIBRATION_SAMPLES):
                yield generate_inputs(input_shapes, input_dtypes, seed + i)
        converter.representative_dataset = representative
    try:
        with warnings.catch_warnings(), _native_stderr_quiet():
            warnings.simplefilter("ignore", UserWarning)  # "Statistics for quantized inputs"
            return bytes(converter.convert())
    except Exception as exc:  # noqa: BLE001 - the converter raises its own error types
        raise DnntuneError(f"{name}: LiteRT cannot convert it ({_unsupported(exc)})") from None


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null: the converter's C++ side prints its MLIR
    diagnostics there, which the raised exception repeats anyway."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _unsupported(exc: Exception) -> str:
    text = str(exc)
    ops = sorted(set(re.findall(r"'tf\.(\w+)' op", text)) | set(re.findall(r"Flex(\w+)", text)))
    if ops:
        return "unsupported op" + ("s " if len(ops) > 1 else " ") + ", ".join(ops)
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    return (lines[0] if lines else text.strip().splitlines()[0] if text.strip()
            else type(exc).__name__)[:200]


def interpreter(tflite: bytes, threads: int = 1, delegates: bool = True) -> Any:
    """A LiteRT interpreter (``ai_edge_litert``) with tensors allocated.

    With ``delegates`` the default XNNPACK delegate runs the CPU kernels, as on phones.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_content=tflite, num_threads=threads,
                     experimental_op_resolver_type=kind)
    it.allocate_tensors()
    return it


def _layers_in(tensor_name: str, position: dict[str, int]) -> set[str]:
    """Keras layer names in a LiteRT tensor name (``model_1/conv_1/Conv2D;...``)."""
    found = set()
    for part in re.split(r"[;/]", tensor_name):
        stripped = _SUFFIX.sub("", part)
        if stripped in position:  # Keras 3 scopes each call as '<layer>_1'
            found.add(stripped)
        elif part in position:
            found.add(part)
    return found


def _output_rank(name: str) -> tuple[int, str]:
    match = re.search(r"_(\d+)$", name)
    return (int(match.group(1)) if match else 0, name)


def build_layer_map(tflite: bytes, graph: LayerGraph, precision: str = "fp32") -> LayerMap:
    """Map the ops of ``tflite`` to the layers of ``graph`` and every cut to LiteRT.

    Ops whose tensor names name no layer (``Identity``, quantize/dequantize) belong to
    the layer of the op that produced their input, or else of the op that reads their
    output.
    """
    it = interpreter(tflite, delegates=False)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    details = [op for op in it._get_ops_details() if op["op_name"] != "DELEGATE"]
    position = {layer.name: i for i, layer in enumerate(graph.layers)}
    owned: list[set[str]] = [set().union(*(_layers_in(names[t], position)
                                           for t in op["outputs"] if t >= 0))
                             for op in details]
    outputs = sorted(it.get_output_details(), key=lambda d: _output_rank(d["name"]))
    for d, tname in zip(outputs, graph.model_outputs, strict=False):  # 'Identity', ...
        for i, op in enumerate(details):
            if d["index"] in op["outputs"] and not owned[i]:
                owned[i] = {graph.tensor(tname).layer}
    producer = {t: i for i, op in enumerate(details) for t in op["outputs"]}
    for i, op in enumerate(details):  # forward: take the latest producer's layer
        if not owned[i]:
            found = set().union(*(owned[producer[t]] for t in op["inputs"] if t in producer))
            if found:
                owned[i] = {max(found, key=position.__getitem__)}
    for i in reversed(range(len(details))):  # backward: take a reader's layer
        if not owned[i]:
            outs = set(details[i]["outputs"])
            readers = [j for j, op in enumerate(details) if outs & set(op["inputs"]) and owned[j]]
            if readers:
                owned[i] = {min(owned[readers[0]], key=position.__getitem__)}
    ops = tuple(OpMapping(i, str(op["op_name"]),
                          tuple(names[t] for t in op["outputs"] if t >= 0),
                          tuple(sorted(owned[i] or {graph.layers[-1].name},
                                       key=position.__getitem__)))
                for i, op in enumerate(details))
    return LayerMap(graph.model_name, precision, ops, cut_statuses(graph, ops))


def cut_statuses(graph: LayerGraph, ops: Sequence[OpMapping]) -> tuple[CutStatus, ...]:
    """Which Keras prefix cuts exist in a LiteRT graph with these ops (pure)."""
    from dnntune.model.cuts import enumerate_cuts

    position = {layer.name: i for i, layer in enumerate(graph.layers)}
    spans = [(min(position[n] for n in op.layers), position[op.layer], op) for op in ops]
    ends = {position[op.layer] for op in ops}
    with_ops = {position[n] for op in ops for n in op.layers}
    materialised: dict[str, bool] = {}
    for i, layer in enumerate(graph.layers):
        own = layer.is_input or i in ends
        if i not in with_ops and not layer.is_input:  # no op (Dropout, folded reshape):
            own = all(materialised.get(graph.tensor(t).layer, False) for t in layer.inputs)
        materialised[layer.name] = own
    out = []
    for cut in enumerate_cuts(graph):
        p = cut.index
        inside = next((op for lo, hi, op in spans if lo < p <= hi), None)
        if inside is not None:
            out.append(CutStatus(p, cut.after, False,
                                 f"inside LiteRT op #{inside.index} {inside.op_type} "
                                 f"({' + '.join(inside.layers)})"))
            continue
        missing = [t.name for t in cut.tensors if not materialised[t.layer]]
        out.append(CutStatus(p, cut.after, not missing,
                             f"tensor {missing[0]} is not a LiteRT tensor" if missing else ""))
    return tuple(out)


RECURRENT = ("LSTM", "GRU", "SimpleRNN", "Bidirectional", "RNN")


def convert_model(loaded: LoadedModel, precision: str = "fp32") -> Conversion:
    """Convert a loaded model and build its layer map (see module docstring).

    Raises:
        DnntuneError: the model cannot be converted, or int8 is asked of a recurrent
            model (TF 2.21's converter crashes the process quantizing LSTM loops).
    """
    from dnntune.model.tf_graph import require_keras

    require_keras(loaded, "LiteRT conversion")
    check_precision(precision)
    recurrent = [layer.name for layer in loaded.graph.layers if layer.type in RECURRENT]
    if precision == "int8" and recurrent:
        raise DnntuneError(f"{loaded.name}: --precision int8 is not supported for recurrent "
                           f"layers ({recurrent[0]}): TensorFlow 2.21's converter crashes "
                           "quantizing their loops; use fp32 or fp16")
    start = time.perf_counter()
    data = convert_keras(loaded.model, loaded.input_shapes, loaded.input_dtypes, precision,
                         loaded.seed, loaded.name)
    seconds = time.perf_counter() - start
    return Conversion(data, build_layer_map(data, loaded.graph, precision), seconds)


def phone_commands(tflite_name: str, threads: int = 4, runs: int = 50,
                   fmt: str = "csv") -> list[str]:
    """The adb commands that profile ``tflite_name`` per op on an Android phone.

    XNNPACK is switched off so that every LiteRT op gets its own row; with it on, the
    op rows collapse into one delegate row that cannot be mapped to layers.
    """
    remote = "/data/local/tmp"
    suffix = {"csv": "csv", "proto": "pb", "stdout": "txt"}[fmt]
    out = f"{remote}/op_profile.{suffix}"
    bench = (f"adb shell {remote}/benchmark_model --graph={remote}/{tflite_name} "
             f"--num_threads={threads} --warmup_runs=5 --num_runs={runs} "
             "--use_xnnpack=false --enable_op_profiling=true")
    if fmt == "stdout":
        return [f"adb push {tflite_name} {remote}/",
                f"adb push benchmark_model {remote}/ && adb shell chmod +x "
                f"{remote}/benchmark_model", f"{bench} > op_profile.txt"]
    return [f"adb push {tflite_name} {remote}/",
            f"adb push benchmark_model {remote}/ && adb shell chmod +x {remote}/benchmark_model",
            f"{bench} --op_profiling_output_mode={fmt} --op_profiling_output_file={out}",
            f"adb pull {out} ."]
