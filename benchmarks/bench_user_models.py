"""Is the profile of a user's own model true to it? Σ layer means against the plain model.

Builds and saves (with Keras) the models of tests/user_models.py: transfer learning on a
nested backbone, a siamese model with shared layers, a two-output model and a small
attention encoder, loads each file as a user would and profiles it at 1 thread. The
baseline is the plain compiled model measured in the same run, interleaved run by run;
``zoo:mobilenet_v2@96`` is the same MobileNetV2 built as a top-level model (not nested),
profiled in the same process, to show what nesting changes. ``p50 ratio`` is the sum of
the layers' medians over the plain pass's median: steadier than the means on a busy host.

    python benchmarks/bench_user_models.py [--models transfer_mnv2,siamese,...]
                                           [--num_runs 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.user_models


def main() -> None:
    from tests.user_models import BUILDERS, save_user_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join([*BUILDERS, "zoo:mobilenet_v2@96"]))
    parser.add_argument("--num_runs", type=int, default=50)
    args = parser.parse_args()

    from dnntune.profiling.instrument import configure_runtime

    runtime = configure_runtime(1)
    from dnntune.model.loading import load_model
    from dnntune.profiling.profiler import ProfileSettings, profile_model

    print(f"threads: intra-op {runtime['intra_op']}, inter-op {runtime['inter_op']}; "
          f"{args.num_runs} runs after 5 warm-up runs")
    print(f"{'model':<21}{'layers':>7}{'plain ms':>10}{'sum layers':>12}{'ratio':>8}"
          f"{'timer cost':>12}")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            if name.startswith("zoo:"):
                zoo_name, size = name[4:].split("@")
                loaded = load_model(zoo_name, [(int(size), int(size), 3)])
            else:
                loaded = load_model(str(save_user_model(name, Path(folder))))
            profile = profile_model(loaded, ProfileSettings(num_runs=args.num_runs,
                                                            warmup_runs=5, energy="none"))
            summed = sum(lp.latency.mean_ms for lp in profile.layers)
            print(f"{name:<21}{len(profile.layers):>7}{profile.end_to_end.mean_ms:>10.3f}"
                  f"{summed:>12.3f}{profile.ratio:>8.3f}{profile.overhead_pct:>+11.1f}%")


if __name__ == "__main__":
    main()
