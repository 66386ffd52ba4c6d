"""DAG-optimal partition at scale: the compiled min-cut against the networkx path, on
real profiles of inception_v3 (313 layers), NASNetMobile (771) and EfficientNetB7 (816).

Run from the repository root::

    .venv/bin/python benchmarks/bench_dagcut.py [--num_runs 3] [--repeat 20]
                                                [--process-rounds 7] [--models ...]

The first run profiles each model on this machine (device and cloud side, 1 thread
each, ``--num_runs`` runs after one warm-up; NASNetMobile and EfficientNetB7 are built
here from ``keras.applications`` with ``weights=None``, they are not in the zoo) and
saves the profiles under ``dnntune-runs/bench-dagcut/`` (gitignored); later runs reuse
them. Every figure is the best of several calls, wall-clock (``time.perf_counter``) and
CPU time (``time.process_time``, or the child's rusage for a process; it does not grow
with the load of a shared machine), printed with a baseline timed in the same run:

* one min-cut (building the flow network, then solving): scipy's Dinic on integer
  capacities against networkx's preflow-push on the same float capacities
  (:func:`networkx_solve`, the previous implementation);
* the whole analysis (all cuts x 3 links x 2 objectives, Pareto fronts and both DAG
  optima per link) against the same analysis with the networkx min-cut, and without
  the DAG optima;
* ``dnntune analyze`` on the saved profiles as a process: with the DAG optima, with
  ``--no-dag``, and with the networkx min-cut, in interleaved rounds;
* ``enumerate_cuts`` against the previous per-prefix rebuild, and loading both profiles
  against ``json.loads`` alone.

Both min-cuts are checked to give partitions of equal cost. Targets (issue 15): one
min-cut <= 5 ms at 313 layers and <= 20 ms at 816; the whole analysis <= 50 ms at 816;
``dnntune analyze`` within 20% of its ``--no-dag`` time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dnntune.profiling.profile import Profile, load_profile, save_profile  # noqa: E402

CACHE = REPO / "dnntune-runs" / "bench-dagcut"
# keras.applications models that are not in the zoo: builder name and default input.
APPLICATIONS = {"NASNetMobile": (224, 224, 3), "EfficientNetB7": (600, 600, 3)}
MEMORY_LIMIT_BYTES = 8 * 2**30


def build_loaded(name: str) -> Any:
    """The model as a :class:`~dnntune.model.loading.LoadedModel` (random weights, BatchNorm
    calibrated), from the zoo or from ``keras.applications``."""
    from dnntune.model.loading import DEFAULT_SEED, load_model

    if name not in APPLICATIONS:
        return load_model(name)
    from dnntune.model.keras_graph import build_layer_graph
    from dnntune.model.loading import LoadedModel, calibrate_batchnorm, import_keras
    from dnntune.model.zoo import fresh_layer_names

    keras = import_keras()
    keras.utils.set_random_seed(DEFAULT_SEED)
    with fresh_layer_names():
        model = getattr(keras.applications, name)(
            weights=None, input_tensor=keras.Input(shape=APPLICATIONS[name], name="input"))
    loaded = LoadedModel(name, "keras.applications", model, build_layer_graph(model, 1, name),
                         1, DEFAULT_SEED)
    # One sample, not the default 8: a training-mode pass of EfficientNetB7 at 600x600
    # over 8 samples holds more than 20 GB of activations.
    calibrate_batchnorm(loaded.model, loaded.example_inputs(), batch=1)
    return loaded


@contextmanager
def memory_guard(limit_bytes: int) -> Iterator[None]:
    """Exit the process (code 3) if its resident memory passes ``limit_bytes``: the
    machine is shared, and the kernel's OOM killer may pick someone else's process."""
    page = os.sysconf("SC_PAGE_SIZE")
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            with open("/proc/self/statm") as statm:
                if int(statm.read().split()[1]) * page > limit_bytes:
                    print(f"memory guard: over {limit_bytes / 2**30:.0f} GiB, stopping",
                          file=sys.stderr, flush=True)
                    os._exit(3)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def saved_profiles(name: str, num_runs: int) -> tuple[Path, Path]:
    """Paths of the device and cloud profiles of ``name``, profiled here if missing."""
    folder = CACHE / name
    paths = folder / "device.json", folder / "cloud.json"
    if all(p.exists() for p in paths):
        return paths
    from dnntune.profiling.instrument import configure_runtime
    from dnntune.profiling.profiler import ProfileSettings, profile_model

    configure_runtime(1)
    print(f"profiling {name} ({num_runs} runs per side, 1 thread)...", flush=True)
    with memory_guard(MEMORY_LIMIT_BYTES):
        loaded = build_loaded(name)
        for side, path, energy in (("device", paths[0], "model:default"),
                                   ("cloud", paths[1], "none")):
            settings = ProfileSettings(side=side, num_runs=num_runs, warmup_runs=1,
                                       num_threads=1, energy=energy, energy_seconds=0.5)
            start = time.perf_counter()
            save_profile(profile_model(loaded, settings), path)
            print(f"  {side}: {time.perf_counter() - start:.0f} s -> {path}", flush=True)
    return paths


@dataclass(frozen=True)
class Timing:
    """Best wall-clock and CPU seconds of repeated calls (CPU: this process, or the
    child for a process)."""

    wall_s: float
    cpu_s: float


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[Timing, Any]:
    """Smallest wall and CPU time (this process) of ``repeat`` calls, and the last
    result."""
    wall = cpu = math.inf
    result = None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        cpu = min(cpu, time.process_time() - start_cpu)
        wall = min(wall, time.perf_counter() - start)
    return Timing(wall, cpu), result


def networkx_solve(network: Any, caps: Any, steps: int = 0) -> Any:
    """The min-cut as dnntune found it before: networkx's preflow-push on float
    capacities, the device side = layers with no residual path to the sink (round-off
    below 1e-10 of the flow ignored)."""
    from networkx.algorithms.flow import preflow_push

    from dnntune.analysis.dagcut import SOURCE, MinCut, flow_digraph

    residual = preflow_push(flow_digraph(network, caps), SOURCE, network.sink,
                            value_only=True)
    tol = 1e-10 * residual.graph["flow_value"]
    reached, stack = {network.sink}, [network.sink]
    while stack:
        for u, attr in residual.pred[stack.pop()].items():
            if u not in reached and attr["capacity"] - attr["flow"] > tol:
                reached.add(u)
                stack.append(u)
    mask = np.array([node not in reached for node in range(1, network.layer_count + 1)])
    return MinCut(mask, 0.0, 0.0, 0)


def solve_min_cut_of(graph: Any, caps: Any, solve: Callable[..., Any] | None = None) -> Any:
    """One min-cut from the layer graph: build its flow network, then solve (the
    capacities are computed beforehand, as they take the same time both ways)."""
    from dnntune.analysis.dagcut import flow_network, solve_min_cut

    return (solve or solve_min_cut)(flow_network(graph), caps)


def quadratic_cuts(graph: Any) -> list[tuple[tuple[str, ...], int, int]]:
    """enumerate_cuts as it was (every prefix rebuilt), for the same-run baseline."""
    layers = graph.layers
    position = {layer.name: i for i, layer in enumerate(layers)}
    last_use = {t: i for i, layer in enumerate(layers) for t in layer.inputs}
    input_tensors = [t for layer in layers if layer.is_input for t in layer.outputs]
    out = []
    for p in range(len(layers) + 1):
        produced = [t for t in input_tensors if position[t.layer] >= p]
        produced += [t for layer in layers[:p] for t in layer.outputs]
        crossing = sorted((t for t in produced if last_use.get(t.name, -1) >= p),
                          key=lambda t: position[t.layer])
        names = {layer.name for layer in layers[:p]}
        down = sum(graph.tensor(n).bytes for n in dict.fromkeys(graph.model_outputs)
                   if graph.tensor(n).layer not in names
                   and not layers[position[graph.tensor(n).layer]].is_input)
        out.append((tuple(t.name for t in crossing), sum(t.bytes for t in crossing), down))
    return out


def whole_analysis(device: Profile, cloud: Profile, links: list[Any], dag: bool = True
                   ) -> tuple[Any, list[int]]:
    """Every cut on every link, latency-first with Pareto front and both DAG optima per
    link (``analyze_profiles``), plus the energy-first best per link."""
    from dnntune.analysis.partition import Objective, analyze_profiles, best_indices

    analysis = analyze_profiles(device, cloud, links, dag=dag)
    energy_first = Objective("energy-first")
    return analysis, [int(best_indices(la.table.latency_ms, la.table.energy_mj, energy_first))
                      for la in analysis.links]


@contextmanager
def networkx_min_cut() -> Iterator[None]:
    """Make :func:`dnntune.analysis.dagcut.optimal_partition` use :func:`networkx_solve`."""
    import dnntune.analysis.dagcut as dagcut

    saved = dagcut.solve_min_cut
    dagcut.solve_min_cut = networkx_solve  # type: ignore[assignment]
    try:
        yield
    finally:
        dagcut.solve_min_cut = saved


def check_same_optima(ours: Any, theirs: Any) -> None:
    """Equal DAG optima, up to the integer scaling's resolution."""
    for a, b in zip(ours.links, theirs.links, strict=True):
        for metric, mine in a.dag.items():
            other = b.dag[metric].value
            assert other * (1 - 1e-6) <= mine.value <= other * (1 + 1e-9) + mine.resolution, (
                a.link.name, metric, mine.value, other)


