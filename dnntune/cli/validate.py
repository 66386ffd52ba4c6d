"""``dnntune validate``: run chosen splits over emulated links, predicted against measured."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from dnntune.cli import flags
from dnntune.errors import DnntuneError
from dnntune.validation.validate import CUT_CHOICES, Validation


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
    p.add_argument("--num_runs", type=flags.RUNS, default=3, metavar="N",
                   help="timed split runs per cut and link (default: 3)")
    p.add_argument("--profile-runs", type=flags.RUNS, metavar="N",
                   help="profiling runs (default: the config's)")
    p.add_argument("--cloud", metavar="HOST:PORT",
                   help="a running cloud server (default: one started on a free loopback "
                        "port)")
    p.add_argument("--device", metavar="HOST:PORT",
                   help="a running device agent to run the heads on; start it with "
                        "--cloud pointing at --proxy-listen (default: an agent started "
                        "here, emulated as --emulate says)")
    p.add_argument("--emulate", metavar="PRESET|none",
                   help="device preset to emulate (configs/devices), or none for this "
                        "machine as it is (default: the config's processing.device.emulate)")
    p.add_argument("--proxy-listen", metavar="HOST:PORT", default="127.0.0.1:0",
                   help="where the shaping proxy in front of the cloud server listens for "
                        "the agent (default: a free loopback port; give one with --device)")
    p.add_argument("--shaper", choices=("proxy", "tbf"), default="proxy",
                   help="proxy: user-space rate and delay, heads on the device agent "
                        "(default); tbf: as root, kernel tc tbf rates between network "
                        "namespaces, heads in this process (with --emulate none only)")
    p.add_argument("--framework", choices=("tf", "litert"), default="tf",
                   help="the device's runtime: tf runs each head in TensorFlow; litert runs "
                        "it as a LiteRT fp32 model of the cut (what an app runs), converted "
                        "on the agent before its runs, the cut checked against the layer "
                        "map of `dnntune convert` (default: tf)")
    p.add_argument("--wire", action="append", metavar="ENC[,ENC...]",
                   help="send the crossing tensors encoded (fp32, fp16, int8, int8c, uint8, "
                        "png, jpeg<Q>, each optionally +zstd): the agent encodes after the "
                        "head, the cloud server decodes; every admitted (cut, encoding) of "
                        "a chosen cut runs, on a photograph (default: the config file's "
                        "'wire', else plain float32 tensors). See docs/wire.md")
    p.add_argument("--min-agreement", type=float, default=0.99, metavar="X",
                   help="with --wire: leave out (cut, encoding) pairs whose top-1 agreement "
                        "with the float32 model is below X (default: 0.99)")
    from dnntune.cli.pipeline import add_access_flags

    add_access_flags(p)
    p.add_argument("--out", metavar="DIR", help="write validation.json and plots here")
    p.add_argument("--format", choices=("table", "json"), default="table")
    from dnntune.cli.store import add_recording_flags

    add_recording_flags(p)
    p.set_defaults(handler=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from dnntune.cli.outputs import check_output_dir
    from dnntune.config import config_links, default_config, load_config, with_overrides
    from dnntune.validation.validate import parse_cut_spec

    if args.num_runs < 1:
        raise DnntuneError(f"--num_runs must be at least 1, got {args.num_runs}")
    config = load_config(args.config) if args.config else default_config()
    config = with_overrides(config, args.model, args.profile_runs, None, args.emulate)
    links = config_links(config, args.links)
    if args.out:
        check_output_dir(args.out, "--out")
    parse_cut_spec(args.cuts)
    from dnntune.cli.pipeline import check_model_file, graph_wire_problem

    check_model_file(config.model)  # a missing file or a graph's bad name: before any server
    args.wire_names = _wire_names(args, config)
    if args.wire_names and graph_wire_problem(config.model):
        raise DnntuneError(f"--wire: {graph_wire_problem(config.model)}")
    if args.wire_names and args.framework == "litert":
        raise DnntuneError("--wire with --framework litert is not supported yet: LiteRT "
                           "heads send their own tensors (measured in their profiles)")
    if args.wire_names and args.shaper == "tbf":
        raise DnntuneError("--wire runs on the device agent: use --shaper proxy")
    if args.device and args.emulate not in (None, "none"):
        raise DnntuneError("--emulate goes with the device agent validate starts; a remote "
                           "agent emulates with 'dnntune agent --emulate PRESET'")
    if args.shaper == "tbf":
        if args.framework != "tf":
            raise DnntuneError("--framework litert runs heads on the device agent: use "
                               "--shaper proxy")
        if args.device or config.device.emulate:
            raise DnntuneError("--shaper tbf runs heads in this process, so it cannot "
                               "validate an emulated or remote device: use --shaper proxy, "
                               "or --emulate none")
        validation = _run_tbf(args, config, links)
    else:
        validation = _run_on_agent(args, config, links)
    _write_and_print(args, validation)
    return 0


def _run_on_agent(args: argparse.Namespace, config: Any, links: Any) -> Validation:
    """Profile through the agent and the cloud server, then run every cut on the agent."""
    from dnntune.cli.litert_remote import litert_validation_profiles
    from dnntune.cli.pipeline import (
        Access,
        Source,
        cgroup_problem,
        collect_profiles,
        emulated_device_config,
        local_cloud_server,
        local_emulated_agent,
        side_access,
        upload_model,
    )
    from dnntune.netem.shaper import LinkShape, ShapingProxy
    from dnntune.profiling.devices import split_emulate
    from dnntune.profiling.profile import save_profile
    from dnntune.report.tables import progress_bar
    from dnntune.rpc.client import ProfilerClient, parse_address
    from dnntune.validation.validate import at_measured_cuts, validate_on_agent

    emulate = None if args.device else config.device.emulate
    problem = (cgroup_problem() if emulate and split_emulate(emulate)[1] == "quota"
               else None)
    if emulate and problem:
        raise DnntuneError(f"validate: cannot emulate {emulate} here ({problem}); "
                           "validation must run heads on the emulated device, so it needs "
                           "root or a delegated cgroup (or --emulate none to validate this "
                           "machine as it is)")
    listen = _listen_address(args.proxy_listen)
    access = side_access(args)
    if not args.device:
        access["device"] = Access()  # the agent started here: plain loopback
    if not args.cloud:
        access["cloud"] = Access()
    config = emulated_device_config(config) if emulate else config
    with contextlib.ExitStack() as stack:
        cloud = (parse_address(args.cloud, "--cloud") if args.cloud
                 else stack.enter_context(local_cloud_server(config.cloud.threads)))
        cloud_host, _, cloud_port = cloud.rpartition(":")
        # Unshaped while profiling; the agent's --cloud is this port from now on.
        relay = ShapingProxy(cloud_host, int(cloud_port), LinkShape.delay_only(0.0),
                             listen_host=listen[0], listen_port=listen[1]).start()
        listen = (listen[0], relay.port)
        if args.device:
            agent_address = parse_address(args.device, "--device")
        else:
            with progress_bar(f"starting the device agent ({emulate or 'this machine'})"
                              ) as update:
                update("starting", 0, 1)
                agent_address = stack.enter_context(local_emulated_agent(
                    emulate, f"{listen[0]}:{listen[1]}", config.device.threads))[0]
        rpc: list[tuple[float, float]] = []
        cut_spec = args.cuts
        try:
            if args.framework == "litert":  # predicted from LiteRT heads at those cuts
                device, cloud_profile, cut_spec = litert_validation_profiles(
                    config, agent_address, cloud, access, args.cuts, progress_bar,
                    rpc.append)
            else:
                device, cloud_profile = collect_profiles(
                    config, Source("remote", agent_address), Source("remote", cloud),
                    access, Path(args.out or "."), progress_bar, lambda side, profile: None,
                    rpc.append)
        finally:
            relay.stop()
        wire = _measure_wire(args, device)
        analysis = _predict(device, cloud_profile, links, rpc[0], wire, args.min_agreement)
        predicted = (at_measured_cuts(analysis.links, device) if device.measured_cuts
                     else analysis.links)
        agent = stack.enter_context(contextlib.closing(
            ProfilerClient(access["device"].endpoint(agent_address, connect_timeout_s=10))))
        spec = upload_model(agent, config)  # the bytes both sides hold, by sha256
        with progress_bar(f"validating {device.meta.model_name} on the agent") as update:
            results = validate_on_agent(agent, predicted, cloud_host, int(cloud_port),
                                        listen, cut_spec, args.num_runs, spec, update,
                                        framework=args.framework)
    if args.out and device.measured_cuts:
        save_profile(device, Path(args.out) / "device-litert.json")
    return Validation(device.meta.model_name, args.num_runs, tuple(results),
                      device.meta.device_label, device.device_note,
                      *_predicted_from(device))


def _predicted_from(device: Any) -> tuple[str, str]:
    """Which device profile the predictions came from, and what it was."""
    measured = device.measured_cuts
    if measured is None:
        return "tf", (f"per-layer TensorFlow profile of the device "
                      f"({device.meta.device_label})")
    return "litert", (f"LiteRT profile of the device ({device.meta.device_label}): "
                      f"{measured.framework}, head latency at cuts "
                      f"{', '.join(map(str, measured.indices))} ({measured.source})")


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise DnntuneError(f"--proxy-listen {text!r}: expected HOST:PORT (port 0 for a free "
                           "one), e.g. 127.0.0.1:50060")
    return host, int(port)


def _wire_names(args: argparse.Namespace, config: Any) -> tuple[str, ...]:
    """The encodings to validate: ``--wire``, else a config file's ``wire`` key; none
    (plain float32 tensors, as before) without either."""
    from dnntune.wire.codecs import parse_encodings

    if not 0.0 <= args.min_agreement <= 1.0:
        raise DnntuneError(f"--min-agreement must be from 0 to 1, got {args.min_agreement:g}")
    if args.wire:
        return tuple(e.name for e in parse_encodings(args.wire))
    if args.config and tuple(config.wire) != ("fp32",):
        return tuple(config.wire)
    return ()


def _measure_wire(args: argparse.Namespace, device: Any) -> Any:
    """The encodings measured on the device profile's model (photographs), or None."""
    if not args.wire_names:
        return None
    from dnntune.report.tables import progress_bar
    from dnntune.wire.codecs import parse_encodings
    from dnntune.wire.measure import measure_for_profiles, unmeasurable

    problem = unmeasurable(device.graph, None)
    if problem:
        raise DnntuneError(f"--wire: {problem}")
    with progress_bar("measuring wire encodings") as update:
        return measure_for_profiles(device, parse_encodings(args.wire_names), progress=update)


