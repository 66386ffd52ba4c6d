"""How good are the predictions? `dnntune validate` on real models over emulated links.

For each model: profile both sides, predict every cut, then run an even spread of cuts
(20 plus the predicted best and both baselines) end to end over the shaping proxy for
3G, 4G and Wi-Fi. Prints per link the median |error| of predicted vs measured latency and
the regret of the predicted-best cut, next to the regret of the best fixed baseline
(always mobile-only or always cloud-only, whichever is better), measured in the same run.

    python benchmarks/bench_validate.py [--models mobilenet_v2,resnet50] [--num_runs 2]
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
    parser.add_argument("--cuts", default="spread:20")
    parser.add_argument("--num_runs", type=int, default=2)
    args = parser.parse_args()
    print(f"{'model':<14}{'link':<6}{'cuts':>5}{'median |err|':>14}{'max |err|':>11}"
          f"{'regret':>9}{'fixed-baseline regret':>23}")
    for model in args.models.split(","):
        out = Path(tempfile.mkdtemp(prefix=f"validate-{model}-"))
        result = subprocess.run(
            [sys.executable, "-m", "dnntune", "validate", "--model", model, "--links",
             args.links, "--cuts", args.cuts, "--num_runs", str(args.num_runs),
             "--profile-runs", "20", "--out", str(out), "--format", "json"],
            capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{model}: validate failed: {result.stderr.strip().splitlines()[-1:]}")
            continue
        doc = json.loads(result.stdout)
        for link in doc["links"]:
            cuts = link["cuts"]
            best = min(c["measured_ms"] for c in cuts)
            fixed = min(cuts[0]["measured_ms"], cuts[-1]["measured_ms"])
            worst = max(abs(c["error_pct"]) for c in cuts)
            print(f"{model:<14}{link['name']:<6}{len(cuts):>5}"
                  f"{link['median_abs_error_pct']:>13.1f}%{worst:>10.1f}%"
                  f"{link['regret_pct']:>8.1f}%{100 * (fixed / best - 1):>22.1f}%")
        print(f"  (details: {out}/validation.json and validation-<link>.png)")


if __name__ == "__main__":
    main()
