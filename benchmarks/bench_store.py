"""Store throughput: 10,000 layer rows (100 profiles × 100 layers) into SQLite, against
writing the same profiles as JSON files in the same run.

    .venv/bin/python benchmarks/bench_store.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas  # noqa: F401 - imported before timing: the store reads into DataFrames

from dnntune.store import open_store

PROFILES = 100
LAYERS = 100


def body(k: int) -> dict[str, Any]:
    meta = {"side": "device", "model_name": f"m{k}", "model_hash": f"{k:064x}",
            "num_threads": 1, "host": "bench", "tensorflow_version": "", "keras_version": "",
            "dnntune_version": "", "created_utc": "", "emulation": None}
    layers = [{"name": f"l{i}", "latency": {"mean_ms": 0.01 * i + k}}
              for i in range(LAYERS)]
    return {"meta": meta, "layers": layers, "end_to_end": {"mean_ms": float(k)}}


def main() -> None:
    bodies = [body(k) for k in range(PROFILES)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = open_store(str(Path(tmp) / "bench.db"))
        for b in bodies:
            store.add_profile(b)
        t_insert = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = len(store.all_layers())
        t_query = time.perf_counter() - t0
        assert rows == PROFILES * LAYERS, rows
        t0 = time.perf_counter()
        for k, b in enumerate(bodies):
            (Path(tmp) / f"p{k}.json").write_text(json.dumps(b))
        t_json_w = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = sum(len(json.loads(p.read_text())["layers"]) for p in Path(tmp).glob("p*.json"))
        t_json_r = time.perf_counter() - t0
        assert n == rows
    print(f"sqlite insert: {rows / t_insert:,.0f} layer rows/s ({t_insert:.3f} s); "
          f"JSON files: {rows / t_json_w:,.0f} rows/s; store/JSON time ratio "
          f"{t_insert / t_json_w:.2f}")
    print(f"sqlite query:  {rows / t_query:,.0f} layer rows/s ({t_query:.3f} s); "
          f"JSON files: {rows / t_json_r:,.0f} rows/s; store/JSON time ratio "
          f"{t_query / t_json_r:.2f}")


if __name__ == "__main__":
    main()
