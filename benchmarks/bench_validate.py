"""How good are the predictions? `dnntune validate` on real models over emulated links.

For each model: profile both sides, predict every cut, then run the chosen cuts (by
default the 10 predicted-fastest plus both baselines) end to end: each head on the
device agent (the default config's emulated phone, unless --emulate says otherwise),
its crossing tensors over the shaping proxy for 3G, 4G and Wi-Fi, the tail on the cloud
server. Prints per link the predicted-best and measured-best cuts, the median |error|
of predicted vs measured latency and the regret of the predicted-best cut, next to the
regret of the best fixed baseline (always mobile-only or always cloud-only, whichever
is better), measured in the same run.

Each of ``--starts`` runs is a fresh `dnntune validate` (a new agent, calibrated anew);
for each, it also prints mobile-only as measured against the device preset's reference.

    python benchmarks/bench_validate.py [--models mobilenet_v2,resnet50] [--num_runs 3]
        [--links wifi,4g] [--cuts spread:12] [--starts 3] [--framework tf|litert]

With ``--framework litert`` the heads run as LiteRT models of their cuts on the agent and
the predictions come from the agent's LiteRT profile at those cuts (the report says so).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50")
    parser.add_argument("--links", default="3g,4g,wifi")
    parser.add_argument("--cuts", default="top:10")
    parser.add_argument("--num_runs", type=int, default=3)
    parser.add_argument("--emulate", default=None, help="device preset, or none")
    parser.add_argument("--starts", type=int, default=1)
    parser.add_argument("--framework", choices=("tf", "litert"), default="tf")
    args = parser.parse_args()
    extra = ["--emulate", args.emulate] if args.emulate else []
    extra += ["--framework", args.framework]
    print(f"{'model':<14}{'link':<6}{'cuts':>5}{'predicted best':>26}{'measured best':>26}"
          f"{'median |err|':>14}{'max |err|':>11}{'regret':>9}{'fixed-baseline regret':>23}")
    for model in [m for m in args.models.split(",") for _ in range(args.starts)]:
        out = Path(tempfile.mkdtemp(prefix=f"validate-{model}-"))
        result = subprocess.run(
            [sys.executable, "-m", "dnntune", "validate", "--model", model, "--links",
             args.links, "--cuts", args.cuts, "--num_runs", str(args.num_runs),
             "--profile-runs", "20", "--out", str(out), "--format", "json", *extra],
            capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{model}: validate failed: {result.stderr.strip().splitlines()[-1:]}")
            continue
        doc = json.loads(result.stdout)
        print(f"  device: {doc.get('device_label')}: {doc.get('device_note')}")
        print(f"  predicted from ({doc.get('predicted_from', 'tf')}): "
              f"{doc.get('predicted_note', '')}")
        reference = _reference_ms(doc.get("device_note", ""), model)
        for link in doc["links"]:
            cuts = link["cuts"]
            best = min(c["measured_ms"] for c in cuts)
            fixed = min(cuts[0]["measured_ms"], cuts[-1]["measured_ms"])
            worst = max(abs(c["error_pct"]) for c in cuts)
            names = {c["index"]: f"{c['after'] or 'input'} #{c['index']}" for c in cuts}
            print(f"{model:<14}{link['name']:<6}{len(cuts):>5}"
                  f"{names[link['predicted_best']]:>26}{names[link['measured_best']]:>26}"
                  f"{link['median_abs_error_pct']:>13.1f}%{worst:>10.1f}%"
                  f"{link['regret_pct']:>8.1f}%{100 * (fixed / best - 1):>22.1f}%")
            last = max(cuts, key=lambda c: c["index"])  # mobile-only, when it was run
            if reference and last["tail_ms"] == 0 and last["bytes_up"] == 0:
                print(f"{'':<20}mobile-only measured {last['measured_ms']:.1f} ms, "
                      f"{last['measured_ms'] / reference - 1:+.1%} on the reference "
                      f"{reference:g} ms; predicted {last['predicted_ms']:.1f} ms")
        print(f"  (details: {out}/validation.json and validation-<link>.png)")


def _reference_ms(note: str, model: str) -> float | None:
    """The preset's reference latency from the device note ("...the reference <model>
    <ms> ms (...)"), when the device was emulated and ``model`` is its reference."""
    import re

    found = re.search(r"against the reference (\S+) ([0-9.]+) ms", note)
    return float(found.group(2)) if found and found.group(1) == model else None


if __name__ == "__main__":
    main()
