"""A held LiteRT head on the emulated phone against its own profile, with CPU hogs beside it.

On an emulated phone a LiteRT head runs natively and its result is held for ``k`` times
its native ``invoke`` time (``dnntune.litert.heads.LiteRTPhone``; ``k`` ~16 for
``dnntune_phone``). What the native time is measured on decides how much a neighbour on
the host leaks into what the phone shows: on wall time, a run during which another
process took the core is held ``k`` times that long; on the thread's CPU time
(``invoke_clock``, dnntune's for one thread) it is not.

For each clock (``thread``, dnntune's, and ``wall``, the baseline, measured in the same
run) and each hog count, a fresh process profiles MobileNetV2 at 128x128 as one LiteRT
head (mobile-only) the way an emulated agent does (``LiteRTPhone.time_head``), then holds
it in 15 split runs (``run_split``); it prints the held median against the profile's
prediction and the spread of the held runs. Hogs are busy Python loops, one per core
asked.

    python benchmarks/bench_litert_hold.py [--hogs 0,2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HELD = """
import json, sys, time
import numpy as np
import dnntune.litert.heads as heads
if sys.argv[1] == "wall":
    heads.invoke_clock = lambda threads: time.perf_counter
from dnntune.profiling.dilation import DilatedDevice, raise_priority
raise_priority()
from dnntune.profiling.instrument import configure_runtime
configure_runtime(1)
from dnntune.model.loading import load_model
from dnntune.model.split import Splitter
from dnntune.rpc.splitrun import run_split

phone = heads.LiteRTPhone(DilatedDevice("dnntune_phone"), threads=1)
loaded = load_model("mobilenet_v2", [(128, 128, 3)])
layer_map = heads.layer_map_of(loaded)
cut = len(layer_map.cuts) - 1
lite = heads.prepare_litert_split(loaded, Splitter(loaded.model, loaded.graph).split(cut),
                                  layer_map, threads=1)
phone.prepare()
phone.refresh()
predicted = phone.time_head(lite.head.it, loaded.example_inputs(), 5, 30).mean_ms
held = run_split(loaded, lite, None, None, num_runs=15, warmup_runs=2, hold=phone.hold,
                 pace=phone.pace)
print(json.dumps({"predicted": predicted, "held": sorted(r.head_ms for r in held.runs)}))
"""


def measure(clock: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", HELD, clock], capture_output=True, text=True,
                          cwd=REPO, timeout=900, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    held = result["held"]
    return {"predicted": result["predicted"], "median": held[len(held) // 2],
            "min": held[0], "max": held[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", default="0,2", help="busy processes beside it, per row")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per cell")
    args = parser.parse_args()
    print(f"{'hogs':>4} {'clock':>6} {'predicted ms':>13} {'held median':>12} "
          f"{'held/predicted':>15} {'held min-max ms':>16}")
    for hogs in (int(h) for h in args.hogs.split(",")):
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                 for _ in range(hogs)]
        try:
            for _ in range(args.repeats):
                for clock in ("thread", "wall"):
                    r = measure(clock)
                    print(f"{hogs:>4} {clock:>6} {r['predicted']:>13.1f} {r['median']:>12.1f} "
                          f"{r['median'] / r['predicted']:>15.3f} "
                          f"{r['min']:>8.1f}-{r['max']:<7.1f}", flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
