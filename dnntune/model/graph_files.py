"""The one file a TensorFlow graph model is sent to a server as (issue 24).

A server takes a graph as a frozen GraphDef ``.pb`` and the ``ModelSpec.graph_*``
fields that say how to read it. A ``.pb`` is sent as it is; a SavedModel folder is
frozen here first (its serving signature, by TensorFlow's
``convert_variables_to_constants_v2``, exactly as :func:`~dnntune.model.tf_graph.load_graph_model`
reads it) into a ``.pb`` in the model cache, named by a hash of the folder's files, so
every later run sends the same bytes and both sides hold the same model by sha256.
``validate``'s own heads and the wire measurement load that ``.pb`` too (the spec
:func:`upload_spec` returns), not the folder.

The names a spec gives are checked against the GraphDef here, before any server is
contacted, so a typo is one line naming the spec, not a server's refusal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

from dnntune.errors import DnntuneError
from dnntune.model.tf_graph import GraphSpec, format_graph_spec, parse_graph_spec

_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 6: "int8", 9: "int64",
           10: "bool", 14: "bfloat16", 19: "float16"}  # TensorFlow's DataType enum


def upload_spec(spec: str) -> tuple[str, str]:
    """``(spec of the .pb to send and load, display name)`` for a graph model ``spec``.

    The spec keeps ``input``/``output``/``depth``/``fold``; ``dtype`` is checked here
    against the graph's placeholders and dropped (a server does not take it).

    Raises:
        DnntuneError: one line for a missing or corrupt graph, a name the graph lacks or
            a dtype that differs.
    """
    from dnntune.model.loading import import_keras

    import_keras()  # TensorFlow, quietly: its start-up logs stay off stderr
    parsed = parse_graph_spec(spec)
    if parsed.path.is_dir():
        graph_file, inputs, outputs = _frozen_saved_model(parsed)
        name = parsed.path.resolve().name
    else:
        graph_file, inputs, outputs = parsed.path, parsed.inputs, parsed.outputs
        name = parsed.path.stem
    _check_names(graph_file, inputs, outputs, parsed.dtype, parsed.path)
    text = format_graph_spec(graph_file, inputs, outputs, None, parsed.depth, parsed.fold)
    return text, name


def _check_names(graph_file: Path, inputs: tuple[str, ...], outputs: tuple[str, ...],
                 dtype: str | None, where: Path) -> None:
    """The named inputs and outputs are ops of the graph; the inputs are of ``dtype``."""
    from dnntune.model.tf_graph import read_graph_file

    nodes = {node.name: node for node in read_graph_file(graph_file).node}
    for key, names in (("input", inputs), ("output", outputs)):
        for name in names:
            if _op(name) not in nodes:
                raise DnntuneError(f"{where}: {key}={name}: no op {_op(name)!r} in the graph")
    fed = [nodes[_op(n)] for n in inputs] or [n for n in nodes.values()
                                              if n.op == "Placeholder"]
    for node in fed:
        found = _DTYPES.get(node.attr["dtype"].type, str(node.attr["dtype"].type))
        if dtype and node.op == "Placeholder" and found != dtype:
            raise DnntuneError(f"{where}: input {node.name!r} is {found}, not dtype={dtype}")


def _op(name: str) -> str:
    """The op of a tensor or op name (``x:0`` -> ``x``)."""
    return name.rsplit(":", 1)[0] if ":" in name else name


def _frozen_saved_model(parsed: GraphSpec) -> tuple[Path, tuple[str, ...], tuple[str, ...]]:
    """The cached frozen ``.pb`` of a SavedModel folder and its input and output names
    (the spec's, else the signature's)."""
    from dnntune.model.cache import cache_dir

    folder = cache_dir() / "graphs"
    target = folder / f"{parsed.path.resolve().name}-{_folder_digest(parsed.path)[:16]}.pb"
    names = target.with_suffix(".json")  # the frozen signature's input and output names
    cached = _cached_names(names) if target.is_file() else None
    # Not frozen before (or the names are damaged): freeze now, once.
    inputs, outputs = cached if cached is not None else _freeze(parsed, target, names)
    return target, parsed.inputs or inputs, parsed.outputs or outputs


def _cached_names(names: Path) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    try:
        known = json.loads(names.read_text())
        return tuple(known["inputs"]), tuple(known["outputs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _freeze(parsed: GraphSpec, target: Path, names: Path
            ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Write the frozen serving signature to ``target`` and its own names to ``names``."""
    from dnntune.model.tf_graph import freeze_saved_model

    folder = target.parent
    own = dataclasses.replace(parsed, inputs=(), outputs=())  # the signature's names
    graph_def, inputs, outputs = freeze_saved_model(parsed.path, own)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(target, graph_def.SerializeToString(deterministic=True))
        _write_atomic(names, json.dumps({"inputs": inputs, "outputs": outputs}).encode())
    except OSError as exc:
        raise DnntuneError(f"model cache {folder}: cannot write the frozen graph of "
                           f"{parsed.path} ({exc.strerror}); set DNNTUNE_CACHE_DIR to a "
                           "writable folder") from None
    return inputs, outputs


def _write_atomic(path: Path, data: bytes) -> None:
    """Write beside ``path`` and rename: no reader ever sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=".frozen-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _folder_digest(path: Path) -> str:
    """sha256 over a folder's files: their relative paths and bytes."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
