"""LiteRT commands: ``convert``, ``import-profile``, ``study frameworks`` and the
``profile --framework litert`` path. Wiring only; the logic is in the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dnntune.cli import flags
from dnntune.errors import DnntuneError


def add_convert_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "convert", help="convert a model to LiteRT (.tflite) with its op-to-layer map",
        description="Convert with TensorFlow's converter (int8: calibrated on generated "
                    "inputs), write model.tflite and layer_map.json (every LiteRT op's Keras "
                    "layers, every cut's existence in LiteRT) and print the adb commands "
                    "that profile it per op on an Android phone.")
    p.add_argument("--model", required=True, metavar="NAME|PATH",
                   help="a zoo model name or a Keras .keras/.h5 file")
    p.add_argument("--precision", default="fp32", help="fp32|fp16|int8 (default: fp32)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--phone-threads", type=int, default=4, metavar="N",
                   help="threads in the printed benchmark_model command (default: 4)")
    p.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from dnntune.cli.outputs import check_output_dir
    from dnntune.litert.convert import check_precision, convert_model, phone_commands
    from dnntune.model.loading import load_model

    check_precision(args.precision)
    check_output_dir(args.out, "--out")
    loaded = load_model(args.model)
    conversion = convert_model(loaded, args.precision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{loaded.name}_{args.precision}.tflite"
    (out / name).write_bytes(conversion.tflite)
    layer_map = conversion.layer_map
    (out / "layer_map.json").write_text(json.dumps(layer_map.to_dict(), indent=1) + "\n")
    fused = layer_map.fused_away
    print(f"{out / name}: {len(conversion.tflite):,} bytes, {len(layer_map.ops)} LiteRT ops "
          f"for {len(loaded.graph.layers)} Keras layers, converted in "
          f"{conversion.convert_s:.2f} s")
    print(f"cuts: {len(layer_map.surviving)} of {len(layer_map.cuts)} exist in LiteRT; "
          f"{len(fused)} fused away (listed in {out / 'layer_map.json'})")
    for status in fused[:5]:
        print(f"  cut {status.index} after {status.after}: {status.reason}")
    if len(fused) > 5:
        print(f"  ... and {len(fused) - 5} more")
    print("on an Android phone (benchmark_model from the LiteRT releases, android_aarch64):")
    for line in phone_commands(name, threads=args.phone_threads):
        print(f"  {line}")
    print(f"then: dnntune import-profile --format tflite-csv op_profile.csv --model {args.model}"
          f" --precision {args.precision} --out device.json")
    return 0


def add_import_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "import-profile", help="read a phone's LiteRT op profile into a device profile",
        description="Read benchmark_model --enable_op_profiling=true output (text, CSV or "
                    "proto), map its ops to Keras layers with the layer map and write a "
                    "device profile that analyze accepts (exactly the cuts LiteRT keeps).")
    p.add_argument("file", metavar="FILE", help="the op profile pulled from the phone")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help="tflite-stdout | tflite-csv | tflite-proto")
    p.add_argument("--model", required=True, metavar="NAME|PATH",
                   help="the model that was converted and profiled")
    p.add_argument("--precision", default="fp32", help="fp32|fp16|int8 (default: fp32)")
    p.add_argument("--energy", default="none", metavar="none|model:<profile>",
                   help="phone power model for energy estimates (default: none)")
    p.add_argument("--num-threads", type=int, default=0, metavar="N",
                   help="threads the phone ran with, for the record (default: 0, unknown)")
    p.add_argument("--out", required=True, metavar="FILE", help="device profile to write")
    from dnntune.cli.store import add_recording_flags

    add_recording_flags(p)
    p.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace) -> int:
    from dnntune.cli.outputs import check_output_file
    from dnntune.litert.convert import check_precision, convert_model
    from dnntune.litert.importer import op_profile_to_profile
    from dnntune.litert.ops import parse_op_profile
    from dnntune.model.loading import load_model
    from dnntune.profiling.profile import EnergyInfo, save_profile

    check_precision(args.precision)
    check_output_file(args.out, "--out")
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise DnntuneError(f"{args.file}: cannot read op profile ({exc.strerror})") from None
    rows = parse_op_profile(data, args.format, args.file)
    energy = None
    if args.energy != "none":
        from dnntune.profiling.energy import get_meter

        if not args.energy.startswith("model:"):
            raise DnntuneError(f"--energy {args.energy!r}: an imported profile can only be "
                               "estimated: none or model:<profile>")
        choice = get_meter(args.energy, threads=max(args.num_threads, 1))
        meter: Any = choice.meter
        energy = EnergyInfo(meter.label, meter.idle_power_mw, meter.active_power_mw,
                            choice.note)
    loaded = load_model(args.model)
    layer_map = convert_model(loaded, args.precision).layer_map
    profile = op_profile_to_profile(rows, loaded, layer_map, args.file, args.format, energy,
                                    args.num_threads)
    path = save_profile(profile, args.out)
    measured = profile.measured_cuts
    assert measured is not None
    print(f"{path}: {len(rows)} ops mapped to {loaded.name}'s layers; "
          f"{len(measured.cuts)} cuts (those LiteRT keeps); whole model "
          f"{profile.end_to_end.mean_ms:.3g} ms; {measured.source}")
    from dnntune.cli.store import record

    record(args, profile.to_dict(), "profile")  # after the file; a failure is one line
    return 0


def add_study_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("study", help="studies over the model zoo (frameworks, deployment)")
    studies = p.add_subparsers(dest="study", metavar="STUDY", parser_class=type(p))
    studies.required = True
    s = studies.add_parser(
        "frameworks", help="TensorFlow vs LiteRT fp32/fp16/int8: latency, size, memory, "
                           "agreement",
        description="Per model: latency (mean/p90), model size, RSS growth and output "
                    "agreement with fp32 TensorFlow, as a table, JSON, CSV and a plot.")
    s.add_argument("--model", required=True, action="append", metavar="NAME[,NAME...]",
                   help="zoo models or model files (repeatable)")
    s.add_argument("--frameworks", default="tf,litert", help="subset of tf,litert")
    s.add_argument("--precision", default="fp32,fp16,int8",
                   help="LiteRT precisions (default: fp32,fp16,int8)")
    s.add_argument("--num_runs", type=flags.RUNS, default=20, metavar="N")
    s.add_argument("--warmup_runs", type=flags.WARMUP_RUNS, default=3, metavar="N")
    s.add_argument("--num_threads", type=flags.THREADS, default=1, metavar="N")
    s.add_argument("--energy", default="auto", metavar="SPEC",
                   help="energy per inference: auto|none|rapl|battery|ina3221|model:<profile> "
                        "(default: auto, a meter if readable else the default power model)")
    s.add_argument("--out", metavar="DIR", help="write study.json, study.csv, study.png")
    s.add_argument("--format", choices=["table", "json"], default="table")
    from dnntune.cli.store import add_recording_flags

    add_recording_flags(s)
    s.set_defaults(handler=run_study_frameworks)
    from dnntune.cli.study import add_deployment_study

    add_deployment_study(studies)


def run_study_frameworks(args: argparse.Namespace) -> int:
    from dnntune.litert.convert import PRECISIONS
    from dnntune.litert.study import (
        FRAMEWORKS,
        parse_list,
        power_function,
        run_study,
        write_study,
    )

    frameworks = parse_list(args.frameworks, FRAMEWORKS, "--frameworks")
    precisions = parse_list(args.precision, PRECISIONS, "--precision")
    models = [m for item in args.model for m in item.split(",") if m]
    if args.num_runs < 1 or args.num_threads < 1:
        raise DnntuneError("--num_runs and --num_threads must be at least 1")
    if args.out:
        from dnntune.cli.outputs import check_output_dir

        check_output_dir(args.out, "--out")
    from dnntune.profiling.instrument import configure_runtime

    configure_runtime(args.num_threads)
    power = power_function(args.energy, args.num_threads)
    rows = run_study(models, frameworks, precisions, runs=args.num_runs,
                     warmup=args.warmup_runs, threads=args.num_threads, power=power)
    if args.out:
        for path in write_study(rows, args.out):
            print(f"wrote {path}", file=sys.stderr)
    from dnntune.cli.store import record

    record(args, {"rows": [r.to_dict() for r in rows]}, "study")  # after the files
    if args.format == "json":
        json.dump({"rows": [r.to_dict() for r in rows]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    _print_study(rows)
    return 0


def _print_study(rows: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from dnntune.litert.study import study_frame
    from dnntune.report.tables import sig3

    frame = study_frame(rows)
    table = Table()
    for title in ("model", "framework", "precision", "mean ms", "p90 ms", "x vs TF",
                  "energy mJ", "size MB", "loaded MB", "RSS growth MB", "inference RSS MB",
                  "max |diff|", "top-1 agree", "note"):
        table.add_column(title, overflow="fold")
    for r in frame.itertuples():
        table.add_row(r.model, r.framework, r.precision, sig3(r.mean_ms), sig3(r.p90_ms),
                      sig3(r.speedup_vs_tf), sig3(r.energy_mj), sig3(r.model_bytes / 1e6),
                      sig3(r.loaded_bytes / 1e6), sig3(r.rss_growth_bytes / 1e6),
                      sig3(r.inference_rss_growth_bytes / 1e6), sig3(r.max_abs_diff),
                      sig3(r.top1_agreement), r.note if r.framework != "litert" or
                      r.mean_ms != r.mean_ms else "")
    Console(width=None if sys.stdout.isatty() else 180).print(table)
    labels = sorted(set(frame.energy_label))
    print(f"energy per inference: {', '.join(labels)}")


def add_litert_profile_arguments(p: argparse.ArgumentParser) -> None:
    """``profile --framework litert`` options (added to the profile command)."""
    p.add_argument("--framework", choices=["tf", "litert"], default="tf",
                   help="tf: per-layer timers in one TensorFlow pass (default); litert: the "
                        "head latency of each chosen cut in LiteRT (device side only)")
    p.add_argument("--precision", default="fp32", help="with --framework litert: fp32|fp16|int8")
    p.add_argument("--cuts", default="spread:8", metavar="all|spread:K|N,M,...",
                   help="with --framework litert: which cuts to time (default: spread:8); "
                        "with --device, the agent converts and times them")


def run_litert_profile(args: argparse.Namespace) -> int:
    """``dnntune profile --framework litert``: head latencies at the chosen cuts."""
    from dnntune.cli.profile import resolve
    from dnntune.litert.convert import check_precision
    from dnntune.litert.profile import LiteRTSettings, profile_litert

    if args.side != "device" or args.cloud:
        raise DnntuneError("--framework litert profiles the device side (here, or on a "
                           "device agent with --device); profile the cloud side with "
                           "--framework tf")
    check_precision(args.precision)
    config, settings = resolve(args)
    if args.out:  # before minutes of measuring, not after
        from dnntune.cli.outputs import check_output_file

        check_output_file(args.out, "--out")
    from dnntune.cli.profile import emit_profile

    if args.device:  # the agent converts and times the heads (dilated if it emulates)
        from dnntune.cli.litert_remote import run_remote_litert_profile

        return emit_profile(args, run_remote_litert_profile(args, config, settings),
                            print_measured_cuts)
    from dnntune.profiling.instrument import configure_runtime

    configure_runtime(settings.num_threads, settings.cpu_affinity)
    from dnntune.model.loading import load_model
    from dnntune.report.tables import progress_bar

    shapes = [config.input_shape] if config.input_shape else None
    loaded = load_model(config.model, shapes, batch_size=config.batch_size, seed=config.seed)
    lite = LiteRTSettings(precision=args.precision, cuts=args.cuts,
                          num_threads=settings.num_threads, warmup_runs=settings.warmup_runs,
                          num_runs=settings.num_runs, energy=settings.energy,
                          energy_seconds=settings.energy_seconds)
    with progress_bar(f"LiteRT heads of {loaded.name}") as update:
        profile = profile_litert(loaded, lite, progress=update)
    return emit_profile(args, profile, print_measured_cuts)


def print_measured_cuts(profile: Any) -> None:
    """The head latency per measured cut, as a table."""
    from rich.console import Console
    from rich.table import Table

    from dnntune.report.tables import sig3

    measured = profile.measured_cuts
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"[bold]{profile.meta.model_name}[/bold] on {measured.framework}: head "
                  f"latency at {len(measured.cuts)} cuts ({measured.source}); energy "
                  f"{profile.energy.label}")
    table = Table()
    for title in ("cut", "after", "mean ms", "p50 ms", "p90 ms", "std ms", "runs"):
        table.add_column(title)
    for c in measured.cuts:
        h = c.head
        table.add_row(str(c.index), c.after or "(input)", sig3(h.mean_ms), sig3(h.p50_ms),
                      sig3(h.p90_ms), sig3(h.std_ms), str(h.n))
    console.print(table)
