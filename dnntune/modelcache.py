"""One set of bytes per zoo model: built and calibrated once, then loaded by everyone.

A zoo model's BatchNorm statistics come from a training-mode pass whose float
reductions depend on the thread count and the CPU, so two processes that each build
and calibrate the same model can end up with different weights (and hashes). dnntune
therefore calibrates a zoo model once, saves it as a ``.keras`` file in a cache, and
every later load on this machine reads those bytes. Remote sides never build their
own: the orchestrating client uploads the cached file by sha256, exactly as it does a
user's own model file, so device and cloud run bit-identical weights.

The cache lives in ``$DNNTUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/dnntune``, else
``~/.cache/dnntune``; deleting it is always safe.
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
    import keras

    from dnntune import __version__

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
    if path.is_file():
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
    return path


def forget(path: Path) -> None:
    """Drop a cached file that no longer loads (truncated by a full disk, say)."""
    path.unlink(missing_ok=True)


def _build_calibrated(name: str, input_shape: tuple[int, ...], seed: int) -> Any:
    from dnntune.models import build_zoo_model, calibrate_batchnorm, generate_inputs
    from dnntune.zoo import ZOO

    model = build_zoo_model(name, input_shape, seed)
    # Batch-1 inputs whatever batch the caller profiles at: the weights must not depend
    # on how the model is later run.
    inputs = generate_inputs([(1, *input_shape)], [ZOO[name].input_dtype], seed)
    calibrate_batchnorm(model, inputs)
    return model
