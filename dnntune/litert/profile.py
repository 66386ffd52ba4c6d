"""Device profiles measured with LiteRT: the head latency ``Tm(p)`` at chosen cuts.

LiteRT fuses layers, so it cannot time Keras layers one by one. Instead each chosen
cut's head (model inputs → the cut's crossing tensors) is split off the Keras model,
converted on its own and timed in ``ai_edge_litert`` (CPU, XNNPACK): warm-up runs,
then N timed ``invoke()`` calls, summarised like every other profile. The result is a
:class:`~dnntune.profiling.profile.Profile` whose ``measured_cuts`` hold those head latencies;
its per-layer latencies are zero (not measured). The cloud side stays a per-layer
TensorFlow profile, which gives the tail time at any cut.

Example:
    >>> # loaded = load_model("mobilenet_v2")
    >>> # profile = profile_litert(loaded, LiteRTSettings(cuts="spread:6"))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dnntune.analysis.measured_cuts import leading_inputs
from dnntune.errors import DnntuneError
from dnntune.litert.convert import (
    LayerMap,
    _output_rank,
    check_precision,
    convert_keras,
    convert_model,
    interpreter,
)
from dnntune.model.graph import LayerGraph
from dnntune.profiling.profile import (
    CutLatency,
    EnergyInfo,
    LayerProfile,
    MeasuredCuts,
    Profile,
    ProfileMeta,
    Stats,
)
from dnntune.profiling.stats import summarize

if TYPE_CHECKING:
    from dnntune.model.loading import LoadedModel

Progress = Callable[[str, int, int], None]
# (interpreter, inputs, warmup_runs, num_runs) -> the head's statistics, ms
HeadTimer = Callable[[Any, Sequence[np.ndarray], int, int], Stats]
NOTHING = Stats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # no layer runs: no time


@dataclass(frozen=True)
class LiteRTSettings:
    """How to measure: precision, which cuts, threads, runs, energy meter."""

    precision: str = "fp32"
    cuts: str = "spread:8"
    num_threads: int = 1
    warmup_runs: int = 5
    num_runs: int = 50
    energy: str = "auto"
    energy_seconds: float = 2.0


def litert_version() -> str:
    from importlib.metadata import version

    return f"ai-edge-litert {version('ai-edge-litert')}"


def choose_cuts(spec: str, layer_map: LayerMap, graph: LayerGraph, field: str = "--cuts"
                ) -> tuple[int, ...]:
    """Cut indices for ``all``, ``spread:K`` or ``N,M,...`` (only cuts LiteRT keeps).

    Cut 0, the cut after the inputs and the last cut are always included. ``field``
    names the flag or request field in a refusal.

    Example:
        >>> # choose_cuts("spread:4", layer_map, graph)  # e.g. (0, 1, 13, 40, 90, 156)
    """
    surviving = layer_map.surviving
    ends = {0, leading_inputs(graph), len(graph.layers)}
    if spec == "all":
        return tuple(sorted(set(surviving) | ends))
    if spec.startswith("spread:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            k = 0
        if k < 1:
            raise DnntuneError(f"{field} {spec!r}: expected spread:K with K >= 1")
        inner = [i for i in surviving if i not in ends]
        picks = {inner[int(j)] for j in np.linspace(0, len(inner) - 1, min(k, len(inner)))
                 } if inner else set()
        return tuple(sorted(picks | ends))
    try:
        wanted = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        wanted = []
    if not wanted:
        raise DnntuneError(f"{field} {spec!r}: expected all, spread:K or cut indices "
                           "N,M,...")
    status = {c.index: c for c in layer_map.cuts}
    for index in wanted:
        if index not in status:
            raise DnntuneError(f"{field}: cut {index} out of range 0..{len(graph.layers)}")
        if not status[index].exists:
            raise DnntuneError(f"{field}: cut {index} (after {status[index].after}) does not "
                               f"exist in LiteRT: {status[index].reason}")
    return tuple(sorted(set(wanted) | ends))


def ordered_outputs(it: Any) -> list[dict[str, Any]]:
    """Output details in the converted function's order (``Identity``, ``Identity_1``…)."""
    return sorted(it.get_output_details(), key=lambda d: _output_rank(d["name"]))


