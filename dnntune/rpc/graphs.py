"""TensorFlow graphs on the servers: how an uploaded ``.pb`` is read (issue 24).

A graph travels as a frozen GraphDef (a client freezes a SavedModel before it uploads),
and ``ModelSpec.graph_*`` say how to read it: its inputs and outputs and the name-scope
depth and folding that make its layers. A graph's layers and cuts depend on those, so
they are part of its :class:`~dnntune.rpc.modelstore.ModelIdentity` too. Every check
here names the field that is wrong and never a server path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnntune.errors import DnntuneError
from dnntune.model.tf_graph import DEFAULT_DEPTH, format_graph_spec

GRAPH_SUFFIX = ".pb"
MAX_GRAPH_NAMES = 64
MAX_GRAPH_NAME_CHARS = 256
MAX_GRAPH_DEPTH = 64


@dataclass(frozen=True)
class GraphReading:
    """How a graph is read: ``ModelSpec.graph_*`` with the defaults filled in.

    ``GraphReading()`` is what a message without those fields means (and all a Keras
    file or a zoo model may have).
    """

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    depth: int = DEFAULT_DEPTH
    fold: bool = False

    @classmethod
    def of(cls, message: Any, where: str) -> GraphReading:
        """The reading of a ``ModelSpec`` or ``ModelIdentity`` message, every field
        checked (``where`` names the message in errors)."""
        inputs = _names(message.graph_inputs, f"{where}.graph_inputs")
        outputs = _names(message.graph_outputs, f"{where}.graph_outputs")
        depth = int(message.graph_depth)
        if not 0 <= depth <= MAX_GRAPH_DEPTH:
            raise DnntuneError(f"{where}.graph_depth must be 0 (= {DEFAULT_DEPTH}) to "
                               f"{MAX_GRAPH_DEPTH}, got {depth}")
        return cls(inputs, outputs, depth or DEFAULT_DEPTH, bool(message.graph_fold))

    @property
    def is_default(self) -> bool:
        return self == GraphReading()

    def fields(self) -> dict[str, Any]:
        """The message fields of this reading (for ``ModelSpec``/``ModelIdentity``)."""
        return {"graph_inputs": list(self.inputs), "graph_outputs": list(self.outputs),
                "graph_depth": self.depth if self.depth != DEFAULT_DEPTH else 0,
                "graph_fold": self.fold}

    def spec_text(self, path: Path) -> str:
        """The model spec :func:`~dnntune.model.loading.load_model` reads ``path`` by."""
        return format_graph_spec(path, self.inputs, self.outputs, None, self.depth, self.fold)


def _names(values: Any, field: str) -> tuple[str, ...]:
    names = tuple(str(v) for v in values)
    if len(names) > MAX_GRAPH_NAMES:
        raise DnntuneError(f"{field}: at most {MAX_GRAPH_NAMES} names, got {len(names)}")
    for name in names:
        if not name.strip() or len(name) > MAX_GRAPH_NAME_CHARS or "," in name:
            raise DnntuneError(f"{field}: each name must be 1 to {MAX_GRAPH_NAME_CHARS} "
                               f"characters without a comma, got {name[:40]!r}")
    return names


def read_graph_def(path: Path) -> Any:
    """The GraphDef in ``path``; one line without the path if it is not one."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import graph_pb2

    graph_def = graph_pb2.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError):
        raise DnntuneError("model upload: a .pb file must be a TensorFlow GraphDef (a frozen "
                           "graph); these bytes do not parse as one") from None
    if not graph_def.node:
        raise DnntuneError("model upload: the .pb GraphDef has no nodes, so it is not a "
                           "frozen graph")
    return graph_def


def graph_source(path: Path, reading: GraphReading, what: str) -> str:
    """The load spec of the uploaded file ``path`` read as ``reading``.

    Raises:
        DnntuneError: graph fields for a Keras file, or a name the graph does not have
            (naming the ``ModelSpec`` field and ``what``, never the path).
    """
    if path.suffix != GRAPH_SUFFIX:
        if not reading.is_default:
            raise DnntuneError(f"ModelSpec.graph_inputs/graph_outputs/graph_depth/graph_fold "
                               f"are for a .pb graph; {what} is a Keras file")
        return str(path)
    ops = {node.name for node in read_graph_def(path).node}
    for field, names in (("graph_inputs", reading.inputs), ("graph_outputs", reading.outputs)):
        for name in names:
            op = name.rsplit(":", 1)[0] if ":" in name else name
            if op not in ops:
                raise DnntuneError(f"ModelSpec.{field}: no op named {op!r} in {what}")
    return reading.spec_text(path)
