"""Fidelity of the emulated phone: Σ layer means / plain in-graph time under the CPU limit.

Starts one emulated device agent (the preset's CPU share calibrated once, as
`dnntune analyze` does), profiles each model through it, and prints the profile's
ratio of summed per-layer means to the uninstrumented in-graph mean (target: within
[0.95, 1.05]), next to the same ratio measured unconfined on this machine in the same
run (an agent with --emulate none), and how much slower the emulated device is.

    python benchmarks/bench_emulation.py [--models mobilenet_v2,resnet50,inception_v3]
"""

from __future__ import annotations

import argparse
import contextlib

from dnntune.cli.pipeline import Access, local_emulated_agent, profile_side
from dnntune.config import RunConfig, SideConfig


@contextlib.contextmanager
def quiet(stage: str):  # type: ignore[no-untyped-def]
    yield lambda *a: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50,inception_v3")
    parser.add_argument("--preset", default="dnntune_phone")
    parser.add_argument("--num_runs", type=int, default=20)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {}
    with local_emulated_agent(args.preset) as (emulated, described), \
            local_emulated_agent(None) as (plain, _):
        print(f"device: {described}")
        print(f"{'model':<14}{'emulated ms':>12}{'Σ/plain':>9}{'native ms':>11}"
              f"{'Σ/plain':>9}{'slowdown':>10}")
        for model in args.models.split(","):
            config = RunConfig(model=model, num_runs=args.num_runs, warmup_runs=3,
                               device=SideConfig(threads=1, energy=f"model:{args.preset}"))
            got = [profile_side("device", address, config, Access(), quiet)
                   for address in (emulated, plain)]
            ratios[model] = [p.ratio for p in got]
            print(f"{model:<14}{got[0].end_to_end.mean_ms:>12.1f}{got[0].ratio:>9.3f}"
                  f"{got[1].end_to_end.mean_ms:>11.1f}{got[1].ratio:>9.3f}"
                  f"{got[0].end_to_end.mean_ms / got[1].end_to_end.mean_ms:>9.1f}x",
                  flush=True)
    inside = all(0.95 <= r[0] <= 1.05 for r in ratios.values())
    print(f"emulated Σ/plain within [0.95, 1.05] for every model: {inside}")


if __name__ == "__main__":
    main()
