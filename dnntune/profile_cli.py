"""``dnntune profile``: per-layer latency and energy of a model on this machine."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from dnntune.errors import DnntuneError


def add_profile_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from dnntune.cli import add_model_arguments

    p = sub.add_parser(
        "profile", help="measure per-layer latency and energy in one compiled pass",
        description="Profile every layer of a model with timers compiled into the graph "
                    "(one pass, layers in sequence), plus the uninstrumented end-to-end time, "
                    "and attribute energy per layer.")
    add_model_arguments(p)
    p.add_argument("--side", choices=["device", "cloud"], default="device",
                   help="which side this profile stands for (default: device)")
    p.add_argument("--num_runs", type=int, default=50, metavar="N",
                   help="timed runs after warm-up (default: 50)")
    p.add_argument("--warmup_runs", type=int, default=5, metavar="N",
                   help="untimed runs first (default: 5)")
    p.add_argument("--num_threads", type=int, default=1, metavar="N",
                   help="intra-op threads (default: 1)")
    p.add_argument("--cpu_affinity", metavar="CORES", default="",
                   help="comma-separated cores to pin to, e.g. 0,1")
    p.add_argument("--energy", default="auto", metavar="METER",
                   help="auto|none|rapl|battery|ina3221|model:<profile> (default: auto)")
    p.add_argument("--energy-seconds", type=float, default=2.0, metavar="S",
                   help="idle and active power windows (default: 2)")
    p.add_argument("--out", metavar="FILE", help="write the profile JSON here")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(handler=run_profile)


def parse_affinity(text: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise DnntuneError(f"--cpu_affinity {text!r}: expected comma-separated core "
                           "numbers, e.g. 0,1") from None


def run_profile(args: argparse.Namespace) -> int:
    from dnntune.profiler import ProfileSettings

    settings = ProfileSettings(side=args.side, num_runs=args.num_runs,
                               warmup_runs=args.warmup_runs, num_threads=args.num_threads,
                               cpu_affinity=parse_affinity(args.cpu_affinity),
                               energy=args.energy, energy_seconds=args.energy_seconds)
    for note in settings.validate():
        print(f"dnntune: warning: {note}", file=sys.stderr)
    # Threads must be set before TensorFlow runs its first op, i.e. before loading.
    from dnntune.instrument import configure_runtime

    configure_runtime(settings.num_threads, settings.cpu_affinity)
    from dnntune.energy import get_meter

    get_meter(settings.energy, threads=settings.num_threads)  # fail fast on a bad meter
    from dnntune.models import load_model, parse_input_shape
    from dnntune.profile import save_profile
    from dnntune.profiler import profile_model
    from dnntune.report import print_profile, progress_bar

    shapes = parse_input_shape(args.input_shape) if args.input_shape else None
    loaded = load_model(args.model, shapes, batch_size=args.batch_size)
    with progress_bar(f"profiling {loaded.name} ({settings.side})") as update, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        profile = profile_model(loaded, settings, progress=update)
    for w in caught:
        if issubclass(w.category, UserWarning) and "dnntune" not in str(w.filename):
            continue
        print(f"dnntune: warning: {w.message}", file=sys.stderr)
    if args.out:
        path = save_profile(profile, args.out)
        print(f"profile written to {path}", file=sys.stderr)
    if args.format == "json":
        json.dump(profile.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_profile(profile)
    return 0
