"""``dnntune export`` (a bundle from an analysis) and ``dnntune run`` (inferences as an app)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dnntune.cli.flags import THREADS, int_in
from dnntune.errors import DnntuneError


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export", help="write a deployment bundle: LiteRT heads, the cloud model, a policy",
        description="From an analysis folder (dnntune analyze --out DIR): the phone half of "
                    "every cut the run-time policy can choose as a LiteRT model, the cloud "
                    "model for the server's RunTail, manifest.json (hashes, tensors, "
                    "predictions) and policy.json (best cut per uplink x RTT). See "
                    "docs/deploy.md.")
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?",
                   help="an analysis folder with device.json, cloud.json and analysis.json")
    p.add_argument("--config", metavar="FILE",
                   help="instead of RUN_DIR: run 'dnntune analyze --config FILE' first, into "
                        "the folder <out>-analysis, and export from it")
    p.add_argument("--out", required=True, metavar="DIR", help="the bundle folder (new)")
    p.add_argument("--model", metavar="M",
                   help="the model file profiled (default: the zoo model the profile names)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                   help="LiteRT precision of the phone halves (default fp32)")
    p.add_argument("--objective", choices=("latency-first", "energy-first"),
                   help="the recommended cut's objective (default: the analysis's)")
    p.add_argument("--policy-link", default=None, metavar="PRESET",
                   help="the preset whose downlink and radio power the policy assumes "
                        "(default: the analysis's first preset link, else 4g)")
    p.add_argument("--links", metavar="L,L", default=None,
                   help="presets to predict each cut on (default: the analysis's)")
    p.add_argument("--radio", choices=("warm", "cold"), default=None,
                   help="radio mode of the energy figures (default: the analysis's)")
    p.add_argument("--hysteresis", type=float, default=0.25, metavar="H",
                   help="relative bandwidth margin before the runner leaves a cut (0.25)")
    p.set_defaults(handler=run_export)

    r = sub.add_parser(
        "run", help="run inferences through a bundle: head on the phone, tail on the server",
        description="Run each input as an app would: the policy's cut for the uplink and "
                    "RTT measured from its own transfers, the head in LiteRT, the tail on "
                    "the server; the whole model on the phone when the server is "
                    "unreachable, refuses or would miss --deadline-ms. One JSON line per "
                    "inference with --format jsonl.")
    r.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="images (.jpg/.png, resized to the model's input) or .npy arrays")
    r.add_argument("--bundle", required=True, metavar="DIR", help="from dnntune export")
    r.add_argument("--cloud", metavar="HOST:PORT",
                   help="the cloud server (without it every inference runs on the phone)")
    r.add_argument("--objective", choices=("latency-first", "energy-first"),
                   default="latency-first")
    r.add_argument("--deadline-ms", type=float, default=None, metavar="MS")
    r.add_argument("--generated", type=int_in(0, 100_000), default=0,
                   metavar="N", help="also run N generated inputs (after INPUT files)")
    r.add_argument("--threads", type=THREADS, default=1)
    r.add_argument("--emulate-ms", type=float, default=None, metavar="MS",
                   help="emulate a phone whose whole model takes MS (time dilation)")
    r.add_argument("--format", choices=("table", "jsonl"), default="table")
    r.add_argument("--token-file", metavar="F", help="send the bearer token in F")
    r.add_argument("--tls-cert", metavar="F", help="trust this PEM certificate and talk TLS")
    r.set_defaults(handler=run_run)


def run_export(args: argparse.Namespace) -> int:
    from rich.console import Console

    from dnntune.analysis.costs import CostOptions
    from dnntune.analysis.links import preset_links, resolve_links
    from dnntune.analysis.partition import Objective
    from dnntune.deploy.export import export_bundle
    from dnntune.model.loading import load_model
    from dnntune.profiling.profile import load_profile

    if (args.run_dir is None) == (args.config is None):
        raise DnntuneError("give an analysis folder (RUN_DIR) or --config FILE, one of them")
    run = Path(args.run_dir) if args.run_dir else _analyze_first(args.config, args.out)
    for name in ("device.json", "cloud.json", "analysis.json"):
        if not (run / name).is_file():
            raise DnntuneError(f"{run}: no {name}; give a folder written by "
                               "'dnntune analyze --out DIR'")
    device = load_profile(run / "device.json")
    cloud = load_profile(run / "cloud.json")
    try:
        doc = json.loads((run / "analysis.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DnntuneError(f"{run / 'analysis.json'}: cannot read ({exc})") from None
    presets = preset_links()
    analysed = [link["name"] for link in doc.get("links", []) if link.get("name") in presets]
    links = resolve_links([args.links] if args.links else [",".join(analysed or ["3g,4g,wifi"])])
    policy_name = args.policy_link or (analysed[0] if analysed else "4g")
    if policy_name not in presets:
        raise DnntuneError(f"--policy-link {policy_name!r}: expected one of "
                           f"{', '.join(sorted(presets))}")
    opts = doc.get("options", {})
    options = CostOptions(idle_wait=bool(opts.get("idle_wait", False)),
                          radio=args.radio or opts.get("radio") or "warm",
                          inference_rate_hz=opts.get("inference_rate_hz"),
                          device_call_ms=opts.get("device_call_ms"),
                          cloud_call_ms=opts.get("cloud_call_ms"),
                          rpc_ms=float(opts.get("rpc_ms") or 0.0),
                          rpc_ms_per_mb=float(opts.get("rpc_ms_per_mb") or 0.0))
    objective = Objective(args.objective or doc.get("objective") or "latency-first")
    if not 0 <= args.hysteresis < 1:
        raise DnntuneError(f"--hysteresis must be in [0, 1), got {args.hysteresis}")
    meta = device.meta
    spec = args.model or meta.model_name
    loaded = load_model(spec, list(meta.input_shapes) if not args.model else None,
                        batch_size=meta.batch_size, seed=meta.seed)
    console = Console(stderr=True)
    manifest = export_bundle(loaded, device, cloud, args.out, precision=args.precision,
                             policy_link=presets[policy_name], links=links,
                             objective=objective, options=options,
                             hysteresis=args.hysteresis,
                             progress=lambda text: console.print(f"export: {text}"))
    rec = manifest.recommended
    print(f"bundle {args.out}: {len(manifest.cuts)} cuts "
          f"({', '.join(str(c.index) for c in manifest.cuts)}), {manifest.precision} heads; "
          f"recommended {rec['objective']} on {rec['link']}: cut {rec['index']} "
          f"(after {manifest.cut(rec['index']).after or 'nothing: cloud-only'})")
    for cut in manifest.cuts:
        print(f"  cut {cut.index:>4} {cut.after or 'cloud-only'!s:<28} "
              f"max |head+tail - model| {cut.max_abs_error:.2e}")
    return 0


def _analyze_first(config: str, out: str) -> Path:
    """``dnntune analyze --config FILE --out <out>-analysis``, as the user would run it."""
    from dnntune.cli.analyze import add_analyze_arguments, run_analyze

    run = Path(f"{str(out).rstrip('/')}-analysis")
    parser = argparse.ArgumentParser(prog="dnntune analyze")
    add_analyze_arguments(parser)
    code = run_analyze(parser.parse_args(["--config", config, "--out", str(run)]))
    if code != 0:
        raise DnntuneError(f"--config {config}: the analysis failed (exit code {code})")
    return run


def run_run(args: argparse.Namespace) -> int:
    from dnntune.deploy.bundle import load_bundle
    from dnntune.report.tables import progress_bar
    from dnntune.rpc.client import Endpoint, parse_address
    from dnntune.rpc.serving import read_token
    from dnntune.runtime import SplitRunner

    bundle = load_bundle(args.bundle)
    inputs = _inputs(args, bundle.manifest.model)
    if not inputs:
        raise DnntuneError("no inputs: give INPUT files or --generated N")
    endpoint = None
    if args.cloud:
        endpoint = Endpoint(parse_address(args.cloud, "--cloud"),
                            token=read_token(args.token_file), tls_cert=args.tls_cert,
                            connect_timeout_s=2.0)
    runner = SplitRunner(bundle, endpoint, args.objective, args.deadline_ms, args.threads,
                         args.emulate_ms)
    results = []
    try:
        with progress_bar("run") as update:
            for k, (name, x) in enumerate(inputs):
                result = runner.infer(x)
                results.append(result)
                if args.format == "jsonl":
                    sys.stdout.write(json.dumps({"input": name, **result.to_dict()}) + "\n")
                    sys.stdout.flush()
                update("inferences", k + 1, len(inputs))
    finally:
        runner.close()
    if args.format == "table":
        _print_table(inputs, results)
    return 0


def _inputs(args: argparse.Namespace, model: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    import numpy as np

    from dnntune.model.loading import generate_inputs
    from dnntune.wire.samples import PREPROCESSING, fit_image, preprocess

    specs = [(tuple(i["shape"]), str(i["dtype"])) for i in model["inputs"]]
    out: list[tuple[str, list[Any]]] = []
    for text in args.inputs:
        path = Path(text)
        if len(specs) != 1:
            raise DnntuneError(f"{text}: input files need a model with one input")
        shape, dtype = specs[0]
        if not path.is_file():
            raise DnntuneError(f"{text}: no such file")
        if path.suffix.lower() == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DnntuneError(f"{text}: cannot read as .npy ({exc})") from None
            if array.shape == shape[1:]:
                array = array[np.newaxis]
            if array.shape != shape:
                raise DnntuneError(f"{text}: shape {list(array.shape)}, the model takes "
                                   f"{list(shape)}")
        elif len(shape) == 4 and shape[-1] in (1, 3):
            pixels = fit_image(path, shape[1], shape[2], shape[3])
            array = preprocess(pixels, PREPROCESSING.get(model["name"], "identity"))[np.newaxis]
        else:
            raise DnntuneError(f"{text}: an image, but the model's input is {list(shape)}")
        out.append((path.name, [array.astype(dtype)]))
    for k in range(args.generated):
        out.append((f"generated-{k}", generate_inputs([s for s, _ in specs],
                                                      [d for _, d in specs], 1000 + k)))
    return out


def _print_table(inputs: list[tuple[str, list[Any]]], results: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="inferences")
    for column in ("#", "input", "cut", "after", "ms", "fell back", "reason", "up Mbit/s",
                   "RTT ms", "top-1"):
        table.add_column(column)
    for (name, _), r in zip(inputs, results, strict=True):
        top = int(r.outputs[0].argmax()) if r.outputs else -1
        table.add_row(str(r.seq), name, str(r.cut), str(r.after or "cloud-only"),
                      f"{r.latency_ms:.1f}", "yes" if r.fell_back else "no", r.reason,
                      f"{r.up_mbps:.1f}", f"{r.rtt_ms:.1f}", str(top))
    Console().print(table)
    fell = sum(r.fell_back for r in results)
    print(f"{len(results)} inferences, {fell} fell back to the phone, "
          f"{len({r.cut for r in results})} different cuts")
