"""The registry of subcommands beyond ``graph``: each entry adds one subparser."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Registrar = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]

REGISTRY: list[Registrar] = []


def _profile(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dnntune.profile_cli import add_profile_command

    add_profile_command(sub)


REGISTRY.append(_profile)
