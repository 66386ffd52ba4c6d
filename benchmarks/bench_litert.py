"""TensorFlow vs LiteRT fp32 vs LiteRT int8 per model at 1 thread, side by side in one run,
and the cost of converting every head for ``--cuts all``.

Per model: the compiled TensorFlow model (baseline), then the LiteRT fp32 and int8
models in ai-edge-litert (XNNPACK), each timed with warm-up + N interleaved rounds (one
call of each per round, so load on a shared machine hits all three alike). Ratios are
TF mean / LiteRT mean; sizes are weight bytes (TF) and .tflite bytes. Then, for one
model, the conversion time of each head that ``profile --framework litert --cuts all``
converts.

    python benchmarks/bench_litert.py [--models mobilenet_v2,resnet50,inception_v3]
                                      [--num_runs 30] [--heads-model mobilenet_v2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def interleaved_ms(calls: dict[str, object], warmup: int, runs: int) -> dict[str, np.ndarray]:
    """Time each call once per round, ``runs`` rounds, after ``warmup`` rounds."""
    for _ in range(warmup):
        for call in calls.values():
            call()  # type: ignore[operator]
    out = {name: np.empty(runs) for name in calls}
    for i in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()  # type: ignore[operator]
            out[name][i] = (time.perf_counter() - start) * 1e3
    return out


def bench_model(name: str, runs: int) -> None:
    from dnntune.litert.convert import convert_model, interpreter
    from dnntune.litert.profile import run_litert
    from dnntune.model.loading import compile_model, load_model
    from dnntune.profiling.profiler import _param_bytes

    loaded = load_model(name)
    x = loaded.example_inputs()
    run_tf = compile_model(loaded.model)
    sizes = {"tf": _param_bytes(loaded.model)}
    calls: dict[str, object] = {"tf": lambda: run_tf(x)}
    for precision in ("fp32", "int8"):
        conversion = convert_model(loaded, precision)
        it = interpreter(conversion.tflite, 1)
        run_litert(it, x)
        calls[precision] = it.invoke
        sizes[precision] = len(conversion.tflite)
    t = interleaved_ms(calls, 5, runs)
    tf_ms = t["tf"].mean()
    print(f"{name:<14}{tf_ms:>9.2f}{t['fp32'].mean():>11.2f}{t['int8'].mean():>11.2f}"
          f"{tf_ms / t['fp32'].mean():>10.2f}{tf_ms / t['int8'].mean():>10.2f}"
          f"{sizes['tf'] / 1e6:>9.1f}{sizes['fp32'] / 1e6:>10.1f}{sizes['int8'] / 1e6:>10.1f}")


def bench_heads(name: str) -> None:
    from dnntune.litert.convert import convert_model
    from dnntune.litert.profile import choose_cuts, head_tflite
    from dnntune.model.loading import load_model
    from dnntune.model.split import Splitter

    loaded = load_model(name)
    start = time.perf_counter()
    full = convert_model(loaded, "fp32")
    whole_s = time.perf_counter() - start
    cuts = choose_cuts("all", full.layer_map, loaded.graph)
    splitter = Splitter(loaded.model, loaded.graph)
    seconds = []
    for index in cuts:
        if 1 < index < len(loaded.graph.layers):
            start = time.perf_counter()
            head_tflite(loaded, splitter, index, "fp32")
            seconds.append(time.perf_counter() - start)
    s = np.asarray(seconds)
    print(f"\n{name} --cuts all: {len(cuts)} cuts exist in LiteRT, {len(s)} heads converted; "
          f"per head mean {s.mean():.2f} s (min {s.min():.2f}, max {s.max():.2f}), total "
          f"{s.sum():.0f} s; whole model {whole_s:.2f} s with its layer map "
          f"({s.sum() / whole_s:.0f}x the whole-model conversion)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50,inception_v3")
    parser.add_argument("--num_runs", type=int, default=30)
    parser.add_argument("--heads-model", default="mobilenet_v2")
    args = parser.parse_args()

    from dnntune.profiling.instrument import configure_runtime

    configure_runtime(1)
    from dnntune.litert.profile import litert_version

    print(f"1 thread; {args.num_runs} interleaved rounds after 5 warm-up rounds; "
          f"{litert_version()} (XNNPACK)")
    print(f"{'model':<14}{'TF ms':>9}{'fp32 ms':>11}{'int8 ms':>11}{'TF/fp32':>10}"
          f"{'TF/int8':>10}{'TF MB':>9}{'fp32 MB':>10}{'int8 MB':>10}")
    for name in args.models.split(","):
        bench_model(name, args.num_runs)
    if args.heads_model:
        bench_heads(args.heads_model)


if __name__ == "__main__":
    main()
