"""Models a server holds: uploaded files by sha256 and loaded models, both bounded.

Uploaded files are kept on disk under their sha256 (checked on arrival: size, digest,
and that the bytes are a Keras archive or a TensorFlow GraphDef) and loaded in Keras
safe mode, a graph as its ``ModelSpec.graph_*`` fields say (:mod:`dnntune.rpc.graphs`);
loaded models are kept in a small LRU cache together with their splitter and the
splits built so far.
Only a well-formed sha256 ever becomes a file name, so no request can reach outside the
store, and no error message names a server path. One model is built at a time, so
concurrent requests for new models cannot multiply the memory a build takes.
Thread-safe: gRPC handlers share one store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnntune.errors import DnntuneError
from dnntune.model.graph import LayerGraph
from dnntune.model.loading import DEFAULT_SEED, MODEL_SUFFIXES, LoadedModel, load_model
from dnntune.model.memory import MemoryEstimate
from dnntune.rpc.graphs import GRAPH_SUFFIX, GraphReading, graph_source, read_graph_def
from dnntune.rpc.limits import (
    LimitError,
    RequestLimits,
    check_input_elements,
    check_sha256,
    check_zoo_name,
    quoted,
)

log = logging.getLogger("dnntune.server")
STORED_SUFFIXES = (*MODEL_SUFFIXES, GRAPH_SUFFIX)  # what an upload may be
NOT_A_GRAPH = GraphReading()  # the graph fields' defaults: all a Keras or zoo model has


class NotFoundError(DnntuneError):
    """A model the caller named is not held here."""


class TooLargeError(LimitError):
    """An upload over the store's byte limit."""


@dataclass(frozen=True)
class ModelIdentity:
    """What a head and a tail must share to run as one model (see ``TailHeader.head``).

    An uploaded file is its sha256 (and, for a graph, how it is read: its layers and
    cuts depend on that); a zoo model is its name, seed and input shape (without batch),
    with the defaults filled in.
    """

    sha256: str = ""
    zoo_name: str = ""
    seed: int = 0
    input_shape: tuple[int, ...] = ()
    graph: GraphReading = NOT_A_GRAPH

    @classmethod
    def of(cls, sha256: str, zoo_name: str, seed: int, input_shape: Any,
           graph: GraphReading = NOT_A_GRAPH) -> ModelIdentity:
        """The canonical identity of these ``ModelSpec``/``ModelIdentity`` field values."""
        if sha256:
            return cls(sha256=sha256, graph=graph)
        from dnntune.model.zoo import ZOO

        shape = tuple(int(d) for d in input_shape)
        if not shape and zoo_name in ZOO:
            shape = ZOO[zoo_name].input_shape
        return cls(zoo_name=zoo_name, seed=seed or DEFAULT_SEED, input_shape=shape)

    def describe(self) -> str:
        if self.sha256:
            if not self.graph.is_default:
                return (f"uploaded graph {self.sha256[:12]}… read as {self.graph.inputs or ''}"
                        f" -> {self.graph.outputs or ''}, depth {self.graph.depth}"
                        + (", folded" if self.graph.fold else ""))
            return f"uploaded model {self.sha256[:12]}…"
        return f"zoo model {self.zoo_name} (seed {self.seed}, input {list(self.input_shape)})"


@dataclass(frozen=True)
class ModelKey:
    """Identifies a loaded model: where from, at what input shape, batch and seed."""

    zoo_name: str = ""
    sha256: str = ""
    input_shape: tuple[int, ...] = ()
    batch_size: int = 1
    seed: int = DEFAULT_SEED
    name: str = ""
    graph: GraphReading = NOT_A_GRAPH  # an uploaded .pb graph: how to read it


@dataclass
class ModelEntry:
    """A loaded model, its identity, how long loading took and its splits."""

    loaded: LoadedModel
    identity: ModelIdentity
    load_ms: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _splitter: Any = None
    _splits: dict[int, Any] = field(default_factory=dict)
    _reference: list[Any] | None = None

    def split(self, index: int) -> Any:
        """The model split at cut ``index`` (built once, then reused)."""
        from dnntune.model.split import Splitter

        with self.lock:
            if self._splitter is None:
                self._splitter = Splitter(self.loaded.model, self.loaded.graph)
            if index not in self._splits:
                self._splits[index] = self._splitter.split(index)
            return self._splits[index]

    def reference_outputs(self) -> list[Any]:
        """The unsplit model's outputs on its example inputs (computed once, then reused:
        compiling the whole model per RunSplit cost seconds on an emulated phone)."""
        from dnntune.model.loading import compile_model

        with self.lock:
            if self._reference is None:
                self._reference = compile_model(self.loaded.model)(
                    self.loaded.example_inputs())
            return self._reference


