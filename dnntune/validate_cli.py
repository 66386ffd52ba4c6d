"""``dnntune validate``: run chosen splits over emulated links, predicted against measured."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from dnntune.errors import DnntuneError
from dnntune.validate import CUT_CHOICES, Validation


def add_validate_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "validate", help="run splits for real over emulated 3G/4G/Wi-Fi and check predictions",
        description="Profile both sides (or reuse saved profiles), predict every cut's "
                    "latency, then run the chosen cuts end to end: the head here, the tail "
                    "on the cloud server, the gRPC traffic shaped to each link by a proxy. "
                    "Reports predicted against measured latency and the regret.")
    p.add_argument("--config", metavar="FILE", help="run configuration (default: MobileNetV2)")
    p.add_argument("--model", metavar="NAME|PATH", help="override the config's model")
    p.add_argument("--links", action="append", metavar="LINK[,LINK...]",
                   help="presets, links YAML files or trace files (default: the config's)")
    p.add_argument("--cuts", default="best", metavar="WHICH",
                   help=f"{CUT_CHOICES}: 'best' is the predicted-fastest cut and both "
                        "baselines (default: best)")
    p.add_argument("--num_runs", type=int, default=3, metavar="N",
                   help="timed split runs per cut and link (default: 3)")
    p.add_argument("--profile-runs", type=int, metavar="N",
                   help="profiling runs (default: the config's)")
    p.add_argument("--cloud", metavar="HOST:PORT",
                   help="a running cloud server (default: one started on a free loopback "
                        "port); the device side always runs in this process")
    p.add_argument("--shaper", choices=("proxy", "tbf"), default="proxy",
                   help="proxy: user-space rate and delay (default, anywhere); tbf: as root, "
                        "kernel tc tbf rates between network namespaces, delay from the proxy")
    from dnntune.pipeline import add_access_flags

    add_access_flags(p)
    p.add_argument("--out", metavar="DIR", help="write validation.json and plots here")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from dnntune.analysis import Objective, analyze_profiles
    from dnntune.client import ProfilerClient, parse_address
    from dnntune.config import config_links, default_config, load_config, with_overrides
    from dnntune.costs import CostOptions
    from dnntune.outputs import check_output_dir
    from dnntune.pipeline import (
        Access,
        Source,
        collect_profiles,
        local_cloud_server,
        side_access,
    )
    from dnntune.report import progress_bar
    from dnntune.validate import parse_cut_spec

    if args.num_runs < 1:
        raise DnntuneError(f"--num_runs must be at least 1, got {args.num_runs}")
    config = load_config(args.config) if args.config else default_config()
    config = with_overrides(config, args.model, args.profile_runs)
    links = config_links(config, args.links)
    if args.out:
        check_output_dir(args.out, "--out")
    parse_cut_spec(args.cuts)
    access = side_access(args)
    with contextlib.ExitStack() as stack:
        if args.cloud:
            address = parse_address(args.cloud, "--cloud")
        else:  # started here: plain loopback, no credentials
            address = stack.enter_context(local_cloud_server(config.cloud.threads))
            access["cloud"] = Access()
        rpc: list[tuple[float, float]] = []
        device, cloud = collect_profiles(config, Source("local"), Source("remote", address),
                                         access, Path(args.out or "."), progress_bar,
                                         lambda side, profile: None, rpc.append)
        options = CostOptions(rpc_ms=rpc[0][0], rpc_ms_per_mb=rpc[0][1])
        analysis = analyze_profiles(device, cloud, links, Objective("latency-first"), options)
        validation = _run(config, analysis, address, access["cloud"], args, ProfilerClient)
    _write_and_print(args, validation)
    return 0


def _run(config: Any, analysis: Any, address: str, access: Any, args: argparse.Namespace,
         client_cls: Any) -> Validation:
    from dnntune.models import load_model
    from dnntune.pipeline import upload_model
    from dnntune.report import progress_bar
    from dnntune.validate import validate_links

    shapes = [config.input_shape] if config.input_shape else None
    loaded = load_model(config.model, shapes, batch_size=config.batch_size, seed=config.seed)
    host, _, port = address.rpartition(":")
    first = client_cls(access.endpoint(address))
    try:
        spec = upload_model(first, config)
    finally:
        first.close()
    def connect(address: str, connect_timeout_s: float = 10) -> Any:
        """A client of the cloud server at ``address`` (maybe a shaping proxy), which
        holds the model: a server started per link (``--shaper tbf``) gets it uploaded."""
        client = client_cls(access.endpoint(
            address, connect_timeout_s=connect_timeout_s,
            tls_server_name=host if access.tls_cert else None))  # the cert names host
        upload_model(client, config)
        return client

    with progress_bar(f"validating {loaded.name}") as update:
        results = validate_links(loaded, analysis.links, host, int(port), args.cuts,
                                 args.num_runs, spec,
                                 connect,
                                 update, shaper=args.shaper,
                                 cloud_threads=config.cloud.threads)
    return Validation(loaded.name, args.num_runs, tuple(results))


def _write_and_print(args: argparse.Namespace, validation: Validation) -> None:
    from dnntune.validate_report import plot_validation, print_validation

    doc = validation.to_dict()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "validation.json").write_text(json.dumps(doc, indent=1) + "\n")
        for link in validation.links:
            plot_validation(validation.model, link, out / f"validation-{link.name}.png")
    if args.format == "json":
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    else:
        print_validation(validation)
        if args.out:
            print(f"validation.json and plots in {Path(args.out).resolve()}")