def _predict(device: Any, cloud: Any, links: Any, rpc: tuple[float, float],
             wire: Any = None, min_agreement: float = 0.99) -> Any:
    from dnntune.analysis.costs import CostOptions
    from dnntune.analysis.partition import Objective, analyze_profiles

    options = CostOptions(rpc_ms=rpc[0], rpc_ms_per_mb=rpc[1])
    return analyze_profiles(device, cloud, links, Objective("latency-first"), options,
                            wire=wire, min_agreement=min_agreement)


def _run_tbf(args: argparse.Namespace, config: Any, links: Any) -> Validation:
    """Heads in this process, the cloud server in a network namespace behind tc tbf."""
    from dnntune.cli.pipeline import (
        Access,
        Source,
        collect_profiles,
        local_cloud_server,
        side_access,
    )
    from dnntune.report.tables import progress_bar
    from dnntune.rpc.client import ProfilerClient, parse_address

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
        analysis = _predict(device, cloud, links, rpc[0])
        return _run(config, analysis, address, access["cloud"], args, ProfilerClient)


def _run(config: Any, analysis: Any, address: str, access: Any, args: argparse.Namespace,
         client_cls: Any) -> Validation:
    from dnntune.cli.pipeline import model_file, upload_model
    from dnntune.model.loading import load_model
    from dnntune.model.tf_graph import is_graph_spec
    from dnntune.report.tables import progress_bar
    from dnntune.validation.validate import validate_links

    shapes = [config.input_shape] if config.input_shape else None
    source, name = config.model, None
    if is_graph_spec(config.model):  # the very .pb the server is sent (a SavedModel frozen)
        source, name, _ = model_file(config)
    loaded = load_model(source, shapes, batch_size=config.batch_size, seed=config.seed,
                        name=name)
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
                                 cloud_threads=config.cloud.threads,
                                 model_file=model_file(config)[0])
    return Validation(loaded.name, args.num_runs, tuple(results))


def _write_and_print(args: argparse.Namespace, validation: Validation) -> None:
    from dnntune.validation.report import plot_validation, print_validation

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
    from dnntune.cli.store import record

    record(args, doc, "validation")  # after the files; a store failure is one stderr line
