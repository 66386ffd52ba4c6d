"""Models a server holds: uploaded files by sha256 and loaded models, both bounded.

Uploaded files are kept on disk under their sha256 (checked on arrival) and loaded in
Keras safe mode; loaded models are kept in a small LRU cache together with their
splitter and the splits built so far. Thread-safe: gRPC handlers share one store.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnntune.errors import DnntuneError
from dnntune.model.loading import DEFAULT_SEED, MODEL_SUFFIXES, LoadedModel, load_model

SHA256_HEX = 64


class NotFoundError(DnntuneError):
    """A model the caller named is not held here."""


class TooLargeError(DnntuneError):
    """An upload over the store's byte limit."""


@dataclass(frozen=True)
class ModelKey:
    """Identifies a loaded model: where from, at what input shape, batch and seed."""

    zoo_name: str = ""
    sha256: str = ""
    input_shape: tuple[int, ...] = ()
    batch_size: int = 1
    seed: int = DEFAULT_SEED
    name: str = ""


@dataclass
class ModelEntry:
    loaded: LoadedModel
    lock: threading.Lock = field(default_factory=threading.Lock)
    _splitter: Any = None
    _splits: dict[int, Any] = field(default_factory=dict)

    def split(self, index: int) -> Any:
        """The model split at cut ``index`` (built once, then reused)."""
        from dnntune.model.split import Splitter

        with self.lock:
            if self._splitter is None:
                self._splitter = Splitter(self.loaded.model, self.loaded.graph)
            if index not in self._splits:
                self._splits[index] = self._splitter.split(index)
            return self._splits[index]


class ModelStore:
    """Uploaded model files and loaded models, with bounds on both."""

    def __init__(self, upload_dir: str | Path | None = None, max_models: int = 4,
                 max_upload_bytes: int = 1 << 30, max_files: int = 16) -> None:
        self.upload_dir = Path(upload_dir or tempfile.mkdtemp(prefix="dnntune-models-"))
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.max_models = max_models
        self.max_upload_bytes = max_upload_bytes
        self.max_files = max_files
        self._loaded: OrderedDict[ModelKey, ModelEntry] = OrderedDict()
        self._lock = threading.Lock()

    def file_for(self, sha256: str) -> Path | None:
        for suffix in MODEL_SUFFIXES:
            path = self.upload_dir / f"{sha256}{suffix}"
            if path.is_file():
                return path
        return None

    def save_upload(self, sha256: str, suffix: str, total_bytes: int,
                    parts: Iterable[bytes]) -> Path:
        """Store an uploaded model file; checks its size, suffix and sha256."""
        if len(sha256) != SHA256_HEX or any(c not in "0123456789abcdef" for c in sha256):
            raise DnntuneError(f"model sha256 must be 64 lowercase hex digits, got {sha256!r}")
        if suffix not in MODEL_SUFFIXES:
            raise DnntuneError(f"model suffix must be one of {', '.join(MODEL_SUFFIXES)}, "
                               f"got {suffix!r}")
        if not 0 < total_bytes <= self.max_upload_bytes:
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
            path = self.upload_dir / f"{sha256}{suffix}"
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._evict_files()
        return path

    def _evict_files(self) -> None:
        files = sorted((p for p in self.upload_dir.iterdir() if p.suffix in MODEL_SUFFIXES),
                       key=lambda p: p.stat().st_mtime)
        for old in files[:-self.max_files]:
            old.unlink(missing_ok=True)

    def get(self, key: ModelKey) -> ModelEntry:
        """The loaded model for ``key``, loading it (and evicting the oldest) if needed."""
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        if key.sha256:
            path = self.file_for(key.sha256)
            if path is None:
                raise NotFoundError(f"no uploaded model with sha256 {key.sha256}; upload it "
                                    "first")
            source = str(path)
        elif key.zoo_name:
            source = key.zoo_name
        else:
            raise DnntuneError("model spec names neither a zoo model nor an uploaded sha256")
        shapes = [key.input_shape] if key.input_shape else None
        entry = ModelEntry(load_model(source, shapes, batch_size=key.batch_size, seed=key.seed,
                                      name=key.name or None))
        with self._lock:
            self._loaded[key] = entry
            while len(self._loaded) > self.max_models:
                self._loaded.popitem(last=False)
        return entry
