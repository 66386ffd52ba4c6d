"""The registry of subcommands beyond ``graph``: each entry adds one subparser."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Registrar = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]

REGISTRY: list[Registrar] = []


def _profile(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dnntune.cli.profile import add_profile_command

    add_profile_command(sub)


REGISTRY.append(_profile)


def _analyze(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dnntune.cli.analyze import add_analyze_arguments, run_analyze

    p = sub.add_parser("analyze", help="every cut point under 3G/4G/Wi-Fi/trace links: the "
                                       "latency-first or energy-first partition",
                       description="Walk every cut point of two saved profiles (device and "
                                   "cloud) with T = Tm + Tt + Tc and E = Em + Et per link, and "
                                   "pick the best partition for the objective.")
    add_analyze_arguments(p)
    p.set_defaults(handler=run_analyze)


REGISTRY.append(_analyze)


def _servers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dnntune.cli.serve import add_server_commands

    add_server_commands(sub)


REGISTRY.append(_servers)


def _validate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dnntune.cli.validate import add_validate_command

    add_validate_command(sub)


REGISTRY.append(_validate)


def _litert(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dnntune.cli.litert import add_convert_command, add_import_command, add_study_command

    add_convert_command(sub)
    add_import_command(sub)
    add_study_command(sub)


REGISTRY.append(_litert)


def _store(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dnntune.cli.store import add_store_command

    add_store_command(sub)


REGISTRY.append(_store)


def _deploy(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dnntune.cli.deploy import add_deploy_commands

    add_deploy_commands(sub)


REGISTRY.append(_deploy)