class ModelStore:
    """Uploaded model files and loaded models, with bounds on both."""

    def __init__(self, upload_dir: str | Path | None = None, max_models: int = 4,
                 limits: RequestLimits | None = None, max_files: int = 16) -> None:
        self.limits = limits or RequestLimits()
        self.owns_dir = not upload_dir  # a folder it made itself: removed by close()
        if upload_dir:
            self.upload_dir = Path(upload_dir)
            try:
                self.upload_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                problem = ("exists and is not a folder" if isinstance(exc, FileExistsError)
                           else f"cannot create it ({exc.strerror})")
                raise DnntuneError(f"--upload-dir {upload_dir}: {problem}") from None
        else:
            self.upload_dir = Path(tempfile.mkdtemp(prefix="dnntune-models-"))
        self.max_models = max_models
        self.max_upload_bytes = self.limits.max_model_bytes
        self.max_files = max_files
        self._loaded: OrderedDict[ModelKey, ModelEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()  # one build at a time bounds build memory
        self._references: dict[str, LayerGraph] = {}  # zoo layer graphs at their own shape
        self._pinned: set[str] = set()  # files the operator gave (serve --bundle): kept

    def close(self) -> None:
        """Forget loaded models; remove the upload folder if this store created it."""
        with self._lock:
            self._loaded.clear()
        if self.owns_dir:
            shutil.rmtree(self.upload_dir, ignore_errors=True)

    def file_for(self, sha256: str) -> Path | None:
        """The stored file of ``sha256`` (checked to be 64 hex digits), or ``None``."""
        check_sha256(sha256, "sha256")
        for suffix in STORED_SUFFIXES:
            path = self.upload_dir / f"{sha256}{suffix}"
            if _is_plain_file(path):
                return path
            if path.is_symlink():  # never followed: it could lead anywhere on the host
                log.warning("model store: %s is a symbolic link, not an upload; ignored",
                            path.name)
        return None

    def uploaded_file(self, sha256: str) -> Path:
        """The stored file of ``sha256``; NotFoundError (NOT_FOUND) if it was never
        uploaded or was evicted."""
        path = self.file_for(sha256)
        if path is None:
            raise NotFoundError(f"no uploaded model with sha256 {sha256}; upload it first")
        return path

    def save_upload(self, sha256: str, suffix: str, total_bytes: int,
                    parts: Iterable[bytes]) -> Path:
        """Store an uploaded model file; checks its size, suffix, sha256 and format."""
        check_sha256(sha256, "ModelChunk.sha256")
        if suffix not in STORED_SUFFIXES:
            raise DnntuneError(f"model suffix must be one of {', '.join(STORED_SUFFIXES)}, "
                               f"got {quoted(suffix)}")
        if total_bytes < 1:
            raise DnntuneError(f"ModelChunk.total_bytes must be at least 1, got {total_bytes}")
        if total_bytes > self.max_upload_bytes:
            raise TooLargeError(f"model of {total_bytes} bytes: the limit is "
                                f"{self.max_upload_bytes} bytes")
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.upload_dir, suffix=".part")
        received = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for data in parts:
                    received += len(data)
                    if received > total_bytes:
                        raise DnntuneError(f"model upload: more than the declared "
                                           f"{total_bytes} bytes")
                    digest.update(data)
                    f.write(data)
            if received != total_bytes:
                raise DnntuneError(f"model upload: {received} of {total_bytes} bytes arrived")
            if digest.hexdigest() != sha256:
                raise DnntuneError(f"model upload: sha256 of the bytes is "
                                   f"{digest.hexdigest()}, not {sha256}")
            check_model_archive(Path(tmp), suffix)
            path = self.upload_dir / f"{sha256}{suffix}"
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._evict_files()
        return path

    def pin(self, path: str | Path) -> str:
        """Store the operator's model file ``path`` as if uploaded, never to be evicted;
        returns its sha256 (clients name it in ``ModelSpec.sha256``)."""
        source = Path(path)
        digest = hashlib.sha256()
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        sha256 = digest.hexdigest()
        self._pinned.add(sha256)

        def parts() -> Iterable[bytes]:
            with open(source, "rb") as f:
                yield from iter(lambda: f.read(1 << 20), b"")
        self.save_upload(sha256, source.suffix, source.stat().st_size, parts())
        return sha256

    def prepare(self, sha256: str, cuts: Iterable[int]) -> None:
        """Load an uploaded model and run the tail of each of ``cuts`` once on zeros, so
        that a request finds the model built and its tails compiled (``serve --bundle``
        does this before it serves: nothing is built at request time)."""
        import numpy as np

        entry = self.get(ModelKey(sha256=sha256))
        graph = entry.loaded.graph
        for index in cuts:
            split = entry.split(index)
            if split.tail is not None:
                split.run_tail([np.zeros(graph.tensor(n).shape, graph.tensor(n).dtype)
                                for n in split.tail_inputs])

    def _evict_files(self) -> None:
        files = sorted((p for p in self.upload_dir.iterdir()
                        if p.suffix in STORED_SUFFIXES and _is_plain_file(p)
                        and p.stem not in self._pinned),
                       key=lambda p: p.lstat().st_mtime)
        for old in files[:max(len(files) - self.max_files, 0)]:
            old.unlink(missing_ok=True)

    def estimate(self, key: ModelKey) -> MemoryEstimate:
        """The memory ``key``'s model will take (:mod:`dnntune.model.memory`), known
        before it is built: a zoo model at another shape is estimated from its layer graph
        at its own shape (built once, uncalibrated); an uploaded file, bounded by
        ``--max-model-mb``, is loaded and measured exactly."""
        from dnntune.model.memory import estimate_memory

        with self._lock:
            entry = self._loaded.get(key)
        if entry is not None or key.sha256:
            return estimate_memory((entry or self.get(key)).loaded.graph)
        from dnntune.model.zoo import ZOO

        name = check_zoo_name(key.zoo_name, "ModelSpec.zoo_name")
        with self._lock:
            graph = self._references.get(name)
        if graph is None:
            with self._build_lock:
                graph = load_model(name, calibrate=False).graph
            with self._lock:
                self._references[name] = graph
        return estimate_memory(graph, key.input_shape or ZOO[name].input_shape,
                               key.batch_size)

    def get(self, key: ModelKey) -> ModelEntry:
        """The loaded model for ``key``, loading it (and evicting the oldest) if needed."""
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        if key.sha256:
            source = graph_source(self.uploaded_file(key.sha256), key.graph,
                                  f"uploaded model {key.sha256[:12]}…")
        elif key.zoo_name:
            from dnntune.model.zoo import ZOO

            # Only a registry name reaches the loader, which would open anything else as
            # a file: a request must never name a path on this server.
            source = check_zoo_name(key.zoo_name, "ModelSpec.zoo_name")
            check_input_elements(key.input_shape or ZOO[source].input_shape,
                                 key.batch_size, self.limits)
        else:
            raise DnntuneError("model spec names neither a zoo model nor an uploaded sha256")
        with self._build_lock:
            with self._lock:  # built by another caller while this one waited
                if key in self._loaded:
                    return self._loaded[key]
            entry = self._load(key, source)
            with self._lock:
                self._loaded[key] = entry
                while len(self._loaded) > self.max_models:
                    self._loaded.popitem(last=False)
        return entry

    def _load(self, key: ModelKey, source: str) -> ModelEntry:
        shapes = [key.input_shape] if key.input_shape else None
        t0 = time.perf_counter()
        try:
            loaded = load_model(source, shapes, batch_size=key.batch_size, seed=key.seed,
                                name=key.name or key.sha256 or None)
        except DnntuneError as exc:
            what = f"uploaded model {key.sha256}" if key.sha256 else key.zoo_name
            path = source.split("?", 1)[0]  # a graph's spec: the path, then how to read it
            raise DnntuneError(redact(str(exc), path, what)) from None
        for shape in loaded.input_shapes:  # a file fixes its own input size
            check_input_elements(shape[1:], shape[0], self.limits)
        identity = ModelIdentity.of(key.sha256, key.zoo_name, key.seed, key.input_shape,
                                    key.graph)
        return ModelEntry(loaded, identity, (time.perf_counter() - t0) * 1e3)


