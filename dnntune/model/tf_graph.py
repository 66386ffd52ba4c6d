"""TensorFlow graphs as models: a frozen GraphDef ``.pb`` or a SavedModel directory.

A graph has no Keras layers, so its layers are its **name scopes** at a chosen depth
(``MobilenetV2/expanded_conv_3`` at depth 2, ``functional_1/block_3_add`` for a frozen
Keras model). Every op that computes on the model's inputs belongs to the scope of its
name; constants (weights, shapes) and whatever is computed from constants alone belong
to no layer: each program that needs them holds its own copy, so a weight never
crosses a cut. Scopes that feed each other both ways (interleaved names) are merged
into one layer (``a+b``). A layer's outputs are the tensors it produces that another
layer reads, or that the model returns; they are named ``<scope>:<k>`` as Keras layers'
are, so the rest of dnntune (cuts, analyzer, profile) sees an ordinary
:class:`~dnntune.model.graph.LayerGraph`.

Heads, tails and the per-layer timed pass are *pruned* functions of the same imported
graph (``tf.compat.v1.wrap_function`` + ``prune``): from the model inputs to a cut's
crossing tensors, from those to the outputs, and one per layer, so every part runs the
graph's own ops and constants.

Model spec: ``PATH`` or ``PATH?input=NAME[,NAME]&output=NAME[,NAME]&dtype=float32&depth=2``
(the names are tensor or op names, ``input`` = ``input:0``). Without ``input`` the
graph's placeholders are the inputs; without ``output`` the tensors no op reads are.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import networkx as nx
import numpy as np

from dnntune.errors import DnntuneError
from dnntune.model.graph import LayerGraph, LayerNode, TensorSpec

GRAPH_SUFFIXES = (".pb",)
DEFAULT_DEPTH = 2
# The op that names a layer's type, most telling first.
_TYPE_ORDER = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2",
               "Conv2DBackpropInput", "FusedBatchNormV3", "FusedBatchNorm", "AvgPool", "MaxPool",
               "Mean", "ConcatV2", "AddV2", "Add", "Softmax")


@dataclass(frozen=True)
class GraphSpec:
    """A parsed graph model spec: where the graph is and how to read it."""

    path: Path
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    dtype: str | None = None
    depth: int = DEFAULT_DEPTH
    fold: bool = False

    @property
    def text(self) -> str:
        return format_graph_spec(self.path, self.inputs, self.outputs, self.dtype, self.depth,
                                 self.fold)


def format_graph_spec(path: str | Path, inputs: Sequence[str] = (), outputs: Sequence[str] = (),
                      dtype: str | None = None, depth: int = DEFAULT_DEPTH,
                      fold: bool = False) -> str:
    """The spec string for a graph file (see the module docstring)."""
    parts = []
    if inputs:
        parts.append("input=" + ",".join(inputs))
    if outputs:
        parts.append("output=" + ",".join(outputs))
    if dtype:
        parts.append(f"dtype={dtype}")
    if depth != DEFAULT_DEPTH:
        parts.append(f"depth={depth}")
    if fold:
        parts.append("fold=1")
    return str(path) + ("?" + "&".join(parts) if parts else "")


def is_graph_spec(spec: str) -> bool:
    """Does ``spec`` name a frozen ``.pb`` or a SavedModel directory?"""
    path = Path(spec.split("?", 1)[0])
    return path.suffix in GRAPH_SUFFIXES or (path.is_dir()
                                             and (path / "saved_model.pb").is_file())


def parse_graph_spec(spec: str) -> GraphSpec:
    """Split ``PATH?input=..&output=..`` into a :class:`GraphSpec`; one-line errors."""
    path, _, query = spec.partition("?")
    fields = parse_qs(query, keep_blank_values=True, strict_parsing=False) if query else {}
    unknown = sorted(set(fields) - {"input", "output", "dtype", "depth", "fold"})
    if unknown:
        raise DnntuneError(f"{spec}: unknown graph option {unknown[0]!r} (expected input=, "
                           "output=, dtype=, depth=)")

    def names(key: str) -> tuple[str, ...]:
        found = tuple(n.strip() for v in fields.get(key, []) for n in v.split(",") if n.strip())
        if key in fields and not found:
            raise DnntuneError(f"{spec}: {key}= names no tensor")
        return found

    depth_text = fields.get("depth", [str(DEFAULT_DEPTH)])[-1]
    if not depth_text.isdigit() or int(depth_text) < 1:
        raise DnntuneError(f"{spec}: depth= must be a positive integer, got {depth_text!r}")
    dtype = fields.get("dtype", [None])[-1]
    if dtype is not None:
        try:
            dtype = np.dtype(dtype).name
        except TypeError:
            raise DnntuneError(f"{spec}: dtype={dtype} is not a data type (e.g. float32)"
                               ) from None
    fold = fields.get("fold", ["0"])[-1]
    if fold not in ("0", "1"):
        raise DnntuneError(f"{spec}: fold= must be 0 or 1, got {fold!r}")
    return GraphSpec(Path(path), names("input"), names("output"), dtype, int(depth_text),
                     fold == "1")


@dataclass(frozen=True)
class GraphLayer:
    """One layer of a graph: ops of one name scope (or of scopes merged by a cycle)."""

    name: str
    type: str
    ops: tuple[str, ...]
    inputs: tuple[str, ...]   # graph tensor names read from other layers, first use order
    outputs: tuple[str, ...]  # graph tensor names other layers read or the model returns
    is_input: bool = False


class _Weight:
    """A constant of the graph seen as a weight (what ``_param_bytes`` reads)."""

    def __init__(self, path: str, value: np.ndarray) -> None:
        self.path, self._value = path, value
        self.dtype, self.shape = value.dtype, value.shape

    def numpy(self) -> np.ndarray:
        return self._value


@dataclass
class GraphModel:
    """A TensorFlow graph read as a model (the ``model`` of a graph's LoadedModel).

    Attributes:
        name: The model's name.
        spec: How it was read.
        graph_def: The graph, placeholders at concrete shapes, control inputs dropped.
        layers: Its layers in topological order (input layers first).
        tensor_names: dnntune tensor name -> graph tensor name.
        inputs: dnntune names of the model inputs; ``outputs`` likewise.
        digest: sha256 of the graph as imported (architecture and weights).
    """

    name: str
    spec: GraphSpec
    graph_def: Any
    layers: tuple[GraphLayer, ...]
    tensor_names: dict[str, str]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    digest: str
    _wrapped: Any = field(default=None, repr=False)

    # -- programs ------------------------------------------------------------------------
    def wrapped(self) -> Any:
        """The graph imported once into a ``wrap_function`` (pruned for every program)."""
        if self._wrapped is None:
            import tensorflow as tf

            graph_def = self.graph_def

            def imported() -> None:
                tf.graph_util.import_graph_def(graph_def, name="")
            self._wrapped = tf.compat.v1.wrap_function(imported, [])
        return self._wrapped

    def program(self, feeds: Sequence[str], fetches: Sequence[str], name: str) -> GraphProgram:
        """Named tensors ``feeds`` -> ``fetches`` (dnntune names) as a pruned function."""
        return GraphProgram(self, tuple(feeds), tuple(fetches), name)

    def describe(self) -> str:
        """One line on how the layers were read."""
        merged = sum("+" in layer.name for layer in self.layers)
        return (f"TensorFlow graph {self.spec.path}: layers are its name scopes at depth "
                f"{self.spec.depth} (?depth=N to change)"
                + ("; elementwise layers folded into the layer they read (?fold=1)"
                   if self.spec.fold else "")
                + (f"; {merged} layer(s) merge scopes that feed each other" if merged else ""))

    def fingerprint(self) -> str:
        return self.digest

    @property
    def weights(self) -> list[_Weight]:
        """Floating-point constants (the frozen variables), for parameter bytes."""
        from tensorflow.python.framework import tensor_util

        consts = (_Weight(n.name, tensor_util.MakeNdarray(n.attr["value"].tensor))
                  for n in self.graph_def.node
                  if n.op == "Const" and n.attr["dtype"].type in (1, 2, 19, 14))  # f32 f64 f16 bf16
        return [w for w in consts if w.shape]  # as in the layers' params: no scalars

    def compile_plain(self) -> Callable[[list[np.ndarray]], tuple[list[np.ndarray], float]]:
        """The whole graph as one compiled pass bracketed by two in-graph stamps."""
        return compile_plain_graph(self)

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.program(self.inputs, self.outputs, f"{self.name} whole")(inputs)

    def instrumented(self) -> GraphInstrumented:
        return GraphInstrumented(self)


class GraphProgram:
    """A pruned function of a :class:`GraphModel`: fed tensors in, fetched tensors out.

    Has :class:`~dnntune.model.replay.NodeProgram`'s interface (call, ``timed``,
    ``run_symbolic``), so a split of a graph is used as a split of a Keras model is.
    A fetched tensor that is also fed is passed through.
    """

    def __init__(self, model: GraphModel, input_names: tuple[str, ...],
                 output_names: tuple[str, ...], name: str) -> None:
        self.model, self.name = model, name
        self.input_names, self.output_names = input_names, output_names
        self._computed = tuple(n for n in dict.fromkeys(output_names) if n not in input_names)
        self._fn: Any = None
        self._timed_fn: Any = None

    def _pruned(self) -> Any:
        if self._fn is None:
            wrapped = self.model.wrapped()
            graph = wrapped.graph
            names = self.model.tensor_names
            try:
                self._fn = wrapped.prune(
                    feeds=[graph.get_tensor_by_name(names[n]) for n in self.input_names],
                    fetches=[graph.get_tensor_by_name(names[n]) for n in self._computed])
            except (ValueError, KeyError) as exc:
                raise DnntuneError(f"{self.name}: cannot cut the graph here "
                                   f"({str(exc).splitlines()[0][:200]})") from None
        return self._fn

    def run_symbolic(self, *inputs: Any) -> list[Any]:
        """The program on TensorFlow tensors (inside a ``tf.function`` too)."""
        values = dict(zip(self.input_names, inputs, strict=True))
        if self._computed:
            outs = self._pruned()(*inputs)
            values.update(zip(self._computed, outs, strict=True))
        return [values[n] for n in self.output_names]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import tensorflow as tf

        if not self._computed:
            return [np.asarray(x) for x in self.run_symbolic(*inputs)]
        return [np.asarray(o) for o in self.run_symbolic(*[tf.convert_to_tensor(x)
                                                          for x in inputs])]

    def timed(self, inputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """Like calling it, plus its in-graph seconds between two stamps."""
        if self._timed_fn is None:
            from dnntune.model.replay import timed_function

            self._pruned()
            self._timed_fn = timed_function(self.run_symbolic)
        outs, seconds = self._timed_fn(*inputs)
        return [np.asarray(o) for o in outs], float(seconds)


def subgraph_def(model: GraphModel, feeds: Sequence[str], fetches: Sequence[str]) -> Any:
    """The ops that compute graph tensors ``fetches`` from ``feeds`` (with the constants
    they need) as a GraphDef whose fed tensors are placeholders ``dnntune_in_<j>``, to
    import straight into a traced function (no function call at run time)."""
    import tensorflow as tf

    nodes = {n.name: n for n in model.graph_def.node}
    fed = {t: f"dnntune_in_{j}" for j, t in enumerate(feeds)}
    keep: list[str] = []
    seen: set[str] = set()
    stack = [t.rsplit(":", 1)[0] for t in fetches]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        keep.append(name)
        for i in nodes[name].input:
            tensor = i if ":" in i else f"{i}:0"
            if tensor not in fed:
                stack.append(i.split(":")[0])
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(model.graph_def.versions)
    for j, t in enumerate(feeds):
        producer = nodes[t.rsplit(":", 1)[0]]
        index = int(t.rsplit(":", 1)[1])
        stub = out.node.add(name=f"dnntune_in_{j}", op="Placeholder")
        dtype = (producer.attr["dtype"].type if producer.op == "Placeholder"
                 else _output_dtype(model, t))
        stub.attr["dtype"].type = dtype
        del index
    order = {n.name: i for i, n in enumerate(model.graph_def.node)}
    for name in sorted(keep, key=order.__getitem__):
        node = out.node.add()
        node.CopyFrom(nodes[name])
        rewired = [fed.get(i if ":" in i else f"{i}:0") for i in node.input]
        for k, new in enumerate(rewired):
            if new is not None:
                node.input[k] = f"{new}:0"
    return out


def _output_dtype(model: GraphModel, tensor: str) -> int:
    graph = model.wrapped().graph
    return int(graph.get_tensor_by_name(tensor).dtype.as_datatype_enum)


class GraphInstrumented:
    """The graph as one compiled pass with a timestamp between consecutive layers.

    The same scheme as :class:`dnntune.profiling.instrument.InstrumentedModel`: each
    layer's ops (its :func:`subgraph_def`, imported in place, so no function call runs)
    read their inputs through identities that wait for the previous stamp, and the next
    stamp waits for all of the layer's outputs. Returns ``(outputs, stamps)`` with
    ``layers + 1`` stamps; input layers get a zero-length interval.
    """

    def __init__(self, model: GraphModel) -> None:
        import tensorflow as tf

        self.model = model
        by_graph = {g: d for d, g in model.tensor_names.items()}
        self._steps: list[tuple[GraphLayer, tuple[str, ...], tuple[str, ...], Any]] = []
        for layer in model.layers:
            if layer.is_input:
                self._steps.append((layer, (), (), None))
                continue
            self._steps.append((layer, tuple(by_graph[t] for t in layer.inputs),
                                tuple(by_graph[t] for t in layer.outputs),
                                subgraph_def(model, layer.inputs, layer.outputs)))
        self._fn = tf.function(self._run, autograph=False)

    @property
    def layer_names(self) -> list[str]:
        return [step[0].name for step in self._steps]

    def _run(self, *inputs: Any) -> tuple[list[Any], Any]:
        import tensorflow as tf

        values: dict[str, Any] = dict(zip(self.model.inputs, inputs, strict=True))
        stamps = [tf.timestamp()]
        for index, (layer, feeds, fetches, graph_def) in enumerate(self._steps):
            if graph_def is None:
                stamps.append(stamps[-1])
                continue
            with tf.control_dependencies([stamps[-1]]):
                guarded = [tf.identity(values[n]) for n in feeds]
            flat = import_into(graph_def, guarded, layer.outputs, f"l{index}")
            with tf.control_dependencies(flat):
                stamps.append(tf.timestamp())
            values.update(zip(fetches, flat, strict=True))
        return [values[n] for n in self.model.outputs], tf.stack(stamps)

    def __call__(self, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        outs, stamps = self._fn(*inputs)
        return [np.asarray(o) for o in outs], np.asarray(stamps)


def import_into(graph_def: Any, feeds: Sequence[Any], fetches: Sequence[str], scope: str
                ) -> list[Any]:
    """Import a :func:`subgraph_def` into the graph being traced, fed ``feeds``;
    the tensors named ``fetches`` (graph names)."""
    import tensorflow as tf

    return list(tf.graph_util.import_graph_def(
        graph_def, input_map={f"dnntune_in_{j}:0": f for j, f in enumerate(feeds)},
        return_elements=list(fetches), name=scope))


def compile_plain_graph(model: GraphModel
                        ) -> Callable[[list[np.ndarray]], tuple[list[np.ndarray], float]]:
    """The whole graph as one compiled pass (its ops imported in place, as the timed
    pass's layers are) bracketed by two in-graph stamps; ``(outputs, seconds)``."""
    import tensorflow as tf

    outputs = [model.tensor_names[n] for n in model.outputs]
    graph_def = subgraph_def(model, [model.tensor_names[n] for n in model.inputs], outputs)

    @tf.function(autograph=False)
    def run(*inputs: Any) -> Any:
        start = tf.timestamp()
        with tf.control_dependencies([start]):
            guarded = [tf.identity(x) for x in inputs]
        outs = import_into(graph_def, guarded, outputs, "whole")
        with tf.control_dependencies(outs):
            end = tf.timestamp()
        return outs, end - start

    def call(inputs: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        outs, seconds = run(*inputs)
        return [np.asarray(o) for o in outs], float(seconds)
    return call


class GraphSplitter:
    """Splits a :class:`GraphModel` at a cut: head = pruned function from the model inputs
    to the cut's crossing tensors, tail = from those to the outputs."""

    def __init__(self, model: GraphModel, graph: LayerGraph) -> None:
        from dnntune.model.cuts import enumerate_cuts

        self.model, self.graph = model, graph
        self.cuts = enumerate_cuts(graph)
        if tuple(layer.name for layer in model.layers) != graph.layer_names:
            raise DnntuneError("the graph model's layers differ from its layer graph; "
                               "was the layer graph read at another depth?")

    def split(self, index: int) -> Any:
        from dnntune.model.split import split_with

        model = self.model
        return split_with(self.graph, self.cuts, index,
                          lambda outs, name: model.program(model.inputs, outs, name),
                          model.program)


def require_keras(loaded: Any, what: str) -> None:
    """Raise one line if ``loaded`` is a TensorFlow graph, which ``what`` does not take."""
    if isinstance(getattr(loaded, "model", None), GraphModel):
        raise DnntuneError(f"{loaded.name}: {what} takes Keras models only, not a TensorFlow "
                           "graph (.pb/SavedModel) yet")


# -- loading -------------------------------------------------------------------------------

def load_graph_model(spec: str, input_shapes: Sequence[tuple[int, ...]] | None,
                     batch_size: int, name: str | None = None) -> tuple[GraphModel, LayerGraph]:
    """Read a frozen ``.pb`` or a SavedModel directory; its model and layer graph.

    Raises:
        DnntuneError: one line for a missing or corrupt file, a named input or output the
            graph lacks, a dtype that differs, or an input of unknown shape.
    """
    from dnntune.model.loading import import_keras

    import_keras()
    parsed = parse_graph_spec(spec)
    path = parsed.path
    if path.is_dir():
        graph_def, inputs, outputs = freeze_saved_model(path, parsed)
    else:
        graph_def = read_graph_file(path)
        inputs, outputs = parsed.inputs, parsed.outputs
    model_name = name or (path.stem if path.suffix else path.name)
    return _build(graph_def, parsed, inputs, outputs, input_shapes, batch_size, model_name)


def read_graph_file(path: Path) -> Any:
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise DnntuneError(f"{path}: no such graph file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DnntuneError(f"{path}: cannot read the graph file ({exc.strerror})") from None
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise DnntuneError(f"{path}: not a TensorFlow GraphDef (the protobuf does not parse; "
                           "truncated, or not a frozen .pb graph)") from None
    if not graph_def.node:
        raise DnntuneError(f"{path}: a GraphDef with no nodes (empty, or not a frozen .pb "
                           "graph)")
    return graph_def


def freeze_saved_model(path: Path, parsed: GraphSpec) -> tuple[Any, tuple[str, ...],
                                                              tuple[str, ...]]:
    """Freeze a SavedModel's serving signature: its GraphDef, input and output names."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 - TensorFlow raises many types for a bad dir
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DnntuneError(f"{path}: not a loadable SavedModel ({first[:200]})") from None
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if not signatures:
        raise DnntuneError(f"{path}: the SavedModel has no signature to read a graph from "
                           "(save it with signatures=..., or as a Keras export)")
    key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
    frozen = convert_variables_to_constants_v2(signatures[key])
    graph_def = frozen.graph.as_graph_def()
    inputs = parsed.inputs or tuple(t.name for t in frozen.inputs)
    outputs = parsed.outputs or tuple(t.name for t in frozen.outputs)
    return graph_def, inputs, outputs


def _tensor_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def _build(graph_def: Any, parsed: GraphSpec, inputs: Sequence[str], outputs: Sequence[str],
           input_shapes: Sequence[tuple[int, ...]] | None, batch_size: int,
           model_name: str) -> tuple[GraphModel, LayerGraph]:
    import tensorflow as tf

    where = str(parsed.path)
    by_name = {n.name: n for n in graph_def.node}
    placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
    inputs = tuple(_tensor_name(n) for n in inputs) or tuple(f"{p}:0" for p in placeholders)
    if not inputs:
        raise DnntuneError(f"{where}: the graph has no Placeholder; name its input "
                           "(input=NAME)")
    for t in inputs:
        node = by_name.get(t.rsplit(":", 1)[0])
        if node is None:
            raise DnntuneError(f"{where}: no input named {t.rsplit(':', 1)[0]!r} in the graph "
                               f"(placeholders: {', '.join(placeholders[:8]) or 'none'})")
        if node.op != "Placeholder":
            raise DnntuneError(f"{where}: input {node.name!r} is a {node.op}, not a "
                               "Placeholder the model could be fed through")
    for t in outputs:
        if t.rsplit(":", 1)[0] not in by_name:
            raise DnntuneError(f"{where}: no output named {t.rsplit(':', 1)[0]!r} in the graph")
    if input_shapes is not None and len(input_shapes) != len(inputs):
        raise DnntuneError(f"--input-shape: {where} has {len(inputs)} input(s), got "
                           f"{len(input_shapes)} shape(s)")

    graph_def = _fixed(graph_def, inputs, input_shapes, batch_size, parsed.dtype, where)
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.graph_util.import_graph_def(graph_def, name="")
        except (ValueError, TypeError, tf.errors.OpError) as exc:
            raise DnntuneError(f"{where}: the graph does not import "
                               f"({str(exc).strip().splitlines()[0][:200]})") from None
    if not outputs:
        outputs = _sink_tensors(graph, inputs)
    outputs = tuple(_tensor_name(n) for n in outputs)
    for t in outputs:
        try:
            graph.get_tensor_by_name(t)
        except (KeyError, ValueError):
            raise DnntuneError(f"{where}: no output tensor {t!r} in the graph") from None
    layers, live = _layers(graph, inputs, outputs, parsed.depth, where, parsed.fold)
    digest = hashlib.sha256(graph_def.SerializeToString(deterministic=True)).hexdigest()
    # dnntune names: an input layer's tensor keeps its name; a layer's k-th output is
    # "<layer>:<k>".
    dn: dict[str, str] = {}
    for layer in layers:
        for k, t in enumerate(layer.outputs):
            dn[t] = f"{layer.name}:0" if layer.is_input else f"{layer.name}:{k}"
    shapes = _shapes(graph, graph_def, [t for layer in layers for t in layer.outputs],
                     inputs, batch_size, where)
    nodes = []
    for layer in layers:
        specs = tuple(_spec(dn[t], shapes[t], graph.get_tensor_by_name(t).dtype)
                      for t in layer.outputs)
        nodes.append(LayerNode(
            name=layer.name, type="InputLayer" if layer.is_input else layer.type,
            inputs=tuple(dn[t] for t in layer.inputs), outputs=specs,
            params=_params(graph, layer, live, parsed.depth),
            flops=sum(_op_flops(graph.get_operation_by_name(o)) for o in layer.ops)))
    model = GraphModel(model_name, parsed, graph_def, tuple(layers),
                       {d: g for g, d in dn.items()}, tuple(dn[t] for t in inputs),
                       tuple(dn[t] for t in outputs), digest)
    return model, LayerGraph(model_name, tuple(nodes), model.inputs, model.outputs)


def _fixed(graph_def: Any, inputs: Sequence[str], input_shapes: Sequence[tuple[int, ...]] | None,
           batch_size: int, dtype: str | None, where: str) -> Any:
    """A copy with concrete input shapes (batch first) and no control inputs."""
    import tensorflow as tf

    fixed = tf.compat.v1.GraphDef()
    fixed.CopyFrom(graph_def)
    by_name = {n.name: n for n in fixed.node}
    for i, t in enumerate(inputs):
        node = by_name[t.rsplit(":", 1)[0]]
        placeholder_dtype = tf.dtypes.as_dtype(node.attr["dtype"].type).name
        if dtype is not None and dtype != placeholder_dtype:
            raise DnntuneError(f"{where}: data_type {dtype} given, but input {node.name!r} is "
                               f"{placeholder_dtype}")
        shape = node.attr["shape"].shape
        dims = (None if shape.unknown_rank
                else [d.size if d.size >= 0 else None for d in shape.dim])
        if input_shapes is not None:
            dims = [batch_size, *input_shapes[i]]
        elif dims is None or any(d is None for d in dims[1:]) or not dims:
            raise DnntuneError(f"{where}: input {node.name!r} has shape "
                               f"{dims if dims is not None else 'unknown'}; give its shape "
                               "without the batch (--input-shape or model.input_shape)")
        else:
            dims = [batch_size, *dims[1:]]
        node.attr["shape"].shape.CopyFrom(tf.TensorShape(dims).as_proto())
    for node in fixed.node:
        data = [i for i in node.input if not i.startswith("^")]
        if len(data) != len(node.input):
            del node.input[:]
            node.input.extend(data)
    return fixed


def _sink_tensors(graph: Any, inputs: Sequence[str]) -> tuple[str, ...]:
    """Tensors computed from the inputs that no op reads."""
    live = _descendants(graph, {t.rsplit(":", 1)[0] for t in inputs})
    read = {t.name for op in graph.get_operations() for t in op.inputs}
    return tuple(t.name for op in graph.get_operations() if op.name in live
                 and op.type not in ("Placeholder", "NoOp") for t in op.outputs
                 if t.name not in read)


def _descendants(graph: Any, roots: set[str]) -> set[str]:
    consumers: dict[str, list[str]] = {}
    for op in graph.get_operations():
        for t in op.inputs:
            consumers.setdefault(t.op.name, []).append(op.name)
    seen, stack = set(roots), list(roots)
    while stack:
        for c in consumers.get(stack.pop(), ()):
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return seen


def _ancestors(graph: Any, roots: set[str]) -> set[str]:
    seen, stack = set(roots), list(roots)
    while stack:
        for t in graph.get_operation_by_name(stack.pop()).inputs:
            if t.op.name not in seen:
                seen.add(t.op.name)
                stack.append(t.op.name)
    return seen


_CALL = re.compile(r"^((Stateful)?PartitionedCall(_\d+)?/)+")


def _scope(op_name: str, depth: int) -> str:
    """The name scope at ``depth``, after the prefix a function call inlined by freezing
    adds (``StatefulPartitionedCall/``: a SavedModel's signature)."""
    return "/".join(_CALL.sub("", op_name).split("/")[:depth])


def _assign_glue(graph: Any, scope_of: dict[str, str], order: dict[str, int]) -> None:
    """Give the pass-through identities of an inlined call (``Func/<call>/input/_0``,
    ``.../output/_1``) the scope of what they pass: of the op they read, or, reading a
    model input, of the first op that reads them."""
    glue = sorted((op for op in scope_of if op.startswith("Func/")), key=order.__getitem__)
    for op in glue:
        source = graph.get_operation_by_name(op).inputs
        producer = source[0].op.name if len(source) else ""
        if producer in scope_of and not producer.startswith("Func/"):
            scope_of[op] = scope_of[producer]
    for op in reversed(glue):
        if scope_of[op] != _scope(op, 10**6):  # already given its producer's scope
            continue
        readers = sorted((c.name for t in graph.get_operation_by_name(op).outputs
                          for c in t.consumers() if c.name in scope_of), key=order.__getitem__)
        if readers:
            scope_of[op] = scope_of[readers[0]]


def _layers(graph: Any, inputs: Sequence[str], outputs: Sequence[str], depth: int,
            where: str, fold: bool = False) -> tuple[list[GraphLayer], set[str]]:
    """Group the ops that compute on the inputs (and reach an output) into layers."""
    input_ops = [t.rsplit(":", 1)[0] for t in inputs]
    needed = _ancestors(graph, {t.rsplit(":", 1)[0] for t in outputs})
    missing = [op for op in input_ops if op not in needed]
    if missing:
        raise DnntuneError(f"{where}: input {missing[0]!r} does not reach the outputs "
                           f"{', '.join(outputs)}")
    live = _descendants(graph, set(input_ops)) & needed
    order = {op.name: i for i, op in enumerate(graph.get_operations())}
    unfed = [op.name for op in graph.get_operations()
             if op.type == "Placeholder" and op.name in needed and op.name not in input_ops]
    if unfed:
        raise DnntuneError(f"{where}: the outputs also need placeholder {unfed[0]!r}; name it "
                           "as an input too (input=A,B)")
    scope_of = {op: _scope(op, depth) for op in live if op not in input_ops}
    for op in scope_of:
        if op.startswith("Func/"):
            scope_of[op] = _scope(op, 10**6)
    _assign_glue(graph, scope_of, order)
    taken = set(input_ops)
    for op, scope in list(scope_of.items()):
        if scope in taken:  # a scope named like an input: keep them apart
            scope_of[op] = f"{scope}/"
    dag = nx.DiGraph()
    dag.add_nodes_from(set(scope_of.values()))
    for op in scope_of:
        for t in graph.get_operation_by_name(op).inputs:
            src = scope_of.get(t.op.name)
            if src is not None and src != scope_of[op]:
                dag.add_edge(src, scope_of[op])
    merged = nx.condensation(dag)
    first = {s: min(order[o] for o, sc in scope_of.items() if sc == s) for s in dag}
    groups = {c: sorted(merged.nodes[c]["members"], key=first.__getitem__) for c in merged}
    layer_of_scope = {s: "+".join(groups[c]) for c in merged for s in groups[c]}
    layer_key = {c: min(first[s] for s in groups[c]) for c in merged}
    ordered = list(nx.lexicographical_topological_sort(merged, key=layer_key.__getitem__))
    layer_of = {op: layer_of_scope[s] for op, s in scope_of.items()}
    layer_of.update({op: op for op in input_ops})
    names = [_merge_into_producer(graph, layer_of, "+".join(groups[c]), set(input_ops),
                                  _ELEMENTWISE if fold else {"Identity"})
             for c in ordered]
    out_set = set(outputs)
    produced_by: dict[str, list[str]] = {}
    reads: dict[str, list[str]] = {}
    for op in sorted(layer_of, key=order.__getitem__):
        layer = layer_of[op]
        produced_by.setdefault(layer, []).append(op)
        for t in graph.get_operation_by_name(op).inputs:
            if t.op.name in layer_of and layer_of[t.op.name] != layer:
                reads.setdefault(layer, []).append(t.name)
    crossing = {t for ts in reads.values() for t in ts} | out_set
    result = [GraphLayer(op, "InputLayer", (op,), (), (f"{op}:0",), True) for op in input_ops]
    for name in names:
        if name not in produced_by:  # merged into the layer it passes on
            continue
        ops = produced_by[name]
        outs = tuple(t.name for op in ops for t in graph.get_operation_by_name(op).outputs
                     if t.name in crossing)
        types = [graph.get_operation_by_name(op).type for op in ops]
        kind = next((t for t in _TYPE_ORDER if t in types), types[-1])
        result.append(GraphLayer(name, kind, tuple(ops), tuple(dict.fromkeys(reads.get(name, ()))),
                                 outs))
    for t in outputs:
        if t.rsplit(":", 1)[0] not in layer_of:
            raise DnntuneError(f"{where}: output {t!r} does not depend on the inputs "
                               f"{', '.join(inputs)}")
    return result, live


# Ops TensorFlow can fuse into the op before them (``?fold=1``).
_ELEMENTWISE = {"Identity", "Mul", "AddV2", "Add", "Sub", "BiasAdd", "Relu", "Relu6", "Elu",
                "Selu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "Maximum", "Minimum",
                "Rsqrt", "Sqrt", "Square", "Neg", "Cast", "FusedBatchNormV3", "FusedBatchNorm"}


def _merge_into_producer(graph: Any, layer_of: dict[str, str], layer: str,
                         input_ops: set[str], kinds: set[str]) -> str:
    """Fold a layer whose ops are all of ``kinds`` into the one layer it reads from: the
    output Identity freezing adds (so a frozen Keras model keeps the Keras model's
    layers), or with ``?fold=1`` a BatchNorm or activation into its convolution."""
    ops = [op for op, name in layer_of.items() if name == layer]
    if not ops or any(graph.get_operation_by_name(op).type not in kinds for op in ops):
        return layer
    sources = {layer_of[t.op.name] for op in ops for t in graph.get_operation_by_name(op).inputs
               if t.op.name in layer_of and layer_of[t.op.name] != layer}
    if len(sources) != 1 or next(iter(sources)) in input_ops:
        return layer
    (source,) = sources
    for op in ops:
        layer_of[op] = source
    return layer


def _shapes(graph: Any, graph_def: Any, tensors: Sequence[str], inputs: Sequence[str],
            batch_size: int, where: str) -> dict[str, tuple[int, ...]]:
    """Concrete shapes: static ones, else measured by running the graph once."""
    shapes: dict[str, tuple[int, ...]] = {}
    unknown = []
    for t in tensors:
        shape = graph.get_tensor_by_name(t).shape
        if shape.rank is not None and shape.is_fully_defined():
            shapes[t] = tuple(int(d) for d in shape)
        else:
            unknown.append(t)
    if unknown:
        import tensorflow as tf

        from dnntune.model.loading import DEFAULT_SEED, generate_inputs

        feeds = [graph.get_tensor_by_name(t) for t in inputs]
        values = generate_inputs([tuple(int(d) for d in f.shape) for f in feeds],
                                 [f.dtype.as_numpy_dtype.__name__ for f in feeds], DEFAULT_SEED)
        try:
            with tf.compat.v1.Session(graph=graph) as session:
                got = session.run(unknown, dict(zip(feeds, values, strict=True)))
        except tf.errors.OpError as exc:
            raise DnntuneError(f"{where}: the graph does not run on inputs of shapes "
                               f"{[v.shape for v in values]} ({exc.message.splitlines()[0][:200]})"
                               ) from None
        shapes.update({t: tuple(np.shape(v)) for t, v in zip(unknown, got, strict=True)})
    return shapes


def _spec(name: str, shape: tuple[int, ...], dtype: Any) -> TensorSpec:
    np_dtype = np.dtype(dtype.as_numpy_dtype) if dtype.is_numpy_compatible else np.dtype(object)
    return TensorSpec(name, shape, np_dtype.name, int(prod(shape)) * np_dtype.itemsize)


def _params(graph: Any, layer: GraphLayer, live: set[str], depth: int) -> int:
    """Elements of the floating-point constants the layer's ops read (its weights)."""
    if layer.is_input:
        return 0
    count, seen = 0, set()
    stack = [t.op for op in layer.ops for t in graph.get_operation_by_name(op).inputs
             if t.op.name not in live]
    while stack:
        op = stack.pop()
        if op.name in seen or op.name in live:
            continue
        seen.add(op.name)
        if op.type == "Const":
            value = op.outputs[0]
            if (value.dtype.is_floating and value.shape.is_fully_defined()
                    and value.shape.rank):  # weights, not a scalar like an epsilon
                count += int(prod(value.shape))
        else:
            stack.extend(t.op for t in op.inputs)
    return count


def _op_flops(op: Any) -> int:
    """2 per multiply-add of convolutions and matrix products; other ops count 0."""
    try:
        out = tuple(int(d) for d in op.outputs[0].shape) if op.outputs else ()
        if op.type in ("Conv2D", "DepthwiseConv2dNative"):
            kh, kw, cin = (int(d) for d in op.inputs[1].shape[:3])
            per_out = kh * kw * (cin if op.type == "Conv2D" else 1)
            return 2 * prod(out) * per_out
        if op.type in ("MatMul", "BatchMatMulV2"):
            a = op.inputs[0].shape
            transposed = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
            k = int(a[-2] if transposed else a[-1])
            return 2 * prod(out) * k
    except (TypeError, ValueError):
        return 0
    return 0


def freeze_keras_model(model: Any, path: str | Path) -> Path:
    """Write ``model`` as a frozen GraphDef ``.pb`` with TensorFlow's own freezing
    (``convert_variables_to_constants_v2``); inputs keep their Keras names, batch unknown.

    Example:
        >>> # freeze_keras_model(load_model("mobilenet_v2").model, "mobilenet_v2.pb")
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=t.name.split(":")[0])
             for t in model.inputs]

    def run(*inputs: Any) -> Any:
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    concrete = tf.function(run, autograph=False).get_concrete_function(*specs)
    frozen = convert_variables_to_constants_v2(concrete)
    path = Path(path)
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    return path
