"""The registry of subcommands beyond ``graph``: each entry adds one subparser."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Registrar = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]

REGISTRY: list[Registrar] = []
