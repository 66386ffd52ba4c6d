"""Output paths checked before any work is done, so a bad ``--out`` costs nothing.

A profile can take minutes to measure; finding out afterwards that ``--out`` names a
directory, that an output folder is an existing file, or that nobody may write there,
would lose the measurement. Writability is probed by creating (and removing) a file where
the output will go, which is what counts for root and for other users alike, on any file
system (``os.access`` says yes to root for ``/proc``). A failure after the work is done
still keeps the result: :func:`rescue_file` names where it went instead.
"""

from __future__ import annotations

import os
import tempfile
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
    try:
        if path.exists():
            with path.open("ab"):  # appends nothing: the file is left as it is
                pass
        else:
            _probe_folder(parent)
    except OSError as exc:
        raise DnntuneError(f"{flag} {path}: cannot be written ({exc.strerror})") from None
    return path


def check_output_dir(path: str | Path, flag: str) -> Path:
    """``path`` is, or can become, a writable folder (no file in the way)."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise DnntuneError(f"{flag} {path}: {part} is a file; expected a folder")
            try:
                _probe_folder(part)
            except OSError as exc:
                raise DnntuneError(f"{flag} {path}: cannot write in {part} "
                                   f"({exc.strerror})") from None
            break
    return path


def rescue_file(data: str, stem: str, suffix: str) -> Path:
    """Write ``data`` to a new file in the temporary folder (else the working folder), for
    a result whose ``--out`` could not be written after it was measured."""
    for folder in (None, "."):
        try:
            fd, name = tempfile.mkstemp(prefix=f"{stem}-", suffix=suffix, dir=folder)
        except OSError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(data)
        return Path(name).resolve()
    raise DnntuneError(f"no folder could take the {stem} (temporary folder and working "
                       "folder are not writable)")


def _probe_folder(folder: Path) -> None:
    fd, name = tempfile.mkstemp(prefix=".dnntune-probe-", dir=folder)
    os.close(fd)
    os.unlink(name)
