"""``dnntune study deployment``: the mobile-only deployment study, here or on a device
agent (``--device``). Wiring only; the logic is in :mod:`dnntune.study`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dnntune.cli import flags
from dnntune.cli.serve import add_client_flags
from dnntune.errors import DnntuneError

SYSFS_DEFAULT = "/sys/devices/system/cpu"


def add_deployment_study(studies: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = studies.add_parser(
        "deployment", help="mobile-only deployment: framework/precision x threads x CPU "
                           "affinity; latency, energy, memory and the best of each",
        description="Run each model mobile-only on this machine (or on a device agent with "
                    "--device) for every framework/precision, "
                    "thread count and CPU affinity (big, little, all from sysfs clusters; "
                    "core counts cores:K where there are none), each in a fresh pinned "
                    "process. Reports latency (mean/p90), energy (measured or estimated, "
                    "labelled), model file size and resident-memory growth, marks the best "
                    "configuration per objective, writes deployment.json/.csv/.png.")
    d.add_argument("--config", metavar="FILE", help="YAML with a 'deployment:' section "
                   "(models, frameworks, precisions, threads, affinities, num_runs, "
                   "warmup_runs, energy); flags override it")
    d.add_argument("--model", action="append", metavar="NAME[,NAME...]",
                   help="zoo models or model files (repeatable)")
    d.add_argument("--frameworks", help="subset of tf,litert (default: tf,litert)")
    d.add_argument("--precision", help="LiteRT precisions (default: fp32,int8)")
    d.add_argument("--threads", metavar="N[,N...]", help="thread counts (default: 1)")
    d.add_argument("--affinity", action="append", metavar="A[,A...]",
                   help="all, big, little, mid, cores:K (comma-separated), or a CPU list "
                        "such as 0-3,6 (repeatable); default: every cluster and all, or "
                        "core counts where there are no clusters")
    d.add_argument("--num_runs", type=flags.RUNS, metavar="N", help="timed runs (default: 10)")
    d.add_argument("--warmup_runs", type=flags.WARMUP_RUNS, metavar="N",
                   help="warm-up runs (default: 2)")
    d.add_argument("--rounds", type=flags.int_in(1, 100), metavar="N",
                   help="run the whole list of configurations N times in turn and pool "
                        "them, so passing load hits all alike (default: 1)")
    d.add_argument("--energy", metavar="SPEC", help="auto|none|rapl|battery|ina3221|"
                   "model:<profile> (default: auto)")
    d.add_argument("--sysfs", default=SYSFS_DEFAULT, metavar="DIR",
                   help=argparse.SUPPRESS)
    d.add_argument("--meter-root", default="/", metavar="DIR", help=argparse.SUPPRESS)
    d.add_argument("--device", metavar="HOST:PORT",
                   help="run the study on this device agent, on its CPUs and topology "
                        "(default: here)")
    add_client_flags(d)
    d.add_argument("--out", metavar="DIR",
                   help="write deployment.json, deployment.csv, deployment.png")
    d.add_argument("--format", choices=["table", "json"], default="table")
    from dnntune.cli.store import add_recording_flags

    add_recording_flags(d)
    d.set_defaults(handler=run_study_deployment)


def run_study_deployment(args: argparse.Namespace) -> int:
    from dnntune.study.deployment import best_configurations

    if args.out:
        from dnntune.cli.outputs import check_output_dir

        check_output_dir(args.out, "--out")
    if args.device:
        rows, notes, topology = _study_remotely(args)
    else:
        rows, notes, topology = _study_here(args)
    if args.out:
        from dnntune.study.deployment import write_deployment_study

        for path in write_deployment_study(rows, args.out, notes, topology):
            print(f"wrote {path}", file=sys.stderr)
    from dnntune.cli.store import record

    record(args, {"study": "deployment", "notes": notes, "best": best_configurations(rows),
                  "rows": [r.to_dict() for r in rows]}, "study")  # after the files
    if args.format == "json":
        json.dump({"notes": notes, "best": best_configurations(rows),
                   "rows": [r.to_dict() for r in rows]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    _print_deployment(rows)
    return 0


def _spec(args: argparse.Namespace) -> tuple[Any, bool]:
    """The study's spec from --config and the flags (flags win), and whether it names
    its affinities (else the studied machine's own are used)."""
    from dnntune.litert.convert import PRECISIONS
    from dnntune.litert.study import parse_list
    from dnntune.study.spec import FRAMEWORKS, StudySpec, load_study_spec

    overrides: dict[str, Any] = {
        "models": (tuple(m for item in args.model for m in item.split(",") if m)
                   if args.model else None),
        "frameworks": (parse_list(args.frameworks, FRAMEWORKS, "--frameworks")
                       if args.frameworks else None),
        "precisions": (parse_list(args.precision, PRECISIONS, "--precision")
                       if args.precision else None),
        "threads": _thread_list(args.threads) if args.threads else None,
        "affinities": _affinity_list(args.affinity) if args.affinity else None,
        "num_runs": args.num_runs, "warmup_runs": args.warmup_runs, "energy": args.energy,
        "rounds": args.rounds}
    if args.config:
        spec = load_study_spec(args.config, overrides)
    else:
        if not overrides["models"]:
            raise DnntuneError("study deployment: give --model or --config")
        spec = StudySpec(**{k: v for k, v in overrides.items() if v is not None})
    named = bool(overrides["affinities"]) or _config_names_affinities(args.config)
    return spec, named


def _check_models(models: Any, remote: bool) -> None:
    from dnntune.model.loading import known_models

    for model in models:
        if model in known_models():
            continue
        if remote and not model.endswith((".keras", ".h5", ".hdf5")):
            raise DnntuneError(f"model {model!r}: a device agent takes a zoo model or a "
                               f".keras/.h5 file; expected one of {', '.join(known_models())}")
        if not Path(model).is_file():
            raise DnntuneError(f"model {model!r}: expected a .keras/.h5 file or one of "
                               f"{', '.join(known_models())}")


def _study_here(args: argparse.Namespace) -> tuple[list[Any], list[str], str]:
    from dataclasses import replace

    from dnntune.profiling.topology import read_topology
    from dnntune.study.deployment import choose_energy, resolve_affinities, run_deployment_study

    topology = read_topology(args.sysfs)
    spec, named = _spec(args)
    if not named:
        spec = replace(spec, affinities=topology.default_affinities())
    resolve_affinities(spec.affinities, topology)  # one line, exit 2, before any model is built
    _check_models(spec.models, remote=False)
    notes = [f"CPU topology: {topology.describe()}"]
    if not topology.heterogeneous:
        notes.append("no big.LITTLE clusters here, so affinities are core counts")
    energy = choose_energy(spec.energy, topology, spec.energy_seconds, args.meter_root)
    notes += [f"energy: {energy.label} ({energy.note})", *energy.notes]
    for note in notes:
        print(note, file=sys.stderr)
    rows = run_deployment_study(spec, topology, energy, progress=_print_progress)
    return rows, notes, topology.describe()


def _study_remotely(args: argparse.Namespace) -> tuple[list[Any], list[str], str]:
    from dataclasses import replace

    from dnntune.cli.pipeline import Access, check_pem_certificate
    from dnntune.rpc.client import parse_address
    from dnntune.rpc.serving import read_token
    from dnntune.study.remote import study_on_agent

    if args.sysfs != SYSFS_DEFAULT or args.meter_root != "/":
        raise DnntuneError("--sysfs and --meter-root describe this machine; with --device "
                           "the agent reads its own")
    address = parse_address(args.device, "--device")
    spec, named = _spec(args)
    if not named:
        spec = replace(spec, affinities=())  # the agent's own default
    _check_models(spec.models, remote=True)
    if args.tls_cert:
        check_pem_certificate(args.tls_cert, "--tls-cert")
    access = Access(read_token(args.token_file), args.tls_cert)
    rows, notes, topology = study_on_agent(access.endpoint(address), spec, _print_progress)
    notes = [f"studied on the device agent at {address}", *notes]
    for note in notes:
        print(note, file=sys.stderr)
    return rows, notes, topology


def _print_progress(stage: str, done: int, total: int) -> None:
    if stage == "prepare":
        print("preparing the model (loading, converting)", file=sys.stderr)
    else:
        print(f"running {stage} ({done + 1}/{total})", file=sys.stderr)


def _config_names_affinities(config: str | None) -> bool:
    if not config:
        return False
    import yaml

    section = (yaml.safe_load(Path(config).read_text()) or {}).get("deployment", {})
    return "affinities" in section


def _affinity_list(values: list[str]) -> tuple[str, ...]:
    """Each --affinity is one spec, or comma-separated names (``big,little,all``); a CPU
    list such as ``0,2-3`` stays one spec."""
    out: list[str] = []
    for value in values:
        items = [x.strip() for x in value.split(",") if x.strip()]
        named = all(not x[0].isdigit() for x in items)
        out.extend(items if named else [value.strip()])
    return tuple(out)


def _thread_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise DnntuneError(f"--threads {text!r}: expected thread counts such as 1,2,4")
    return values


def _print_deployment(rows: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from dnntune.report.tables import sig3

    table = Table()
    for title in ("model", "framework", "prec", "threads", "affinity", "CPUs", "mean ms",
                  "p90 ms", "energy mJ", "file MB", "inference RSS MB", "peak RSS MB",
                  "best"):
        table.add_column(title, overflow="fold")
    for r in rows:
        table.add_row(r.model, r.framework, r.precision, str(r.threads), r.affinity, r.cpus,
                      sig3(r.mean_ms), sig3(r.p90_ms), sig3(r.energy_mj),
                      sig3(r.model_file_bytes / 1e6), sig3(r.inference_rss_growth_bytes / 1e6),
                      sig3(r.peak_rss_growth_bytes / 1e6), r.best or (r.note if not r.runs
                                                                      else ""))
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    label = rows[0].energy_label if rows else "none"
    print(f"energy per inference: {label}; peak RSS = the worker's growth from before the "
          "framework import to the peak of its inference loop")


