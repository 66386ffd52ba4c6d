"""Issue 21's numbers table: energy-first against latency-first on every link preset.

For each model this profiles both sides once on the default emulated phone (``dnntune
analyze`` with the config's emulation, time dilation to ``dnntune_phone``; float32 on the
wire), then analyses those same two profiles on every preset under ``--radio warm`` and
``--radio cold`` with the RPC costs the profiling run measured, and prints one Markdown
row per (link, radio mode): the energy-first cut with E and its terms, its T, the
latency-first cut with its T and E, and which power figures were held at their fit's
range end (``extrapolated``). The baseline of each row is mobile-only on the same link,
from the same profiles (E saved against it, in %).

    python benchmarks/bench_energy_table.py [--models mobilenet_v2,resnet50]
        [--num_runs 20] [--work DIR]

Profiles already in ``--work`` (``<model>/device.json``) are reused, so the table can be
re-taken with other presets without profiling again. Timings are noisy on a shared
2-core machine (10-45 %), and so are the energies estimated from them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dnntune.analysis.costs import ENERGY_TERMS
from dnntune.analysis.links import preset_links

TERMS = [t for t in ENERGY_TERMS if t != "idle_mj"]  # idle: not counted (no --idle-wait)


def dnntune(*args: str) -> dict[str, Any]:
    """Run ``dnntune`` (JSON on stdout) and return its document."""
    done = subprocess.run([sys.executable, "-m", "dnntune", *args, "--format", "json"],
                          check=True, capture_output=True, text=True)
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def profile(model: str, work: Path, num_runs: int) -> tuple[Path, float, float, float]:
    """Device and cloud profiles of ``model`` (measured now or reused) and the RPC costs."""
    out = work / model
    if not (out / "device.json").is_file():
        started = time.perf_counter()
        dnntune("analyze", "--model", model, "--links", "3g", "--wire", "fp32",
                "--num_runs", str(num_runs), "--no-plots", "--out", str(out))
        seconds = time.perf_counter() - started
    else:
        seconds = 0.0
    options = json.loads((out / "analysis.json").read_text())["options"]
    return out, float(options["rpc_ms"]), float(options["rpc_ms_per_mb"]), seconds


def name_of(cut: dict[str, Any], n_cuts: int) -> str:
    if cut["index"] == n_cuts - 1:
        return "mobile-only"
    if cut["index"] == 0:
        return "cloud-only"
    return f"after {cut['after']} (#{cut['index']})"


def held(link: dict[str, Any]) -> str:
    parts = []
    for direction in ("up", "down"):
        if "extrapolated" in link[f"{direction}_power_label"]:
            rate = link[f"fit_{direction}_max_mbps"] if link[f"{direction}_mbps"] > \
                link[f"fit_{direction}_max_mbps"] else link[f"fit_{direction}_min_mbps"]
            parts.append(f"{direction} at {rate:g}")
    text = ", ".join(parts) or "no (inside)"
    return text + ("; fit borrowed" if link.get("power_borrowed") else "")


def robust(info: dict[str, Any] | None, n_cuts: int) -> str:
    """The report's robustness line, short: the same cut with the radio's power x0.5, x2
    and under the other radio mode, or what it turns into."""
    if not info:
        return "-"
    if info["robust"]:
        return "yes"
    moved = [f"{v['what'].removeprefix('radio ').replace('power ', '')}: "
             f"{name_of(v, n_cuts).split(' (#')[0]}"
             for v in info["variants"] if v["index"] != info["index"]]
    return "no (" + "; ".join(moved) + ")"


def rows(doc: dict[str, Any], radio: str) -> list[str]:
    out = []
    for entry in doc["links"]:
        cuts = entry["cuts"]
        best = entry["best"]
        fastest = min(cuts, key=lambda c: c["latency_ms"])
        mobile = entry["mobile_only"]
        saved = 100.0 * (1.0 - best["energy_mj"] / mobile["energy_mj"])
        terms = " | ".join(f"{best[t]:.1f}" for t in TERMS)
        out.append(f"| {entry['name']} | {radio} | {name_of(best, len(cuts))} | "
                   f"{best['energy_mj']:.1f} | {terms} | {best['latency_ms']:.0f} | "
                   f"{saved:.0f} % | {name_of(fastest, len(cuts))} | "
                   f"{fastest['latency_ms']:.0f} | {fastest['energy_mj']:.1f} | "
                   f"{held(entry['link'])} | {robust(entry.get('robustness'), len(cuts))} |")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50")
    parser.add_argument("--num_runs", type=int, default=20)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep (and reuse) the profiles here (default: a temporary folder)")
    args = parser.parse_args()
    links = ",".join(preset_links())
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for model in args.models.split(","):
            folder, rpc_ms, rpc_mb, seconds = profile(model, work, args.num_runs)
            took = f"profiled in {seconds:.0f} s" if seconds else "profiles reused"
            print(f"\n{model}: {took}; rpc_ms {rpc_ms:.3f}, rpc_ms_per_mb {rpc_mb:.3f}\n")
            print("| link | radio | energy-first cut | E | " + " | ".join(
                t.removesuffix("_mj") for t in TERMS) + " | T | E saved vs mobile-only | "
                "latency-first cut | T | E | power held at range end | "
                "energy-first cut robust? |")
            print("|" + "---|" * (10 + len(TERMS)))
            for radio in ("warm", "cold"):
                doc = dnntune("analyze", "--device", str(folder / "device.json"),
                              "--cloud", str(folder / "cloud.json"), "--links", links,
                              "--objective", "energy-first", "--radio", radio,
                              "--rpc-ms", f"{rpc_ms}", "--rpc-ms-per-mb", f"{rpc_mb}",
                              "--no-dag")
                print("\n".join(rows(doc, radio)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
