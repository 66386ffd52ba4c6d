"""Does keeping freed transfer buffers change what a profile's memory fields say?

Servers call :func:`dnntune.allocator.keep_transfer_buffers` (glibc keeps freed
multi-MB buffers). A profile's ``MemoryInfo`` is the peak resident growth over the timed
inferences, from what the process holds, so a process that keeps freed memory could see
less growth. For each setting, in alternating fresh processes, this loads a zoo model and
profiles it twice (the second after the first has freed its buffers), printing the
memory fields.

    python benchmarks/bench_allocator_memory.py [--model mobilenet_v2] [--processes 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import os, sys, tempfile
os.environ.setdefault("DNNTUNE_CACHE_DIR", tempfile.mkdtemp())
from dnntune.allocator import keep_transfer_buffers
if sys.argv[1] == "keep":
    assert keep_transfer_buffers()
from dnntune.model.loading import load_model
from dnntune.profiling.profiler import ProfileSettings, profile_model
loaded = load_model(sys.argv[2])
for i in range(2):
    m = profile_model(loaded, ProfileSettings(num_runs=5, warmup_runs=2, energy="none")).memory
    print(f"{sys.argv[1]:>8} profile {i + 1}: inference growth "
          f"{m.inference_rss_growth_bytes / 2**20:6.2f} MiB, peak RSS "
          f"{m.peak_rss_bytes / 2**20:5.0f} MiB, setup growth "
          f"{m.setup_rss_growth_bytes / 2**20:7.1f} MiB", flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--processes", type=int, default=2, help="per setting")
    args = parser.parse_args()
    for _ in range(args.processes):
        for setting in ("default", "keep"):
            subprocess.run([sys.executable, "-c", CHILD, setting, args.model], check=True,
                           stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
