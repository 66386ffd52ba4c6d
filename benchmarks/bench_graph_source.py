"""Per-layer Σ / end-to-end of MobileNetV2 as a frozen GraphDef against the Keras model.

Run from the repository root::

    .venv/bin/python benchmarks/bench_graph_source.py [--runs 25] [--no-fold]

Freezes the zoo's MobileNetV2 (``weights=None``, calibrated, cached build) with
TensorFlow's ``convert_variables_to_constants_v2`` into a temporary ``.pb``, loads it as a
graph model (layers = name scopes) and times, in one process and one thread, interleaved
run by run: the frozen graph's plain pass and its per-scope timed pass, and the Keras
model's plain pass and its per-layer timed pass. Prints medians and the ratio
Σ per-layer / end to end of each (the goal band is [0.98, 1.02]). ``--no-fold`` turns off
TensorFlow's remapper, constant folding and arithmetic optimizer, the optimizations that
fuse across layers in a frozen graph (weights are constants there); ``--fold-layers``
reads the graph with ``?fold=1`` instead (a convolution, its BatchNorm and activation as
one layer).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--no-fold", action="store_true")
    parser.add_argument("--fold-layers", action="store_true",
                        help="read the .pb with ?fold=1 (BatchNorm and activation in their "
                             "convolution's layer)")
    args = parser.parse_args()

    from dnntune.model.loading import load_model
    from dnntune.model.tf_graph import freeze_keras_model
    from dnntune.profiling.instrument import InstrumentedModel, compile_plain, configure_runtime

    configure_runtime(1, ())
    if args.no_fold:
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options(
            {"remapping": False, "constant_folding": False, "arithmetic_optimization": False})
    keras_model = load_model("mobilenet_v2")
    with tempfile.TemporaryDirectory() as folder:
        pb = freeze_keras_model(keras_model.model, Path(folder) / "mobilenet_v2.pb")
        graph_model = load_model(f"{pb}?fold=1" if args.fold_layers else str(pb))
    x = keras_model.example_inputs()
    passes = {
        "frozen .pb": (graph_model.model.compile_plain(), graph_model.model.instrumented()),
        "Keras": (compile_plain(keras_model.model), InstrumentedModel(keras_model.model)),
    }
    for plain, timed in passes.values():
        for _ in range(3):
            plain(x)
            timed(x)
    samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in passes}
    for _ in range(args.runs):
        for name, (plain, timed) in passes.items():
            samples[name][0].append(plain(x)[1])
            samples[name][1].append(float(np.diff(timed(x)[1]).sum()))
    print(f"MobileNetV2, 1 thread, {args.runs} interleaved runs, medians"
          + (" (cross-layer optimizations off)" if args.no_fold else ""))
    for name, (plain_s, timed_s) in samples.items():
        e2e, total = float(np.median(plain_s)) * 1e3, float(np.median(timed_s)) * 1e3
        print(f"  {name:11s} layers {len(passes[name][1].layer_names):3d}  end to end "
              f"{e2e:6.2f} ms  Σ per-layer {total:6.2f} ms  ratio {total / e2e:.3f}")


if __name__ == "__main__":
    main()
