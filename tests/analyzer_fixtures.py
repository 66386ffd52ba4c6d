"""Builders of synthetic graphs, profiles and traces for the analyzer's tests and benchmark.

Profiles are built directly from the :mod:`dnntune.profiling.profile` dataclasses, so no model,
TensorFlow or device is needed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from dnntune.model.graph import LayerGraph, LayerNode, TensorSpec
from dnntune.profiling.profile import EnergyInfo, LayerProfile, Profile, ProfileMeta, Stats

# (name, inputs as layer names, output bytes); the first entries with no inputs are inputs.
LayerSpec = tuple[str, Sequence[str], int]


def build_graph(model: str, specs: Sequence[LayerSpec],
                outputs: Sequence[str] | None = None) -> LayerGraph:
    """A graph with one output tensor ``<name>:0`` per layer; layers without inputs are
    ``InputLayer``s; ``outputs`` (layer names) default to the last layer."""
    layers = []
    for name, inputs, nbytes in specs:
        tensor = TensorSpec(f"{name}:0", (1, max(nbytes // 4, 1)), "float32", nbytes)
        kind = "Dense" if inputs else "InputLayer"
        layers.append(LayerNode(name, kind, tuple(f"{i}:0" for i in inputs), (tensor,)))
    model_inputs = tuple(f"{n}:0" for n, ins, _ in specs if not ins)
    outs = tuple(f"{n}:0" for n in (outputs or [specs[-1][0]]))
    return LayerGraph(model, tuple(layers), model_inputs, outs)


def chain_graph(out_bytes: Sequence[int], model: str = "chain") -> LayerGraph:
    """``in -> l1 -> l2 ...``: ``out_bytes[0]`` is the input's size, then each layer's."""
    specs: list[LayerSpec] = [("in", (), out_bytes[0])]
    for i, nbytes in enumerate(out_bytes[1:], 1):
        specs.append((f"l{i}", (specs[-1][0],), nbytes))
    return build_graph(model, specs)


def stats(mean_ms: float, n: int = 10) -> Stats:
    return Stats(n=n, mean_ms=mean_ms, std_ms=0.0, min_ms=mean_ms, max_ms=mean_ms,
                 p50_ms=mean_ms, p90_ms=mean_ms, p95_ms=mean_ms, p99_ms=mean_ms)


def meta(side: str, model: str, model_hash: str) -> ProfileMeta:
    return ProfileMeta(side=side, model_name=model, model_hash=model_hash,
                       input_shapes=((1, 4),), batch_size=1, seed=0, num_threads=1,
                       cpu_affinity=(0,), warmup_runs=1, num_runs=10, host="test",
                       cpu_model="synthetic", os="linux", python_version="3.11",
                       tensorflow_version="none", keras_version="none",
                       dnntune_version="0.1.0", created_utc="2026-01-01T00:00:00Z")


def make_profile(graph: LayerGraph, latencies_ms: Sequence[float],
                 energies_mj: Sequence[float | None] | None = None, side: str = "device",
                 model_hash: str = "hash0", energy: EnergyInfo | None = None) -> Profile:
    """A profile of ``graph`` with the given per-layer mean latencies and energies."""
    energies = list(energies_mj) if energies_mj is not None else [None] * len(graph.layers)
    layers = tuple(LayerProfile(layer, stats(t), e)
                   for layer, t, e in zip(graph.layers, latencies_ms, energies, strict=True))
    total = stats(sum(latencies_ms))
    info = energy or EnergyInfo(label="measured:synthetic", idle_power_mw=0.0,
                                active_power_mw=0.0)
    return Profile(meta=meta(side, graph.model_name, model_hash), layers=layers,
                   model_inputs=graph.model_inputs, model_outputs=graph.model_outputs,
                   end_to_end=total, instrumented=total, overhead_pct=0.0, ratio=1.0,
                   energy=info, param_bytes=0, peak_rss_growth_bytes=0)


def make_profiles(graph: LayerGraph, device_ms: Sequence[float], cloud_ms: Sequence[float],
                  device_mj: Sequence[float | None] | None = None,
                  idle_power_mw: float = 0.0) -> tuple[Profile, Profile]:
    """A (device, cloud) pair of profiles of the same model."""
    info = EnergyInfo(label="measured:synthetic", idle_power_mw=idle_power_mw,
                      active_power_mw=idle_power_mw)
    device = make_profile(graph, device_ms, device_mj, "device", energy=info)
    cloud = make_profile(graph, cloud_ms, None, "cloud",
                         energy=EnergyInfo(label="none", idle_power_mw=0.0,
                                           active_power_mw=0.0))
    return device, cloud


def inception_like_graph(target_layers: int = 313, seed: int = 0) -> LayerGraph:
    """An InceptionV3-sized DAG: a conv stem, then inception modules of four branches
    (1x1; 1x1-3x3; 1x1-3x3-3x3; pool-1x1, each conv followed by BN and ReLU) joined by a
    concatenation, with activations shrinking by stage; ends with pooling and a classifier.
    """
    rng = random.Random(seed)
    specs: list[LayerSpec] = [("input", (), 299 * 299 * 3 * 4)]
    size = 149 * 149 * 32 * 4

    def add(name: str, inputs: Sequence[str], nbytes: int) -> str:
        specs.append((name, tuple(inputs), nbytes))
        return name

    last = "input"
    n_modules = max((target_layers - 13) // 25, 1)  # 1 input + 9 stem + 3 head + 25/module
    for i in range(target_layers - 4 - 25 * n_modules):  # stem: conv-bn-relu triples
        last = add(f"stem{i}", [last], size)
    for module in range(n_modules):
        stage = min(module * 3 // n_modules, 2)
        branch_bytes = [35 * 35 * 64 * 4, 17 * 17 * 192 * 4, 8 * 8 * 320 * 4][stage]
        ends = []
        for b, depth in enumerate((1, 2, 3, 2)):
            x = last
            for d in range(depth):
                for part in ("conv", "bn", "relu"):
                    jitter = rng.choice((1, 1, 2)) if part == "conv" else 1
                    x = add(f"m{module}_b{b}_{part}{d}", [x], branch_bytes // jitter)
            ends.append(x)
        last = add(f"m{module}_concat", ends, branch_bytes * 4)
    last = add("avg_pool", [last], 2048 * 4)
    last = add("dropout", [last], 2048 * 4)
    add("predictions", [last], 1000 * 4)
    return build_graph(f"inception_like_{len(specs)}", specs)


def inception_like_profiles(seed: int = 0) -> tuple[Profile, Profile]:
    """Device/cloud profiles of :func:`inception_like_graph`: convolutions dominate, the
    cloud is about 10x faster, device energy = time x 2 W."""
    graph = inception_like_graph(seed=seed)
    rng = random.Random(seed + 1)
    device_ms = [0.0 if layer.is_input else
                 rng.uniform(2.0, 12.0) if "conv" in layer.name or "stem" in layer.name
                 else rng.uniform(0.05, 0.5) for layer in graph.layers]
    cloud_ms = [t / rng.uniform(8.0, 12.0) for t in device_ms]
    device_mj = [t * 2.0 for t in device_ms]  # 2000 mW x ms / 1000
    return make_profiles(graph, device_ms, cloud_ms, device_mj, idle_power_mw=300.0)


def write_mahimahi(path: Path, stamps_ms: Sequence[int]) -> Path:
    path.write_text("".join(f"{t}\n" for t in stamps_ms))
    return path


def constant_mahimahi(path: Path, packets_per_ms: int, period_ms: int) -> Path:
    """A Mahimahi trace of ``packets_per_ms`` 1500-byte packets every ms:
    ``12 * packets_per_ms`` Mbit/s."""
    return write_mahimahi(path, [t for t in range(1, period_ms + 1)
                                 for _ in range(packets_per_ms)])


def random_graph(rng: random.Random, n_layers: int) -> LayerGraph:
    """A random DAG of ``n_layers`` layers in topological order: one or two inputs (the
    second anywhere in the order), readers of 1-3 earlier tensors, layers with one or two
    outputs, and one or two model outputs."""
    second_input = rng.randrange(1, n_layers) if n_layers >= 3 and rng.random() < 0.3 else -1
    layers: list[LayerNode] = []
    tensors: list[str] = []
    for i in range(n_layers):
        name = f"n{i}"
        n_out = 1 if i == 0 or rng.random() < 0.7 else 2
        outs = tuple(TensorSpec(f"{name}:{k}", (1, 1), "float32",
                                int(10 ** rng.uniform(1, 5.5))) for k in range(n_out))
        if i in (0, second_input):
            layers.append(LayerNode(name, "InputLayer", (), outs[:1]))
            tensors.append(outs[0].name)
            continue
        reads = rng.sample(tensors, k=min(len(tensors), rng.randint(1, 3)))
        layers.append(LayerNode(name, "Dense", tuple(reads), outs))
        tensors.extend(t.name for t in outs)
    inputs = tuple(layer.outputs[0].name for layer in layers if layer.is_input)
    outputs = [layers[-1].outputs[0].name]
    others = [t for layer in layers[:-1] if not layer.is_input for t in layer.outputs]
    if others and rng.random() < 0.3:
        outputs.append(rng.choice(others).name)
    return LayerGraph("random", tuple(layers), inputs, tuple(outputs))


def random_profiles(rng: random.Random, graph: LayerGraph) -> tuple[Profile, Profile]:
    """Random device/cloud profiles of ``graph`` (device energies and idle power too):
    each layer is light or heavy on the phone, and 5-20x faster in the cloud."""
    device_ms = [rng.uniform(0, 2) if rng.random() < 0.6 else rng.uniform(20, 200)
                 for _ in graph.layers]
    cloud_ms = [t / rng.uniform(5, 20) for t in device_ms]
    device_mj = [t * rng.uniform(0.5, 3) for t in device_ms]
    return make_profiles(graph, device_ms, cloud_ms, device_mj,
                         idle_power_mw=rng.uniform(0, 500))
