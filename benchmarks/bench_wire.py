"""Wire codec throughput on this machine, against a memcpy of the same bytes.

Run from the repository root::

    .venv/bin/python benchmarks/bench_wire.py [--repeat N] [--model NAME]

Inputs: a real photograph (matplotlib's ``grace_hopper.jpg``, fitted to 224 x 224 x 3)
for the input codecs, and real activations of that photograph in the model
(MobileNetV2 by default, from dnntune's calibrated zoo cache): the cut with the largest
crossing tensor and one in the middle of the network. Each figure is the median of
``--repeat`` timed calls (``time.perf_counter``) after a warm-up call; the baseline is
the median of copying the same number of raw bytes (``bytearray(memoryview)``) in the
same run, so the ratio says how many memcpys of the data one encode or decode costs.
Throughput is raw (unencoded) MB per second.

``--decisions MODEL[,MODEL...]`` instead runs ``dnntune analyze`` on each model (the
emulated phone, every link of ``--links``, wire encodings measured on the default
photographs) and prints, per link, the best cut with float32 only (the rows sent as
``fp32``, and mobile-only) against the best (cut, encoding) among the pairs whose top-1
agreement is at least ``--min-agreement``, for minimum latency and minimum phone energy:
one analysis, so both sides share the same profiles.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnntune.wire.codecs import parse_encoding
from dnntune.wire.samples import default_photo_paths, fit_image, preprocess

TENSOR_CODECS = ("fp32", "fp16", "int8", "int8c", "fp32+zstd", "fp16+zstd", "int8+zstd")
INPUT_CODECS = ("uint8", "png", "jpeg90", "jpeg75", "uint8+zstd")


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def activations(model_name: str, pixels: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The largest crossing tensor of the model on the photograph, and one mid-network."""
    from dnntune.model.cuts import enumerate_cuts
    from dnntune.model.keras_graph import walk_model
    from dnntune.model.loading import load_model
    from dnntune.model.replay import NodeProgram
    from dnntune.wire.samples import PREPROCESSING

    loaded = load_model(model_name)
    graph = loaded.graph
    cuts = [c for c in enumerate_cuts(graph) if len(c.tensors) == 1 and c.index > 1]
    big = max(cuts, key=lambda c: c.bytes_up)
    mid = cuts[len(cuts) // 2]
    names = tuple(dict.fromkeys([big.tensors[0].name, mid.tensors[0].name]))
    walk = walk_model(loaded.model, graph.atomic)
    x = preprocess(pixels[None], PREPROCESSING.get(model_name, "identity"))
    values = NodeProgram(walk.nodes, walk.inputs, names, "bench")([x])
    return [(f"{n} {list(v.shape[1:])}", v[0]) for n, v in zip(names, values, strict=True)]


def bench(label: str, x: np.ndarray, codecs: tuple[str, ...], repeat: int) -> None:
    raw = memoryview(np.ascontiguousarray(x)).cast("B")
    copy_ms = median_ms(lambda: bytearray(raw), repeat)
    mb = raw.nbytes / 1e6
    print(f"\n{label}: {raw.nbytes:,} raw bytes; memcpy {copy_ms:.4f} ms "
          f"({mb / copy_ms * 1e3:,.0f} MB/s)")
    print(f"{'codec':<12} {'bytes':>10} {'ratio':>6} {'encode ms':>10} {'MB/s':>8} "
          f"{'x memcpy':>9} {'decode ms':>10} {'MB/s':>8} {'x memcpy':>9}")
    for name in codecs:
        enc = parse_encoding(name)
        payload = enc.encode(x)
        enc_ms = median_ms(lambda enc=enc: enc.encode(x), repeat)
        dec_ms = median_ms(lambda enc=enc, p=payload: enc.decode(p, x.shape), repeat)
        print(f"{name:<12} {len(payload):>10,} {raw.nbytes / len(payload):>6.2f} "
              f"{enc_ms:>10.3f} {mb / enc_ms * 1e3:>8,.0f} {enc_ms / copy_ms:>9.0f} "
              f"{dec_ms:>10.3f} {mb / dec_ms * 1e3:>8,.0f} {dec_ms / copy_ms:>9.0f}")


def decisions(models: list[str], links: str, wire: str, min_agreement: float,
              runs: int, out: Path) -> None:
    """Best cut with float32 only against the best admitted (cut, encoding), per link."""
    import json
    import subprocess

    for model in models:
        folder = out / model
        command = [sys.executable, "-m", "dnntune", "analyze", "--model", model, "--links",
                   links, "--wire", wire, "--min-agreement", str(min_agreement),
                   "--num_runs", str(runs), "--warmup_runs", "2", "--no-plots", "--out",
                   str(folder), "--format", "json"]
        print(f"\n$ dnntune {' '.join(command[3:])}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-2000:])
            continue
        doc = json.loads(done.stdout)
        print(f"{model}: {time.perf_counter() - start:.0f} s; wire: "
              f"{'; '.join(doc['wire']['excluded']) or 'nothing excluded'}; "
              f"{'; '.join(doc['wire']['notes'])}")
        print(f"{'link':<10} {'goal':<8} {'float32 only: cut, T ms / E mJ':<44} "
              f"{'best (cut, encoding), T ms / E mJ':<52}")
        for link in doc["links"]:
            rows = link["cuts"]
            plain = [r for r in rows if r["encoding"] in ("fp32", "none")]
            for goal, key, other in (("latency", "latency_ms", "energy_mj"),
                                     ("energy", "energy_mj", "latency_ms")):
                print(f"{link['name']:<10} {goal:<8} {_cell(_best(plain, key, other)):<44} "
                      f"{_cell(_best(rows, key, other)):<52}")


def _best(rows: list[dict], key: str, other: str) -> dict:
    return min(rows, key=lambda row: (row[key], row[other], row["index"]))


def _cell(row: dict) -> str:
    where = row["after"] or "input"
    return (f"{row['index']} ({where}) {row['encoding']} {row['bytes_up']:,.0f} B, "
            f"{row['latency_ms']:,.1f} / {row['energy_mj']:,.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per figure")
    parser.add_argument("--model", default="mobilenet_v2", help="zoo model for activations")
    parser.add_argument("--decisions", metavar="MODEL[,MODEL...]",
                        help="best cut as float32 against the best (cut, encoding) instead")
    parser.add_argument("--links", default="3g,4g,wifi,5g-low")
    parser.add_argument("--wire", default="fp32,uint8,jpeg90,fp16,int8,int8+zstd")
    parser.add_argument("--min-agreement", type=float, default=0.99)
    parser.add_argument("--num_runs", type=int, default=10, help="profiling runs per side")
    parser.add_argument("--out", default="/tmp/dnntune-bench-wire", help="analysis folders")
    args = parser.parse_args()
    if args.decisions:
        decisions(args.decisions.split(","), args.links, args.wire, args.min_agreement,
                  args.num_runs, Path(args.out))
        return 0
    photo = default_photo_paths()[0]
    pixels = fit_image(photo, 224, 224, 3)
    bench(f"input {photo.name} 224x224x3 uint8", pixels, INPUT_CODECS, args.repeat)
    for label, tensor in activations(args.model, pixels):
        bench(f"{args.model} activation {label} float32", tensor, TENSOR_CODECS, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
