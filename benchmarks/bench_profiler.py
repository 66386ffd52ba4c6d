"""Is the in-graph profile true to the model? Ratio and overhead against the plain model.

For each model, in one process at 1 thread: the plain compiled model (baseline), the
instrumented pass (sum of layer means / plain in-graph mean, and instrumented / plain
wall-clock), and naive eager layer-by-layer timing (sum of per-layer wall-clock / plain
in-graph mean), which is why the profile never uses eager timing.

    python benchmarks/bench_profiler.py [--models mobilenet_v2,resnet50,inception_v3]
                                        [--num_runs 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def eager_layer_sum_ms(loaded, inputs, runs: int) -> float:
    """Sum over layers of the mean eager wall-clock time of each layer call."""
    from dnntune.model.keras_graph import walk_model

    walk = walk_model(loaded.model, loaded.graph.atomic)
    totals = np.zeros(len(walk.nodes))
    for _ in range(runs + 2):
        values = dict(zip(walk.inputs, inputs, strict=True))
        times = []
        for mn in walk.nodes:
            if mn.is_input:
                times.append(0.0)
                continue
            t0 = time.perf_counter()
            flat = [np.asarray(o) for o in mn.call(values)]
            times.append(time.perf_counter() - t0)
            values.update(zip(mn.output_names, flat, strict=True))
        totals += np.asarray(times)
    return float(totals.sum() / (runs + 2) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50,inception_v3")
    parser.add_argument("--num_runs", type=int, default=30)
    args = parser.parse_args()

    from dnntune.profiling.instrument import configure_runtime

    runtime = configure_runtime(1)
    from dnntune.model.loading import load_model
    from dnntune.profiling.profiler import ProfileSettings, profile_model

    print(f"threads: intra-op {runtime['intra_op']}, inter-op {runtime['inter_op']}; "
          f"{args.num_runs} runs after 5 warm-up runs")
    header = (f"{'model':<14}{'plain ms':>10}{'sum layers':>12}{'ratio':>8}"
              f"{'timer cost':>12}{'eager sum':>11}{'eager ratio':>13}")
    print(header)
    for name in args.models.split(","):
        loaded = load_model(name)
        profile = profile_model(loaded, ProfileSettings(num_runs=args.num_runs,
                                                        warmup_runs=5, energy="none"))
        summed = sum(lp.latency.mean_ms for lp in profile.layers)
        eager = eager_layer_sum_ms(loaded, loaded.example_inputs(), max(5, args.num_runs // 3))
        base = profile.end_to_end.mean_ms
        print(f"{name:<14}{base:>10.2f}{summed:>12.2f}{profile.ratio:>8.3f}"
              f"{profile.overhead_pct:>+11.1f}%{eager:>11.2f}{eager / base:>13.2f}")


if __name__ == "__main__":
    main()