def analyze_process_s(device: Path, cloud: Path, extra: list[str], networkx: bool) -> Timing:
    """Wall and CPU time of one ``dnntune analyze`` on saved profiles, as a user runs it
    (with ``networkx``, through this file, which swaps in :func:`networkx_solve` first)."""
    entry = [__file__, "--analyze-with-networkx"] if networkx else ["-m", "dnntune"]
    command = [sys.executable, *entry, "analyze", "--device", str(device), "--cloud",
               str(cloud), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Timing(wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


Row = tuple[str, Timing, Timing, str, str]  # figure, dnntune, baseline, baseline name, target


def model_rows(name: str, paths: tuple[Path, Path], repeat: int) -> list[Row]:
    """The figures of one model (each with its same-run baseline)."""
    from dnntune.analysis.costs import CostOptions, cut_inputs, layer_costs, linear_cost
    from dnntune.analysis.dagcut import capacities, cut_value, flow_network
    from dnntune.analysis.links import preset_links
    from dnntune.model.cuts import enumerate_cuts

    rows: list[Row] = []
    fast, (device, cloud) = best_time(lambda: tuple(load_profile(p) for p in paths), repeat)
    slow, _ = best_time(lambda: [json.loads(p.read_text()) for p in paths], repeat)
    rows.append(("load both profiles", fast, slow, "json.loads alone", ""))
    graph = device.graph
    fast, cuts = best_time(lambda: enumerate_cuts(graph), repeat)
    slow, want = best_time(lambda: quadratic_cuts(graph), 2)
    assert [(tuple(t.name for t in c.tensors), c.bytes_up, c.bytes_down) for c in cuts] == want
    rows.append(("enumerate_cuts", fast, slow, "previous per-prefix rebuild", ""))

    links = list(preset_links().values())
    inputs = cut_inputs(graph, layer_costs(device, cloud))
    network = flow_network(graph)
    target = "<= 5 ms" if len(graph.layers) < 500 else "<= 20 ms"
    for metric in ("latency", "energy"):
        caps = capacities(network, linear_cost(inputs, preset_links()["wifi"], CostOptions(),
                                               metric))
        fast, cut = best_time(partial(solve_min_cut_of, graph, caps), repeat)
        slow, ref = best_time(partial(solve_min_cut_of, graph, caps, networkx_solve), 2)
        mine, other = (cut_value(network, caps, c.device_mask) for c in (cut, ref))
        assert other * (1 - 1e-9) <= mine <= other + cut.resolution, (metric, mine, other)
        unit = "ms" if metric == "latency" else "mJ"
        rows.append((f"one min-cut, {metric} (wifi)", fast, slow,
                     f"networkx preflow-push (resolution {cut.resolution:.2g} {unit} "
                     f"on {mine + caps.offset:.4g} {unit})", target))
    fast, (ours, _) = best_time(lambda: whole_analysis(device, cloud, links), repeat)
    with networkx_min_cut():
        slow, (theirs, _) = best_time(lambda: whole_analysis(device, cloud, links), 2)
    check_same_optima(ours, theirs)
    rows.append(("whole analysis, both DAG optima", fast, slow, "networkx min-cuts",
                 "<= 50 ms"))
    no_dag, _ = best_time(lambda: whole_analysis(device, cloud, links, dag=False), repeat)
    rows.append(("whole analysis without DAG optima", no_dag, fast, "with DAG optima", ""))
    return rows


def process_rows(paths: tuple[Path, Path], repeat: int) -> list[Row]:
    """Best of ``repeat`` rounds, each running the three variants one after the other, so
    that load from other processes hits them alike."""
    variants = {"dag": ([], False), "no-dag": (["--no-dag"], False), "networkx": ([], True)}
    runs: dict[str, list[Timing]] = {key: [] for key in variants}
    for _ in range(repeat):
        for key, (extra, networkx) in variants.items():
            runs[key].append(analyze_process_s(*paths, extra, networkx))
    best = {key: Timing(min(t.wall_s for t in ts), min(t.cpu_s for t in ts))
            for key, ts in runs.items()}
    return [("dnntune analyze process, DAG", best["dag"], best["networkx"],
             "networkx min-cuts", ""),
            ("dnntune analyze process, --no-dag", best["no-dag"], best["dag"],
             "with DAG optima", "DAG <= 1.2x --no-dag")]


def report(name: str, layers: int, rows: list[Row]) -> None:
    print(f"== {name} ({layers} layers)")
    print(f"{'figure':<36} {'dnntune':>10} {'CPU':>10} {'baseline':>10} {'ratio':>7}  "
          "baseline, target (ratio = baseline / dnntune, wall-clock)")
    for figure, fast, slow, baseline, target in rows:
        print(f"{figure:<36} {fast.wall_s * 1e3:>7.2f} ms {fast.cpu_s * 1e3:>7.2f} ms "
              f"{slow.wall_s * 1e3:>7.1f} ms {slow.wall_s / fast.wall_s:>6.3g}x  "
              f"{baseline}{', ' + target if target else ''}")


def main() -> None:
    if sys.argv[1:2] == ["--analyze-with-networkx"]:
        from dnntune.cli.main import main as dnntune_main

        with networkx_min_cut():
            sys.exit(dnntune_main(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="inception_v3,NASNetMobile,EfficientNetB7")
    parser.add_argument("--num_runs", type=int, default=3,
                        help="profiling runs per side when a profile is not cached")
    parser.add_argument("--repeat", type=int, default=20,
                        help="calls per dnntune figure (the best is kept)")
    parser.add_argument("--process-rounds", type=int, default=5,
                        help="rounds of the three dnntune analyze processes")
    parser.add_argument("--profile-only", action="store_true",
                        help="only make sure the profiles exist")
    args = parser.parse_args()
    cached = {name: saved_profiles(name, args.num_runs) for name in args.models.split(",")}
    if args.profile_only:
        return
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores")
    for name, paths in cached.items():
        layers = len(load_profile(paths[0]).layers)
        rows = model_rows(name, paths, args.repeat)
        rows += process_rows(paths, args.process_rounds)
        report(name, layers, rows)


if __name__ == "__main__":
    main()
