"""The emulated phone, mechanism against mechanism: what a user is shown, start after start.

For each mechanism (time dilation, the default, and the CFS quota, ``<preset>:quota``)
this starts ``--starts`` fresh emulated device agents one after another, as `dnntune
analyze` does, profiles the reference model (MobileNetV2) through each, and prints:

- the figure it calibrated to, and the mobile-only T the analyzer reports from the
  profile (Σ layer means + the device's call cost), against the preset's reference;
- the per-layer distribution: p50/mean of every layer with >= 1 % of the model's time
  (the worst of them, and Conv1's), where a bimodal layer shows as a p50 far below its
  mean;
- the call cost charged per inference and how long the agent took to start.

The baseline, measured in the same run, is this machine unconfined (an agent with
--emulate none): its own mobile-only T and per-layer p50/mean.

    python benchmarks/bench_emulation.py [--preset dnntune_phone] [--starts 5]
        [--mechanisms dilation,quota] [--num_runs 50]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any

from dnntune.cli.pipeline import Access, cgroup_problem, local_emulated_agent, profile_side
from dnntune.config import RunConfig, SideConfig
from dnntune.profiling.devices import load_emulation_preset


@contextlib.contextmanager
def quiet(stage: str):  # type: ignore[no-untyped-def]
    yield lambda *a: None


def figures(profile: Any) -> dict[str, float]:
    """Mobile-only T as the analyzer adds it up, and the per-layer p50/mean."""
    total = sum(lp.latency.mean_ms for lp in profile.layers)
    heavy = [lp for lp in profile.layers if lp.latency.mean_ms >= 0.01 * total]
    ratios = {lp.layer.name: lp.latency.p50_ms / lp.latency.mean_ms for lp in heavy}
    worst = max(ratios.values(), key=lambda r: abs(r - 1.0))
    return {"mobile_only_ms": total + profile.call_overhead_ms,
            "call_ms": profile.call_overhead_ms, "worst_p50_mean": worst,
            "conv1_p50_mean": ratios.get("Conv1", float("nan")),
            "in_band": sum(0.8 <= r <= 1.2 for r in ratios.values()) / len(ratios)}


def one_start(preset: str | None, num_runs: int, model: str) -> tuple[dict[str, float], str]:
    started = time.perf_counter()
    with local_emulated_agent(preset) as (address, described):
        startup_s = time.perf_counter() - started
        config = RunConfig(model=model, num_runs=num_runs, warmup_runs=5,
                           device=SideConfig(threads=1, energy="none"))
        profile = profile_side("device", address, config, Access(), quiet)
    emulation = profile.meta.emulation or {}
    return {**figures(profile), "startup_s": startup_s,
            "calibrated_ms": float(emulation.get("achieved_ms", 0.0))}, described


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dnntune_phone")
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--mechanisms", default="dilation,quota")
    parser.add_argument("--num_runs", type=int, default=50)
    args = parser.parse_args()
    preset = load_emulation_preset(args.preset)
    assert preset.emulation is not None
    reference, model = preset.emulation.reference.latency_ms, preset.emulation.reference.model
    base, _ = one_start(None, args.num_runs, model)
    print(f"baseline, this machine unconfined (1 thread): {model} mobile-only T "
          f"{base['mobile_only_ms']:.1f} ms (call {base['call_ms']:.1f} ms), worst layer "
          f"p50/mean {base['worst_p50_mean']:.2f}, Conv1 {base['conv1_p50_mean']:.2f}")
    print(f"reference: {args.preset} {model} {reference:g} ms")
    header = (f"{'mechanism':<10}{'start':>6}{'calibrated':>11}{'reported T':>11}"
              f"{'vs ref':>8}{'call ms':>8}{'worst p50/mean':>15}{'Conv1':>7}"
              f"{'in [0.8,1.2]':>13}{'start s':>8}")
    print(header)
    for mechanism in args.mechanisms.split(","):
        if mechanism == "quota" and cgroup_problem():
            print(f"{mechanism:<10} not measured: {cgroup_problem()}")
            continue
        errors = []
        for start in range(1, args.starts + 1):
            got, _ = one_start(f"{args.preset}:{mechanism}", args.num_runs, model)
            error = got["mobile_only_ms"] / reference - 1.0
            errors.append(error)
            print(f"{mechanism:<10}{start:>6}{got['calibrated_ms']:>11.1f}"
                  f"{got['mobile_only_ms']:>11.1f}{error:>+8.1%}{got['call_ms']:>8.1f}"
                  f"{got['worst_p50_mean']:>15.2f}{got['conv1_p50_mean']:>7.2f}"
                  f"{got['in_band']:>13.0%}{got['startup_s']:>8.1f}", flush=True)
        worst = max(errors, key=abs)
        print(f"{mechanism}: reported mobile-only T within ±5 % of {reference:g} ms in "
              f"{sum(abs(e) <= 0.05 for e in errors)}/{len(errors)} starts (worst "
              f"{worst:+.1%}, spread {statistics.pstdev(errors):.1%} sd); ratio reported / "
              f"baseline {1 + statistics.mean(errors):.3f} x {reference:g} / "
              f"{base['mobile_only_ms']:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
