"""``dnntune analyze`` on saved profiles: argument registration and the run function.

Exit codes: 0 when at least one link has a feasible cut; 2 for bad input (the CLI
prints ``dnntune: error: <one line>``), including a deadline or energy budget that no
cut meets on any link. In that last case the full report (table or JSON, with
``"feasible": false`` and a message per link) is still printed to stdout first. A link
on which nothing is feasible while another link works is reported, with exit code 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from typing import Any

from dnntune.analysis.costs import CostOptions
from dnntune.analysis.links import (
    DEFAULT_LINKS,
    DEFAULT_TRACE_BASE,
    check_in_range,
    preset_links,
    resolve_links,
)
from dnntune.analysis.partition import (
    OBJECTIVES,
    Analysis,
    Objective,
    analyze_profiles,
)
from dnntune.analysis.sensitivity import add_robustness, add_sensitivity
from dnntune.cli import flags
from dnntune.cli.outputs import check_output_dir
from dnntune.errors import DnntuneError, describe_error
from dnntune.report.recommendation import print_report


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``analyze`` options on ``parser``."""
    parser.add_argument("--device", metavar="FILE.json|store:ID|HOST:PORT",
                        help="a saved device profile (a file, or store:ID from the store), "
                             "or a device agent to profile on (default: an agent in this "
                             "process)")
    parser.add_argument("--cloud", metavar="FILE.json|store:ID|HOST:PORT",
                        help="a saved cloud profile (a file or store:ID), or a cloud server "
                             "to profile on (default: a server started on a free loopback "
                             "port)")
    parser.add_argument("--config", metavar="FILE",
                        help="run configuration (default: configs/default.yaml, MobileNetV2)")
    parser.add_argument("--model", metavar="NAME|PATH", help="override the config's model")
    parser.add_argument("--input-shape", metavar="DIMS",
                        help="input shape without the batch, e.g. 224,224,3, for a model "
                             "saved without one (overrides the config's model.input_shape)")
    parser.add_argument("--allow-side-mismatch", action="store_true",
                        help="accept a cloud-side profile as --device (or a device-side one "
                             "as --cloud), e.g. to compare two machines")
    parser.add_argument("--num_runs", type=flags.RUNS, metavar="N",
                        help="override profiling runs")
    parser.add_argument("--warmup_runs", type=flags.WARMUP_RUNS, metavar="N",
                        help="override warm-up runs")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: ./dnntune-runs/<model>-<UTC time>/)")
    parser.add_argument("--emulate", metavar="PRESET|none",
                        help="device preset to emulate (configs/devices) or none for this "
                             "machine as it is (default: the config's "
                             "processing.device.emulate)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    from dnntune.cli.pipeline import add_access_flags

    add_access_flags(parser)
    parser.add_argument(
        "--links", action="append", metavar="LINK[,LINK...]",
        help=f"presets ({', '.join(preset_links())}), YAML links files, or uplink trace "
             f"files (Mahimahi or 'seconds Mbit/s'; FILE@3g takes downlink, RTT and radio "
             f"power from a preset, default {DEFAULT_TRACE_BASE}); repeatable; "
             f"default: {','.join(DEFAULT_LINKS)}")
    parser.add_argument("--objective", choices=OBJECTIVES, default=None,
                        help="what to minimise (default: energy-first with --deadline-ms "
                             "alone, else latency-first)")
    parser.add_argument("--deadline-ms", type=float, metavar="X",
                        help="only cuts with latency <= X ms")
    parser.add_argument("--energy-budget-mj", type=float, metavar="X",
                        help="only cuts with phone energy <= X mJ")
    parser.add_argument("--radio", choices=("warm", "cold"), default=None,
                        help="radio state before an inference: warm (default: already "
                             "connected, no promotion or tail) or cold (one inference after "
                             "idle: full promotion and tail); see docs/energy.md")
    parser.add_argument("--inference-rate", type=float, metavar="R",
                        help="inferences per second: the periodic radio mode, promotion and "
                             "tail amortised (instead of --radio)")
    parser.add_argument("--idle-wait", action="store_true",
                        help="count the rest of the phone (its idle power) over the whole "
                             "inference, for every cut (default: for none)")
    parser.add_argument("--device-speedup", type=float, default=1.0, metavar="K",
                        help="what-if: device compute K times faster (default 1)")
    parser.add_argument("--cloud-speedup", type=float, default=1.0, metavar="K",
                        help="what-if: cloud compute K times faster (default 1)")
    parser.add_argument("--sensitivity", action="store_true",
                        help="add uplink breakpoints (0.05-1000 Mbit/s) and what-if rows")
    parser.add_argument("--rpc-ms", type=float, metavar="MS",
                        help="framework cost of one remote call (default: measured on the "
                             "cloud connection when profiling, else 0)")
    parser.add_argument("--rpc-ms-per-mb", type=float, metavar="MS",
                        help="serialisation cost per MB sent or received (same default)")
    parser.add_argument("--no-call-overhead", action="store_true",
                        help="leave out the per-call framework overheads the profiles "
                             "measured (head and tail graph calls)")
    parser.add_argument("--strict-ranges", action="store_true",
                        help="refuse a link whose throughput lies outside its radio power "
                             "fit's range (default: hold power at the range end, labelled)")
    parser.add_argument("--no-dag", action="store_true",
                        help="skip the DAG-optimal (min-cut) partitions")
    parser.add_argument("--trace-starts", type=flags.int_in(1, 100_000), default=200, metavar="N",
                        help="start times sampled per trace period (default 200)")
    parser.add_argument("--wire", action="append", metavar="ENC[,ENC...]",
                        help="encodings of what crosses a cut, each cut tried with each: "
                             "fp32, fp16, int8, int8c (per channel), and for the input image "
                             "uint8, png, jpeg<Q>; any with +zstd (default: the config's "
                             "'wire'; the built-in run: fp32,uint8,jpeg90,fp16,int8; saved "
                             "profiles: fp32 as profiled). See docs/wire.md")
    parser.add_argument("--samples", metavar="DIR",
                        help="inputs to measure encodings on: JPEG/PNG images or .npy arrays "
                             "(default: photographs shipped with matplotlib and scikit-image)")
    parser.add_argument("--min-agreement", type=float, default=0.99, metavar="X",
                        help="exclude (cut, encoding) pairs whose top-1 agrees with the "
                             "float32 model on fewer than this share of samples (default 0.99)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="terminal table (default) or JSON on stdout")
    from dnntune.cli.store import add_recording_flags

    add_recording_flags(parser)  # --store also says where store:ID profiles are read
    parser.epilog = ("exit status: 0 on success; 2 on bad input or when no cut meets the "
                     "deadline/budget on any link (the report is printed first)")


def run_analyze(args: argparse.Namespace) -> int:
    """Run ``dnntune analyze``; returns the exit code, raises DnntuneError on bad input."""
    if args.trace_starts < 1:
        raise DnntuneError(f"--trace-starts must be >= 1, got {args.trace_starts}")
    check_wire_flags(args)
    from dnntune.cli.store import is_stored, load_saved_profile

    saved = all(x and (x.endswith(".json") or is_stored(x)) for x in (args.device, args.cloud))
    if (is_stored(args.device) or is_stored(args.cloud)) and (
            not saved or args.config or args.model):
        raise DnntuneError("store:ID profiles are analysed as saved: give both --device and "
                           "--cloud as FILE.json or store:ID, without --config/--model")
    if args.out:
        from dnntune.report.runs import check_run_target

        check_run_target(check_output_dir(args.out, "--out"), "--out")
    if saved and not (args.config or args.model):
        device = load_saved_profile(args.device, "--device", args.store)
        cloud = load_saved_profile(args.cloud, "--cloud", args.store)
        analysis = _analyze(args, device, cloud, args.objective, args.links,
                            wire=_wire_names(args.wire))
        if args.out:
            from dnntune.report.runs import write_run

            write_run(args.out, device, cloud, analysis, plots=not args.no_plots)
        return _emit(args, analysis, (device, cloud))
    return _run_whole_job(args)


def check_wire_flags(args: argparse.Namespace) -> None:
    """Bad ``--wire`` names, ``--samples`` folders and ``--min-agreement``: before any work."""
    from dnntune.wire.codecs import parse_encodings
    from dnntune.wire.samples import sample_files

    if args.wire:
        parse_encodings(args.wire)
    if args.samples:
        sample_files(args.samples)
    if not 0.0 <= args.min_agreement <= 1.0:
        raise DnntuneError(f"--min-agreement must be from 0 to 1, got {args.min_agreement:g}")


def _wire_names(items: list[str] | None) -> tuple[str, ...]:
    from dnntune.wire.codecs import parse_encodings

    return tuple(e.name for e in parse_encodings(items)) if items else ("fp32",)


def _measure_wire(args: argparse.Namespace, device: Any, names: tuple[str, ...],
                  model: str | None = None, seed: int | None = None) -> Any:
    """Measured encodings for ``device``'s model, or None for float32 as profiled.

    Encodings from a config (not ``--wire``) that cannot be measured on this model (no
    image input and no ``--samples``, a non-float input, several inputs) fall back to
    float32 with a note; asked for with ``--wire``, that is an error.
    """
    if (names == ("fp32",) and not args.samples) or (
            device.measured_cuts is not None and not args.wire):
        return None  # float32 as profiled (a LiteRT per-cut profile: sizes as profiled)
    from dnntune.cli.pipeline import graph_wire_problem
    from dnntune.report.tables import progress_bar
    from dnntune.wire.codecs import parse_encodings
    from dnntune.wire.measure import measure_for_profiles, unmeasurable

    problem = (graph_wire_problem(model) if model else None) or unmeasurable(device.graph,
                                                                             args.samples)
    if problem and args.wire:
        raise DnntuneError(f"--wire: {problem}")
    if problem:
        print(f"dnntune: note: every crossing tensor sent as float32: {problem}",
              file=sys.stderr)
        return None

    with progress_bar("measuring wire encodings") as update:
        return measure_for_profiles(device, parse_encodings(names), model=model, seed=seed,
                                    samples_dir=args.samples, progress=update)


def _analyze(args: argparse.Namespace, device: Any, cloud: Any, objective_name: str | None,
             link_items: Any, rpc: tuple[float, float] = (0.0, 0.0),
             wire: tuple[str, ...] = ("fp32",), model: str | None = None,
             seed: int | None = None) -> Analysis:
    check_sides(device, cloud, args.allow_side_mismatch)
    objective = Objective.from_options(objective_name, args.deadline_ms, args.energy_budget_mj)
    calls = 0.0 if args.no_call_overhead else None
    options = CostOptions(idle_wait=args.idle_wait, inference_rate_hz=args.inference_rate,
                          radio=getattr(args, "radio", None) or "warm",
                          trace_starts=args.trace_starts, device_call_ms=calls,
                          cloud_call_ms=calls,
                          rpc_ms=args.rpc_ms if args.rpc_ms is not None else rpc[0],
                          rpc_ms_per_mb=(args.rpc_ms_per_mb if args.rpc_ms_per_mb is not None
                                         else rpc[1]))
    links = resolve_links(link_items)
    if getattr(args, "strict_ranges", False):
        for link in links:
            check_in_range(link)
    measured = _measure_wire(args, device, wire, model, seed)
    analysis = analyze_profiles(device, cloud, links, objective, options, dag=not args.no_dag,
                                device_speedup=args.device_speedup,
                                cloud_speedup=args.cloud_speedup, wire=measured,
                                min_agreement=args.min_agreement)
    analysis = add_robustness(analysis)
    return add_sensitivity(analysis) if args.sensitivity else analysis


def check_sides(device: Any, cloud: Any, allow: bool) -> None:
    """Each profile was measured on the side its flag says, unless ``allow``."""
    for flag, profile, want in (("--device", device, "device"), ("--cloud", cloud, "cloud")):
        side = profile.meta.side
        if side != want and not allow:
            raise DnntuneError(f"{flag}: the profile of {profile.meta.model_name} was measured on "
                               f"the {side} side, not the {want} side; pass the profiles "
                               "the other way round, or --allow-side-mismatch to use it "
                               "as it is")


def _emit(args: argparse.Namespace, analysis: Analysis, profiles: tuple[Any, Any]) -> int:
    from dnntune.cli.store import record

    # after the files; never fails a run (the profiles are stored too, once each)
    record(args, analysis.to_dict(), "analysis", [p.to_dict() for p in profiles])
    if args.format == "json":
        sys.stdout.write(json.dumps(analysis.to_dict(), indent=1, allow_nan=False) + "\n")
    else:
        print_report(analysis)
    problem = analysis.infeasible_message()
    if problem:
        raise DnntuneError(problem)
    return 0


def _run_whole_job(args: argparse.Namespace) -> int:
    """Profile both sides (local, remote or saved), analyze, write the run folder."""
    from pathlib import Path

    from rich.console import Console

    from dnntune.cli.pipeline import Source, collect_profiles, model_file, side_access
    from dnntune.config import config_links, default_config, load_config, with_overrides
    from dnntune.model.loading import MODEL_SUFFIXES
    from dnntune.report.runs import (
        check_run_target,
        default_run_dir,
        save_partial_profile,
        staging_dir,
        write_run,
    )
    from dnntune.report.tables import progress_bar

    config = load_config(args.config) if args.config else default_config()
    config = with_overrides(config, args.model, args.num_runs, args.warmup_runs,
                            args.emulate)
    if args.input_shape:
        from dnntune.model.loading import parse_input_shape

        shapes = parse_input_shape(args.input_shape)
        if len(shapes) != 1:
            raise DnntuneError(f"--input-shape {args.input_shape!r}: analyze takes one input "
                               f"shape (model.input_shape), got {len(shapes)}")
        config = dataclasses.replace(config, input_shape=shapes[0])
    if args.emulate not in (None, "none") and args.device:
        raise DnntuneError("--emulate goes with a device agent this command starts; a "
                           "remote agent emulates with 'dnntune agent --emulate PRESET'")
    if config.num_runs < 1:
        raise DnntuneError(f"--num_runs must be at least 1, got {config.num_runs}")
    link_items = args.links or [",".join(config.links)]
    config_links(config, args.links)  # a bad link fails now, before minutes of profiling
    device_src = Source.parse(args.device, "--device")
    cloud_src = Source.parse(args.cloud, "--cloud")
    if not device_src.kind == cloud_src.kind == "file":  # a side profiles the model
        from dnntune.cli.pipeline import check_model_file

        check_model_file(config.model)  # a missing file, a graph's bad name: said first
    access = side_access(args)
    model_path = Path(config.model.split("?", 1)[0])  # a graph: FILE.pb?input=..
    name = (model_path.resolve().name if model_path.is_dir()  # a SavedModel folder
            else model_path.stem if model_path.suffix in (*MODEL_SUFFIXES, ".pb")
            else config.model)
    out = check_output_dir(args.out, "--out") if args.out else default_run_dir(name)
    check_run_target(out, "--out")
    # The run is written into a staging folder beside --out and moved in place whole at
    # the end; profiles are kept there as soon as each is measured.
    stage = staging_dir(out)
    written: list[str] = []

    def keep(side: str, profile: Any) -> None:
        written.append(str(save_partial_profile(stage, profile, side)))
    rpc: list[tuple[float, float]] = []
    try:
        device, cloud = collect_profiles(config, device_src, cloud_src, access, out,
                                         progress_bar, keep, rpc.append)
        analysis = _analyze(args, device, cloud, args.objective or config.objective,
                            link_items, rpc[0] if rpc else (0.0, 0.0),
                            wire=_wire_names(args.wire) if args.wire else config.wire,
                            model=model_file(config)[0], seed=config.seed)
        files = write_run(out, device, cloud, analysis, plots=not args.no_plots,
                          staging=stage)
    except (DnntuneError, OSError) as exc:
        if not written:
            shutil.rmtree(stage, ignore_errors=True)
        kept = f" (kept what was measured: {', '.join(written)})" if written else ""
        raise DnntuneError(f"{describe_error(exc)}{kept}") from None
    code = _emit(args, analysis, (device, cloud))
    Console(stderr=args.format == "json").print(
        f"results in {files.directory}: device.json, cloud.json, analysis.json, cuts.csv"
        + (f" and {len(files.plots)} plots in plots/" if files.plots else ""))
    return code
