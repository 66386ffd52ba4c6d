"""One set of bytes per zoo model: built and calibrated once, then loaded by everyone.

A zoo model's BatchNorm statistics come from a training-mode pass whose float
reductions depend on the thread count and the CPU, so two processes that each build
and calibrate the same model can end up with different weights (and hashes). dnntune
therefore calibrates a zoo model once, saves it as a ``.keras`` file in a cache, and
every later load on this machine reads those bytes. Remote sides never build their
own: the orchestrating client uploads the cached file by sha256, exactly as it does a
user's own model file, so device and cloud run bit-identical weights.

The cache lives in ``$DNNTUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/dnntune``, else
``~/.cache/dnntune``; deleting it is always safe. It is bounded on disk: at most
``$DNNTUNE_CACHE_MAX_FILES`` builds (default 32) and ``$DNNTUNE_CACHE_MAX_MB`` MiB
(default 4096); beyond either, the least recently used builds are removed (every use
touches a file's time), never the one just built. A server asked for a stream of new
shapes or seeds thus keeps a bounded cache, and a removed build is rebuilt when asked for
again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from dnntune.errors import DnntuneError

CACHE_ENV = "DNNTUNE_CACHE_DIR"
MAX_FILES_ENV = "DNNTUNE_CACHE_MAX_FILES"
MAX_MB_ENV = "DNNTUNE_CACHE_MAX_MB"
DEFAULT_MAX_FILES = 32
DEFAULT_MAX_MB = 4096


def cache_dir() -> Path:
    """The folder that holds built zoo models (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "dnntune"


def zoo_file_name(name: str, input_shape: tuple[int, ...], seed: int) -> str:
    """The cache file name of one zoo build: what it depends on, hashed.

    Keras's version is part of the key because a different Keras may build (or save)
    the same zoo entry differently.
    """
    from dnntune import __version__
    from dnntune.model.loading import import_keras

    keras = import_keras()  # quietly: TensorFlow's native start-up logs stay off stderr

    key = f"{name}|{list(input_shape)}|{seed}|keras {keras.__version__}|dnntune {__version__}"
    return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.keras"


def zoo_model_file(name: str, input_shape: tuple[int, ...], seed: int) -> Path:
    """The cached, calibrated ``.keras`` file of a zoo model, built now if missing.

    Args:
        name: Zoo name.
        input_shape: Input shape without the batch dimension.
        seed: Seed for the weights and the calibration inputs.

    Returns:
        The file's path. Its bytes, not a rebuild, define the model from then on.
    """
    folder = cache_dir() / "zoo"
    path = folder / zoo_file_name(name, input_shape, seed)
    if _touch(path):
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DnntuneError(f"model cache {folder}: cannot create it ({exc.strerror}); "
                           f"set {CACHE_ENV} to a writable folder") from None
    # One builder at a time per file: processes starting together (a test run, a device
    # and a cloud on one host) must all end up with the first one's bytes.
    with open(folder / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return path
        model = _build_calibrated(name, input_shape, seed)
        # Write beside the target and rename, so no reader ever sees half a file.
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".keras", dir=folder)
        os.close(fd)
        try:
            model.save(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            raise DnntuneError(f"model cache {folder}: cannot write {path.name} "
                               f"({exc.strerror})") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
    evict_least_recent(folder, keep=path)
    return path


def cache_limits() -> tuple[int, int]:
    """(files, bytes) the cache may hold, from the environment or the defaults."""
    limits = []
    for env, default in ((MAX_FILES_ENV, DEFAULT_MAX_FILES), (MAX_MB_ENV, DEFAULT_MAX_MB)):
        text = os.environ.get(env, "")
        try:
            value = int(text) if text else default
        except ValueError:
            raise DnntuneError(f"{env}={text!r}: expected a whole number") from None
        if value < 1:
            raise DnntuneError(f"{env}={text!r}: must be at least 1")
        limits.append(value)
    return limits[0], limits[1] << 20


def evict_least_recent(folder: Path, keep: Path) -> list[Path]:
    """Remove the least recently used builds beyond :func:`cache_limits` (never ``keep``);
    returns what was removed."""
    max_files, max_bytes = cache_limits()
    entries = []
    for p in folder.glob("*.keras"):
        try:
            st = p.stat()
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        entries.append((st.st_mtime, st.st_size, p))
    entries.sort(key=lambda e: (e[2] != keep, -e[0]))  # ``keep`` first, then newest
    removed, files, total = [], 0, 0
    for _, size, p in entries:
        files, total = files + 1, total + size
        if p != keep and (files > max_files or total > max_bytes):
            p.unlink(missing_ok=True)
            (folder / f".{p.name}.lock").unlink(missing_ok=True)
            removed.append(p)
            files, total = files - 1, total - size
    return removed


def _touch(path: Path) -> bool:
    """Mark a cached build as just used; ``False`` if there is none."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:  # a read-only cache still serves its files
        return path.is_file()
    return path.is_file()


def forget(path: Path) -> None:
    """Drop a cached file that no longer loads (truncated by a full disk, say)."""
    path.unlink(missing_ok=True)


def _build_calibrated(name: str, input_shape: tuple[int, ...], seed: int) -> Any:
    from dnntune.model.loading import build_zoo_model, calibrate_batchnorm, generate_inputs
    from dnntune.model.zoo import ZOO

    model = build_zoo_model(name, input_shape, seed)
    # Batch-1 inputs whatever batch the caller profiles at: the weights must not depend
    # on how the model is later run.
    inputs = generate_inputs([(1, *input_shape)], [ZOO[name].input_dtype], seed)
    calibrate_batchnorm(model, inputs)
    return model