def _is_plain_file(path: Path) -> bool:
    """A regular file itself, not a symbolic link to one."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def redact(message: str, path: str, name: str) -> str:
    """``message`` with this server's paths replaced by ``name`` or ``<server path>``."""
    message = message.replace(path, name)
    for root in {tempfile.gettempdir(), str(Path.home()), os.getcwd()}:
        if len(root) > 1:
            message = message.replace(root, "<server path>")
    return message


def check_model_archive(path: Path, suffix: str) -> None:
    """Refuse bytes that cannot be a saved Keras model or a GraphDef, naming what is
    wrong with them."""
    import zipfile

    if suffix == GRAPH_SUFFIX:
        read_graph_def(path)
        return
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise DnntuneError("model upload: a .keras file must be a zip archive (Keras 3 "
                               "format); these bytes are not one")
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DnntuneError(f"model upload: a damaged .keras zip archive ({exc})") from None
        if bad is not None:
            raise DnntuneError(f"model upload: a damaged .keras zip archive (member {bad!r})")
        if "config.json" not in names:
            raise DnntuneError("model upload: the .keras archive has no config.json, so it is "
                               "not a saved Keras model")
        return
    import h5py

    try:
        with h5py.File(path, "r") as f:
            has_config = "model_config" in f.attrs
    except OSError:
        raise DnntuneError(f"model upload: a {suffix} file must be HDF5; these bytes are "
                           "not") from None
    if not has_config:
        raise DnntuneError(f"model upload: the {suffix} file has no model_config, so it is "
                           "not a saved Keras model (weights only?)")
