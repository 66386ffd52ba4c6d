"""``dnntune profile``: per-layer latency and energy of a model on this machine."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from dnntune.cli import flags
from dnntune.cli.serve import add_client_flags
from dnntune.errors import DnntuneError

if TYPE_CHECKING:
    from dnntune.config import RunConfig
    from dnntune.profiling.profile import Profile
    from dnntune.profiling.profiler import ProfileSettings


def add_profile_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "profile", help="measure per-layer latency and energy in one compiled pass",
        description="Profile every layer of a model with timers compiled into the graph "
                    "(one pass, layers in sequence), plus the uninstrumented end-to-end time, "
                    "and attribute energy per layer. Flags override --config.")
    p.add_argument("--model", metavar="NAME|PATH",
                   help="a zoo model name, a Keras .keras/.h5 file or a TensorFlow graph "
                        "(.pb[?input=..&output=..], SavedModel folder) (or model.name in "
                        "--config)")
    p.add_argument("--config", metavar="FILE", help="a run configuration (YAML), see configs/")
    p.add_argument("--input-shape", metavar="DIMS",
                   help="input shape without the batch, e.g. 224,224,3 ('A;B' for several)")
    p.add_argument("--batch-size", type=flags.BATCH, metavar="N",
                   help="batch dimension (default: 1)")
    p.add_argument("--side", choices=["device", "cloud"], default="device",
                   help="which side this profile stands for (default: device)")
    p.add_argument("--num_runs", type=flags.RUNS, metavar="N",
                   help="timed runs after warm-up (default: 50)")
    p.add_argument("--warmup_runs", type=flags.WARMUP_RUNS, metavar="N",
                   help="untimed runs first (default: 5)")
    p.add_argument("--num_threads", type=flags.THREADS, metavar="N",
                   help="intra-op threads (default: 1 on the device side, 2 on the cloud side)")
    p.add_argument("--cpu_affinity", metavar="CORES",
                   help="comma-separated cores to pin to, e.g. 0,1")
    p.add_argument("--energy", metavar="METER",
                   help="auto|none|rapl|battery|ina3221|model:<profile> (default: auto on the "
                        "device side, none on the cloud side)")
    p.add_argument("--energy-seconds", type=float, default=2.0, metavar="S",
                   help="idle and active power windows (default: 2)")
    p.add_argument("--cloud", metavar="HOST:PORT",
                   help="with --side cloud: profile on this cloud server (default: locally)")
    p.add_argument("--device", metavar="HOST:PORT",
                   help="with --side device: profile on this device agent (default: locally)")
    p.add_argument("--emulate", metavar="PRESET",
                   help="with --side device: profile as the preset's emulated device (this "
                        "process under a calibrated cgroup CPU limit; scaled where no "
                        "cgroup can be written), see configs/devices")
    add_client_flags(p)
    p.add_argument("--out", metavar="FILE", help="write the profile JSON here")
    from dnntune.cli.store import add_recording_flags

    add_recording_flags(p)
    p.add_argument("--format", choices=["table", "json"], default="table")
    from dnntune.cli.litert import add_litert_profile_arguments

    add_litert_profile_arguments(p)
    p.set_defaults(handler=run_profile)


def resolve(args: argparse.Namespace) -> tuple[RunConfig, ProfileSettings]:
    """Merge --config with the flags (flags win) into a run config and profile settings."""
    from dnntune.config import RunConfig, SideConfig, load_config
    from dnntune.model.loading import parse_input_shape
    from dnntune.profiling.profiler import ProfileSettings

    if args.config:
        config = load_config(args.config)
    elif args.model:
        config = RunConfig(model=args.model)
    else:
        raise DnntuneError("profile needs --model NAME|PATH or --config FILE")
    side: SideConfig = getattr(config, args.side)
    shapes = parse_input_shape(args.input_shape) if args.input_shape else None
    config = RunConfig(
        model=args.model or config.model,
        input_shape=shapes[0] if shapes and len(shapes) == 1 else config.input_shape,
        batch_size=args.batch_size if args.batch_size is not None else config.batch_size,
        seed=config.seed, num_runs=config.num_runs, warmup_runs=config.warmup_runs,
        device=config.device, cloud=config.cloud)
    settings = ProfileSettings(
        side=args.side,
        num_runs=args.num_runs if args.num_runs is not None else config.num_runs,
        warmup_runs=args.warmup_runs if args.warmup_runs is not None else config.warmup_runs,
        num_threads=args.num_threads if args.num_threads is not None else side.threads,
        cpu_affinity=(parse_affinity(args.cpu_affinity) if args.cpu_affinity is not None
                      else side.cpu_affinity),
        energy=args.energy if args.energy is not None else side.energy,
        energy_seconds=args.energy_seconds)
    return config, settings


def parse_affinity(text: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise DnntuneError(f"--cpu_affinity {text!r}: expected comma-separated core "
                           "numbers, e.g. 0,1") from None


def run_profile(args: argparse.Namespace) -> int:
    from dnntune.cli.outputs import check_output_file

    if getattr(args, "framework", "tf") == "litert":
        from dnntune.cli.litert import run_litert_profile

        return run_litert_profile(args)
    config, settings = resolve(args)
    if args.out:  # before minutes of measuring, not after
        check_output_file(args.out, "--out")
    remote = args.cloud if settings.side == "cloud" else args.device
    other = args.device if settings.side == "cloud" else args.cloud
    if other:
        raise DnntuneError(f"--{'device' if settings.side == 'cloud' else 'cloud'} goes with "
                           f"--side {'device' if settings.side == 'cloud' else 'cloud'}")
    emulate = args.emulate if args.emulate not in (None, "none") else None
    if emulate and (remote or settings.side != "device"):
        raise DnntuneError("--emulate goes with --side device profiled here; a remote agent "
                           "emulates with 'dnntune agent --emulate PRESET'")
    if remote:
        return emit_profile(args, _profile_remotely(remote, config, settings, args))
    if emulate:
        return emit_profile(args, _profile_emulated(emulate, config, settings))
    for note in settings.validate():
        print(f"dnntune: warning: {note}", file=sys.stderr)
    # Threads must be set before TensorFlow runs its first op, i.e. before loading.
    from dnntune.profiling.instrument import configure_runtime

    configure_runtime(settings.num_threads, settings.cpu_affinity)
    from dnntune.profiling.energy import get_meter

    get_meter(settings.energy, threads=settings.num_threads)  # fail fast on a bad meter
    from dnntune.model.loading import load_model
    from dnntune.profiling.profiler import profile_model
    from dnntune.report.tables import progress_bar

    shapes = [config.input_shape] if config.input_shape else None
    loaded = load_model(config.model, shapes, batch_size=config.batch_size, seed=config.seed)
    with progress_bar(f"profiling {loaded.name} ({settings.side})") as update, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        profile = profile_model(loaded, settings, progress=update)
    for w in caught:
        if issubclass(w.category, UserWarning) and "dnntune" not in str(w.filename):
            continue
        print(f"dnntune: warning: {w.message}", file=sys.stderr)
    return emit_profile(args, profile)


def _profile_emulated(preset_name: str, config: RunConfig, settings: ProfileSettings
                      ) -> Profile:
    """This process as the preset's emulated device (or its timings scaled, with one
    line saying why); the cgroup is removed on the way out, also after SIGTERM."""
    import contextlib
    import dataclasses
    import signal

    from dnntune.cli.pipeline import cgroup_problem
    from dnntune.profiling.devices import load_emulation_preset, split_emulate
    from dnntune.profiling.emulation import (
        emulated_process,
        scale_profile,
        scaled_emulation,
        usable_threads,
    )
    from dnntune.profiling.instrument import configure_runtime

    preset = load_emulation_preset(preset_name)
    settings = dataclasses.replace(
        settings, num_threads=usable_threads(preset),
        energy=f"model:{preset.name}" if settings.energy == "auto" else settings.energy)
    if split_emulate(preset_name)[1] == "dilation":
        from dnntune.profiling.dilation import raise_priority

        raise_priority()  # before TensorFlow starts a thread: they inherit it
    configure_runtime(settings.num_threads, settings.cpu_affinity)
    if split_emulate(preset_name)[1] == "dilation":
        return _profile_dilated(preset_name, config, settings)
    problem = cgroup_problem()
    if problem:
        print(f"dnntune: note: cannot confine this process ({problem}): timings are this "
              f"machine's scaled to {preset.name} (scaled:{preset.name}), a what-if",
              file=sys.stderr)

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the cgroup's clean-up
    signal.signal(signal.SIGTERM, leave)
    with contextlib.ExitStack() as stack:
        if not problem:
            emulation = stack.enter_context(emulated_process(
                preset_name, "profile", lambda m: print(f"dnntune: {m}", file=sys.stderr)))
            print(f"dnntune: {emulation.describe()}", file=sys.stderr)
            settings = dataclasses.replace(settings, emulation=emulation.to_dict())
        profile = _profile_here(config, settings)
    return scale_profile(profile, scaled_emulation(preset_name, problem)) if problem \
        else profile


def _profile_dilated(preset_name: str, config: RunConfig, settings: ProfileSettings
                     ) -> Profile:
    """This process as the preset's phone by time dilation: calibrated, profiled natively
    and paced by the reference, dilated (a reference profile off by over ±10 % twice is
    refused)."""
    import dataclasses

    from dnntune.profiling.dilation import DilatedDevice

    device = DilatedDevice(preset_name, lambda m: print(f"dnntune: {m}", file=sys.stderr))
    print(f"dnntune: {device.calibrate().describe()}", file=sys.stderr)
    return device.profile(lambda emulation, pace: _profile_here(
        config, dataclasses.replace(settings, emulation=emulation.to_dict()), pace))


def _profile_here(config: RunConfig, settings: ProfileSettings,
                  pace: Callable[[], object] | None = None) -> Profile:
    from dnntune.model.loading import load_model
    from dnntune.profiling.profiler import profile_model
    from dnntune.report.tables import progress_bar

    shapes = [config.input_shape] if config.input_shape else None
    loaded = load_model(config.model, shapes, batch_size=config.batch_size, seed=config.seed)
    with progress_bar(f"profiling {loaded.name} ({settings.side})") as update:
        return profile_model(loaded, settings, progress=update, pace=pace)


def _profile_remotely(address: str, config: RunConfig, settings: ProfileSettings,
                      args: argparse.Namespace) -> Profile:
    import dataclasses

    from dnntune.cli.pipeline import Access, check_model_file, check_pem_certificate, profile_side
    from dnntune.report.tables import progress_bar
    from dnntune.rpc.client import parse_address
    from dnntune.rpc.serving import read_token

    settings.validate()
    side = dataclasses.replace(getattr(config, settings.side), energy=settings.energy)
    config = dataclasses.replace(config, num_runs=settings.num_runs,
                                 warmup_runs=settings.warmup_runs, **{settings.side: side})
    if args.tls_cert:
        check_pem_certificate(args.tls_cert, "--tls-cert")
    check_model_file(config.model)  # now, before connecting
    return profile_side(settings.side, parse_address(address, f"--{settings.side}"), config,
                        Access(read_token(args.token_file), args.tls_cert), progress_bar)


def emit_profile(args: argparse.Namespace, profile: Profile,
                 print_table: Callable[[Profile], None] | None = None) -> int:
    """Write ``--out``, then print the profile as JSON or a table (``print_table``)."""
    from dnntune.cli.outputs import rescue_file
    from dnntune.cli.store import record
    from dnntune.profiling.profile import save_profile
    from dnntune.report.tables import print_profile

    problem = None
    if args.out:
        try:
            path = save_profile(profile, args.out)
            print(f"profile written to {path}", file=sys.stderr)
        except OSError as exc:  # checked before measuring, but the disk may change since
            kept = rescue_file(json.dumps(profile.to_dict(), indent=1) + "\n",
                               "dnntune-profile", ".json")
            problem = (f"--out {args.out}: cannot be written ({exc.strerror}); the profile "
                       f"was saved to {kept} instead")
    if args.format == "json":
        json.dump(profile.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        (print_table or print_profile)(profile)
    record(args, profile.to_dict(), "profile")  # after the files; a failure is one line
    if problem:
        raise DnntuneError(problem)
    return 0
