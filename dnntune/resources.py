"""Files dnntune reads at run time, found the same way from a clone, an editable
install or a wheel, whatever the working directory.

The repository keeps them at its top (``configs/``, ``proto/``); ``dnntune/_data/`` links
to them, and the build copies what the links point to into the wheel as package data.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "_data"


def data_path(*parts: str) -> Path:
    """A shipped file or folder, e.g. ``data_path("configs", "links.yaml")``.

    Example:
        >>> data_path("configs", "default.yaml").is_file()
        True
    """
    return DATA_DIR.joinpath(*parts)