def run_litert(it: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One inference; outputs in the model's order."""
    details = sorted(it.get_input_details(), key=lambda d: _output_rank(d["name"]))
    for d, x in zip(details, inputs, strict=True):
        it.set_tensor(d["index"], np.asarray(x, dtype=d["dtype"]))
    it.invoke()
    return [it.get_tensor(d["index"]) for d in ordered_outputs(it)]


def time_litert(it: Any, inputs: Sequence[np.ndarray], warmup_runs: int,
                num_runs: int) -> np.ndarray:
    """Wall-clock milliseconds of ``num_runs`` ``invoke()`` calls after warm-up."""
    run_litert(it, inputs)
    for _ in range(warmup_runs):
        it.invoke()
    samples = np.empty(num_runs)
    for i in range(num_runs):
        start = time.perf_counter()
        it.invoke()
        samples[i] = (time.perf_counter() - start) * 1e3
    return samples


QUANTIZED = ("int8", "uint8", "int16")


def crossing_bytes(it: Any) -> int:
    """Bytes of a head's outputs as the head computes them.

    An output made by a final ``DEQUANTIZE`` of an integer tensor (an int8 head with
    float outputs) counts as that integer tensor, one byte per value for int8, plus its
    float32 scale and integer zero point (8 bytes): what the phone would send, the cloud
    dequantising. Any other output counts as itself (an fp16 head computes in float32
    on the CPU: only its weights are float16).
    """
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    made_by = {out: op for op in it._get_ops_details() if op["op_name"] != "DELEGATE"
               for out in op["outputs"]}  # the graph's ops, not the delegate's node
    total = 0
    for d in ordered_outputs(it):
        op = made_by.get(d["index"])
        source = d
        if op is not None and op["op_name"] == "DEQUANTIZE" and len(op["inputs"]) == 1:
            quantized = tensors.get(int(op["inputs"][0]))
            if quantized is not None and np.dtype(quantized["dtype"]).name in QUANTIZED:
                source = quantized
        count = int(np.prod(source["shape"]))
        params = 8 if np.dtype(source["dtype"]).name in QUANTIZED else 0
        total += count * np.dtype(source["dtype"]).itemsize + params
    return total


def head_tflite(loaded: LoadedModel, splitter: Any, index: int, precision: str) -> bytes:
    """The head ending at cut ``index`` as a ``.tflite`` model."""
    head = splitter.split(index).head
    return convert_keras(head, loaded.input_shapes, loaded.input_dtypes, precision,
                         loaded.seed, f"{loaded.name} head {index}")


def native_timer(it: Any, inputs: Sequence[np.ndarray], warmup_runs: int,
                 num_runs: int) -> Stats:
    """This machine's ``invoke()`` times of a head, summarised (no emulation)."""
    return summarize(time_litert(it, inputs, warmup_runs, num_runs))


def profile_litert(loaded: LoadedModel, settings: LiteRTSettings,
                   progress: Progress | None = None, timer: HeadTimer = native_timer,
                   field: str = "--cuts") -> Profile:
    """Measure the head latency of each chosen cut in LiteRT (see module docstring).

    ``timer`` times one converted head (an emulated phone's
    :meth:`dnntune.litert.heads.LiteRTPhone.time_head` dilates it); ``field`` names
    ``settings.cuts`` in a refusal.
    """
    import psutil

    from dnntune.model.split import Splitter

    check_precision(settings.precision)
    if settings.num_runs < 1 or settings.warmup_runs < 0:
        raise DnntuneError("--num_runs must be >= 1 and --warmup_runs >= 0")
    rss0 = psutil.Process().memory_info().rss
    full = convert_model(loaded, settings.precision)
    indices = choose_cuts(settings.cuts, full.layer_map, loaded.graph, field)
    splitter = Splitter(loaded.model, loaded.graph)
    inputs = loaded.example_inputs()
    n_in, last = leading_inputs(loaded.graph), len(loaded.graph.layers)
    cuts = []
    full_it = None
    for done, index in enumerate(indices):
        if progress:
            progress("heads", done, len(indices))
        if index <= n_in:
            cuts.append(CutLatency(index, loaded.graph.layers[index - 1].name if index else None,
                                   NOTHING))
            continue
        data = full.tflite if index == last else head_tflite(loaded, splitter, index,
                                                             settings.precision)
        it = interpreter(data, settings.num_threads)
        stats = timer(it, inputs, settings.warmup_runs, settings.num_runs)
        cuts.append(CutLatency(index, loaded.graph.layers[index - 1].name, stats,
                               None if index == last else crossing_bytes(it)))
        full_it = it if index == last else full_it
    if progress:
        progress("heads", len(indices), len(indices))
    energy = _energy(settings, lambda: full_it.invoke() if full_it is not None else None)
    framework = f"{litert_version()} {settings.precision} (XNNPACK CPU)"
    measured = MeasuredCuts("heads", framework,
                            f"each head converted and timed on its own ({settings.warmup_runs}"
                            f" warm-up + {settings.num_runs} runs, {settings.num_threads} "
                            "thread(s)); per-layer latencies not measured (zero)",
                            tuple(cuts))
    profile = _profile(loaded, settings, measured, energy, len(full.tflite),
                       psutil.Process().memory_info().rss - rss0)
    if full_it is None:
        return profile
    from dataclasses import replace

    from dnntune.profiling.profiler import inference_memory

    memory = inference_memory(loaded, full_it.invoke, rss0, "litert", len(full.tflite),
                              f".tflite {settings.precision}")
    return replace(profile, memory=memory)


def _energy(settings: LiteRTSettings, run_full: Callable[[], object]) -> EnergyInfo:
    from dnntune.profiling.energy import (
        PowerModelMeter,
        get_meter,
        measure_active_power,
        measure_idle_power,
    )

    choice = get_meter(settings.energy, threads=settings.num_threads)
    meter = choice.meter
    if meter is None:
        return EnergyInfo("none", 0.0, 0.0, choice.note)
    if isinstance(meter, PowerModelMeter):  # the power model: no measurement needed
        return EnergyInfo(meter.label, meter.idle_power_mw, meter.active_power_mw,
                          choice.note)
    idle = measure_idle_power(meter, settings.energy_seconds)
    active = measure_active_power(meter, run_full, settings.energy_seconds)
    return EnergyInfo(meter.label, idle.power_mw, active.power_mw,
                      f"{choice.note}; active power of the whole LiteRT model")


def profile_meta(loaded: LoadedModel, num_threads: int, warmup_runs: int,
                 num_runs: int) -> ProfileMeta:
    """Device-side metadata for a LiteRT-measured or imported profile."""
    import platform
    import socket
    import sys
    from datetime import UTC, datetime

    import keras
    import tensorflow as tf

    from dnntune import __version__
    from dnntune.model.loading import model_hash
    from dnntune.profiling.profiler import cpu_model

    return ProfileMeta(
        side="device", model_name=loaded.name, model_hash=model_hash(loaded.model),
        input_shapes=tuple(s[1:] for s in loaded.input_shapes), batch_size=loaded.batch_size,
        seed=loaded.seed, num_threads=num_threads, cpu_affinity=(), warmup_runs=warmup_runs,
        num_runs=num_runs, host=socket.gethostname(), cpu_model=cpu_model(),
        os=platform.platform(), python_version=sys.version.split()[0],
        tensorflow_version=tf.__version__, keras_version=keras.__version__,
        dnntune_version=__version__,
        created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def cut_profile(loaded: LoadedModel, meta: ProfileMeta, measured: MeasuredCuts,
                energy: EnergyInfo, model_bytes: int, rss_growth: int = 0,
                layer_latency: Sequence[Stats] | None = None) -> Profile:
    """A device profile holding ``measured`` (``layer_latency`` zero unless given)."""
    graph = loaded.graph
    latency = list(layer_latency) if layer_latency else [NOTHING] * len(graph.layers)
    layers = tuple(LayerProfile(node, stats, None)
                   for node, stats in zip(graph.layers, latency, strict=True))
    whole = measured.cuts[-1].head
    return Profile(meta=meta, layers=layers, model_inputs=graph.model_inputs,
                   model_outputs=graph.model_outputs, end_to_end=whole, instrumented=whole,
                   overhead_pct=0.0, ratio=(sum(s.mean_ms for s in latency) / whole.mean_ms
                                            if whole.mean_ms > 0 else 0.0),
                   energy=energy, param_bytes=model_bytes, peak_rss_growth_bytes=rss_growth,
                   end_to_end_wall=whole, measured_cuts=measured)


def _profile(loaded: LoadedModel, settings: LiteRTSettings, measured: MeasuredCuts,
             energy: EnergyInfo, model_bytes: int, rss_growth: int) -> Profile:
    meta = profile_meta(loaded, settings.num_threads, settings.warmup_runs, settings.num_runs)
    return cut_profile(loaded, meta, measured, energy, model_bytes, max(rss_growth, 0))
