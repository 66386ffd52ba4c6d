"""Server memory budget: the estimate of dnntune.model.memory against the real peak RSS.

For each zoo model and input shape, a fresh process (with an empty zoo cache) does what a
server does for a new model: build it, calibrate its BatchNorm statistics, save and load
the cached file and read the layer graph. It prints the growth of its peak resident
memory over the same process before the build (the baseline, measured in the same run),
the estimate, and estimate / measured, which must stay >= 1 (an upper bound).

    .venv/bin/python benchmarks/bench_memory.py [model:side ...]
"""

from __future__ import annotations

import json
import subprocess
import sys

CASES = ["tiny_resnet:32", "tiny_resnet:96", "tiny_resnet:256", "mobilenet_v2:224",
         "mobilenet_v2:448", "resnet50:224", "resnet50:448", "vgg16:224"]

CHILD = """
import json, os, resource, sys, tempfile
os.environ["DNNTUNE_CACHE_DIR"] = tempfile.mkdtemp()
from dnntune.model.loading import import_keras, load_model
from dnntune.model.memory import estimate_memory
import_keras()
import tensorflow as tf
tf.constant(1)
name, side = sys.argv[1], int(sys.argv[2])
shape = (side, side, 3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loaded = load_model(name, [shape])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
est = estimate_memory(load_model(name, calibrate=False).graph, shape, 1)
print(json.dumps({"growth_mb": (peak - before) / 1024, "estimate_mb": est.peak_bytes / 2**20}))
"""


def main(cases: list[str]) -> int:
    print("| model | input | peak RSS growth MiB | estimate MiB | estimate / measured |")
    print("|---|---|---|---|---|")
    worst = float("inf")
    for case in cases:
        name, side = case.split(":")
        out = subprocess.run([sys.executable, "-c", CHILD, name, side], capture_output=True,
                             text=True, timeout=900, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = row["estimate_mb"] / row["growth_mb"]
        worst = min(worst, ratio)
        print(f"| {name} | {side}x{side}x3 | {row['growth_mb']:,.0f} | "
              f"{row['estimate_mb']:,.0f} | {ratio:.2f} |", flush=True)
    print(f"lowest estimate / measured: {worst:.2f} (an upper bound needs >= 1)")
    return 0 if worst >= 1 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or CASES))
