"""One model, bit-identical in every process, whatever the thread count.

Two processes with 1 and 4 intra-op threads build every zoo model at once from an
empty cache (the README recipes test adds 1-vs-2 and 1-vs-8 threads on one model):
BatchNorm calibration (whose float sums depend on threads and CPU) runs once per model,
under a lock, and every process ends up with the same bytes and hash.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dnntune.model.zoo import ZOO

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
from dnntune.profiling.instrument import configure_runtime
configure_runtime(int(sys.argv[1]), ())
import gc
import keras
from dnntune.model.loading import load_model, model_hash
hashes = {}
for name in sys.argv[2:]:
    hashes[name] = model_hash(load_model(name).model)
    keras.backend.clear_session()  # one model in memory at a time (VGG-16 is 0.5 GB)
    gc.collect()
print(json.dumps(hashes))
"""


def test_every_zoo_model_hashes_alike_with_1_and_4_threads(tmp_path: Path) -> None:
    env = {**os.environ, "DNNTUNE_CACHE_DIR": str(tmp_path / "cache")}
    names = sorted(ZOO)
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(threads), *names], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for threads in (1, 4)]
    hashes = []
    for proc in procs:
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err[-3000:]
        hashes.append(json.loads(out.strip().splitlines()[-1]))
    assert hashes[0] == hashes[1]
    assert sorted(hashes[0]) == names
    assert len(list((tmp_path / "cache" / "zoo").glob("*.keras"))) == len(names)
