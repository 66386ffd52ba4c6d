"""Output paths checked before any work is done, so a bad ``--out`` costs nothing.

A profile can take minutes to measure; finding out afterwards that ``--out`` names a
directory, or that an output folder is an existing file, would lose the measurement.
"""

from __future__ import annotations

import os
from pathlib import Path

from dnntune.errors import DnntuneError


def check_output_file(path: str | Path, flag: str) -> Path:
    """``path`` can be written as a file: not a directory, in an existing writable folder."""
    path = Path(path)
    if path.is_dir():
        raise DnntuneError(f"{flag} {path}: is a directory; expected a file name such as "
                           f"{path / 'profile.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DnntuneError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise DnntuneError(f"{flag} {path}: not writable")
    return path


def check_output_dir(path: str | Path, flag: str) -> Path:
    """``path`` is, or can become, a writable folder (no file in the way)."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise DnntuneError(f"{flag} {path}: {part} is a file; expected a folder")
            if not os.access(part, os.W_OK):
                raise DnntuneError(f"{flag} {path}: {part} is not writable")
            break
    return path
