"""A deployed split under a changing link: the runner against always-mobile / always-cloud.

Profiles the model on the emulated phone (``dnntune analyze --emulate PRESET``), exports a
bundle (``dnntune export``), serves it (``dnntune serve --bundle``), and runs
:class:`dnntune.runtime.SplitRunner` through the shaping proxy while the link changes
between presets (default Wi-Fi -> 3G -> Wi-Fi) and the server is killed and restarted.
The phone's LiteRT heads are time-dilated to the device profile's mobile-only time.
The same link trace is then run with a fixed cut, always mobile-only and always
cloud-only (no server kill there), as the baselines, in the same run.

Prints per phase: inferences, fallbacks, how many inferences the runner took to reach
the policy's cut for the link it is on, median latency measured against the policy's
prediction for that link, and the baselines' medians; then the whole run's cut
switches and the largest output difference from the unsplit Keras model.

    python benchmarks/bench_deploy.py [--model resnet50] [--phases wifi:20,3g:10,wifi:20]
        [--kill-at 36 --down-for 4] [--run DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--emulate", default="dnntune_phone")
    parser.add_argument("--phases", default="wifi:20,3g:10,wifi:20")
    parser.add_argument("--kill-at", type=int, default=36,
                        help="inference at which the server is killed (-1: never)")
    parser.add_argument("--down-for", type=int, default=4,
                        help="inferences after which it is started again")
    parser.add_argument("--num_runs", type=int, default=10, help="profile runs")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--run", help="reuse an analysis folder (dnntune analyze --out)")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--out", default=None, help="folder for the plot and JSON")
    args = parser.parse_args()

    from dnntune.analysis.links import preset_links
    from dnntune.deploy.bundle import load_bundle
    from dnntune.model.loading import load_model
    from dnntune.wire.samples import load_samples

    phases = [(name, int(n)) for name, n in (p.split(":") for p in args.phases.split(","))]
    presets = preset_links()
    links = sorted({name for name, _ in phases})
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-deploy-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else work / "run"
    if not args.run:
        _cli(["analyze", "--model", args.model, "--emulate", args.emulate, "--links",
              ",".join(links), "--num_runs", str(args.num_runs), "--out", str(run),
              "--no-plots", "--wire", "fp32"])
    bundle_dir = work / "bundle"
    if not (bundle_dir / "manifest.json").exists():
        _cli(["export", str(run), "--out", str(bundle_dir), "--policy-link", phases[0][0],
              "--links", ",".join(links), "--precision", args.precision])
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    full = manifest.mobile_only
    emulate_ms = full.predicted[phases[0][0]]["latency_ms"]
    loaded = load_model(args.model)
    samples = load_samples(loaded.input_shapes[0][1:], args.model, limit=5)
    inputs = [[x[np.newaxis]] for x in samples.inputs]
    reference = [loaded.model(x).numpy() for x in inputs]
    print(f"{args.model}: bundle cuts {[c.index for c in manifest.cuts]}, phone "
          f"{args.emulate} dilated to mobile-only {emulate_ms:.1f} ms; policy link "
          f"{bundle.policy.link}; samples {samples.describe()}")

    adaptive = _pass(bundle, presets, phases, inputs, emulate_ms, None, args.kill_at,
                     args.down_for)
    baselines = {}
    if not args.no_baselines:
        baselines["mobile-only"] = _pass(bundle, presets, phases, inputs, emulate_ms,
                                         full.index, -1, 0)
        baselines["cloud-only"] = _pass(bundle, presets, phases, inputs, emulate_ms, 0, -1, 0)
    _report(bundle, presets, phases, adaptive, baselines, inputs, reference, work)


def _cli(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "dnntune", *argv], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"dnntune {argv[0]} failed: {result.stderr.strip()[-500:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(port: int, bundle: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "dnntune", "serve", "--port", str(port),
                             "--bundle", str(bundle)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if "listening" in line:
            return proc
        if not line:
            raise SystemExit("the server did not start")


def _pass(bundle: Any, presets: Any, phases: list[tuple[str, int]], inputs: list[Any],
          emulate_ms: float, fixed_cut: int | None, kill_at: int, down_for: int
          ) -> list[dict[str, Any]]:
    from dnntune.netem.shaper import LinkShape, ShapingProxy
    from dnntune.rpc.client import Endpoint
    from dnntune.runtime import SplitRunner

    port = _free_port()
    server = _serve(port, bundle.directory)
    rows: list[dict[str, Any]] = []
    first = presets[phases[0][0]]
    proxy = ShapingProxy("127.0.0.1", port, LinkShape.from_link(first)).start()
    runner = SplitRunner(bundle, Endpoint(f"127.0.0.1:{proxy.port}", connect_timeout_s=2.0),
                         emulate_ms=emulate_ms, fixed_cut=fixed_cut,
                         initial_up_mbps=first.up_mbps)
    t0 = time.monotonic()
    seq = 0
    restart: subprocess.Popen[str] | None = None
    try:
        for phase, (name, count) in enumerate(phases):
            link = presets[name]
            proxy.reshape(LinkShape(link.up_mbps, link.down_mbps, link.rtt_ms))
            for _ in range(count):
                if seq == kill_at:
                    server.send_signal(signal.SIGKILL)
                    server.wait()
                if seq == kill_at + down_for:
                    restart = subprocess.Popen(
                        [sys.executable, "-m", "dnntune", "serve", "--port", str(port),
                         "--bundle", str(bundle.directory)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
                    server = restart
                r = runner.infer(inputs[seq % len(inputs)])
                rows.append({**r.to_dict(), "phase": phase, "link": name,
                             "t_s": time.monotonic() - t0, "true_up_mbps": link.up_mbps,
                             "true_rtt_ms": link.rtt_ms, "output": r.outputs[0]})
                seq += 1
    finally:
        runner.close()
        proxy.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    return rows


def _report(bundle: Any, presets: Any, phases: list[tuple[str, int]],
            adaptive: list[dict[str, Any]], baselines: dict[str, list[dict[str, Any]]],
            inputs: list[Any], reference: list[Any], work: Path) -> None:
    policy = bundle.policy
    print(f"{'phase':<10}{'n':>4}{'fallbacks':>10}{'policy cut':>11}{'reached after':>14}"
          f"{'median ms':>11}{'predicted':>11}{'ratio':>7}"
          + "".join(f"{k + ' ms':>16}" for k in baselines))
    summary = []
    for phase, (name, _count) in enumerate(phases):
        rows = [r for r in adaptive if r["phase"] == phase]
        link = presets[name]
        want = policy.best("latency", link.up_mbps, link.rtt_ms)
        exact = bundle.manifest.cut(want).predicted.get(name)  # the preset itself
        predicted = (exact["latency_ms"] if exact
                     else policy.predicted("latency", link.up_mbps, link.rtt_ms)[0])
        reached = next((k for k, r in enumerate(rows) if r["cut"] == want), None)
        served = [r["latency_ms"] for r in rows if not r["fell_back"]]
        median = statistics.median(served) if served else float("nan")
        base = {k: statistics.median(r["latency_ms"] for r in v if r["phase"] == phase)
                for k, v in baselines.items()}
        summary.append({"phase": phase, "link": name, "n": len(rows),
                        "fallbacks": sum(r["fell_back"] for r in rows), "policy_cut": want,
                        "reached_after": reached, "median_ms": median,
                        "predicted_ms": predicted, **{f"{k}_ms": v for k, v in base.items()}})
        print(f"{name:<10}{len(rows):>4}{summary[-1]['fallbacks']:>10}{want:>11}"
              f"{reached if reached is not None else '-':>14}{median:>11.1f}{predicted:>11.1f}"
              f"{median / predicted:>7.2f}" + "".join(f"{v:>16.1f}" for v in base.values()))
    cuts = [r["cut"] for r in adaptive]
    switches = sum(a != b for a, b in itertools.pairwise(cuts))
    errors = [float(np.max(np.abs(r["output"] - reference[r["seq"] % len(reference)])))
              for r in adaptive]
    print(f"{len(adaptive)} inferences, {sum(r['fell_back'] for r in adaptive)} fallbacks, "
          f"{switches} cut changes, every inference answered once: "
          f"{[r['seq'] for r in adaptive] == list(range(len(adaptive)))}; max |output - "
          f"unsplit Keras| {max(errors):.2e}")
    for r in adaptive:
        r.pop("output")
    for rows in baselines.values():
        for r in rows:
            r.pop("output")
    (work / "deploy_run.json").write_text(json.dumps(
        {"summary": summary, "adaptive": adaptive, "baselines": baselines}, indent=1))
    _plot(adaptive, baselines, work / "deploy_run.png")
    print(f"rows and plot in {work}")


def _plot(adaptive: list[dict[str, Any]], baselines: dict[str, list[dict[str, Any]]],
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    t = [r["t_s"] for r in adaptive]
    axes[0].step(t, [r["true_up_mbps"] for r in adaptive], where="post", label="link uplink")
    axes[0].plot(t, [r["up_mbps"] for r in adaptive], ".", label="runner's estimate")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("Mbit/s")
    axes[0].legend(fontsize=8)
    axes[1].step(t, [r["cut"] for r in adaptive], where="post")
    fell = [r for r in adaptive if r["fell_back"]]
    axes[1].plot([r["t_s"] for r in fell], [r["cut"] for r in fell], "rx", label="fallback")
    axes[1].set_ylabel("cut")
    axes[1].legend(fontsize=8)
    axes[2].plot(t, [r["latency_ms"] for r in adaptive], ".-", label="runner")
    for name, rows in baselines.items():
        axes[2].plot([r["t_s"] * t[-1] / rows[-1]["t_s"] for r in rows],
                     [r["latency_ms"] for r in rows], ".", alpha=0.5,
                     label=f"always {name} (time rescaled)")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("latency ms")
    axes[2].set_xlabel("time (s)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
