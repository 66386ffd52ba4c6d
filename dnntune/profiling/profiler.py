"""The profiler: warm-up, then N runs of the instrumented and the plain pass, then energy.

The runner (:func:`collect_samples`) touches the model and the meter and returns raw
samples; :func:`build_profile` is pure and turns samples into a :class:`Profile`.
"""

from __future__ import annotations

import os
import platform
import resource
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from dnntune import __version__
from dnntune.errors import DnntuneError
from dnntune.model.loading import LoadedModel, model_hash
from dnntune.profiling.profile import EnergyInfo, LayerProfile, MemoryInfo, Profile, ProfileMeta
from dnntune.profiling.rss import PeakWindow, peak_rss_bytes, rss_bytes
from dnntune.profiling.stats import summarize, undisturbed

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ProfileSettings:
    """How to profile. Flag names follow TFLite's benchmark_model."""

    side: str = "device"
    num_runs: int = 50
    warmup_runs: int = 5
    num_threads: int = 1
    cpu_affinity: tuple[int, ...] = ()
    energy: str = "auto"
    energy_seconds: float = 2.0
    emulation: dict[str, Any] | None = None  # recorded as is: how the device was emulated
    shipped_power_profiles_only: bool = False  # a server: ``model:<name>`` never a user file

    def validate(self) -> list[str]:
        """Raise on impossible settings; return warnings for doubtful ones."""
        if self.side not in ("device", "cloud"):
            raise DnntuneError(f"--side must be device or cloud, got {self.side!r}")
        if self.num_runs < 1:
            raise DnntuneError(f"--num_runs must be at least 1, got {self.num_runs}")
        if self.warmup_runs < 0:
            raise DnntuneError(f"--warmup_runs must be 0 or more, got {self.warmup_runs}")
        if self.num_threads < 1:
            raise DnntuneError(f"--num_threads must be at least 1, got {self.num_threads}")
        if not self.energy_seconds > 0 or self.energy_seconds == float("inf"):
            raise DnntuneError(f"--energy-seconds must be a positive number of seconds, "
                               f"got {self.energy_seconds}")
        cores = os.cpu_count() or 1
        bad = [c for c in self.cpu_affinity if not 0 <= c < cores]
        if bad:
            raise DnntuneError(f"--cpu_affinity: core(s) {bad} do not exist; this machine "
                               f"has cores 0 to {cores - 1}")
        notes = []
        usable = len(self.cpu_affinity) or cores
        if self.num_threads > usable:
            notes.append(f"--num_threads {self.num_threads} is more than the {usable} cores "
                         "available: threads will share cores (recorded in the profile)")
        return notes


@dataclass(frozen=True)
class RawSamples:
    """What the runner measured, unprocessed."""

    stamps_s: np.ndarray            # (runs, layers + 1) in-graph timestamps, seconds
    plain_in_graph_s: np.ndarray    # (runs,) uninstrumented in-graph durations
    plain_wall_s: np.ndarray        # (runs,) uninstrumented call wall-clock
    instrumented_wall_s: np.ndarray  # (runs,) instrumented call wall-clock
    idle_power_mw: float | None
    active_power_mw: float | None
    energy_label: str
    energy_note: str
    peak_rss_growth_bytes: int
    runtime: dict[str, Any]
    memory: MemoryInfo | None = None


def profile_model(loaded: LoadedModel, settings: ProfileSettings,
                  progress: Progress | None = None, meter_root: str = "/",
                  pace: Callable[[], object] | None = None) -> Profile:
    """Profile ``loaded`` on this machine.

    ``pace``, when given, runs once after every timed run (an emulated device's reference,
    :meth:`dnntune.profiling.dilation.DilatedDevice.pace`), so it sees the host as the
    model's runs do.

    Example:
        >>> # profile = profile_model(load_model("mobilenet_v2"), ProfileSettings(num_runs=20))
    """
    for note in settings.validate():
        warnings.warn(note, stacklevel=2)
    raw = collect_samples(loaded, settings, progress, meter_root, pace)
    return build_profile(loaded, settings, raw)


def collect_samples(loaded: LoadedModel, settings: ProfileSettings,
                    progress: Progress | None = None, meter_root: str = "/",
                    pace: Callable[[], object] | None = None) -> RawSamples:
    """Run the model (runner side): timings interleaved run by run, then energy."""
    from dnntune.profiling.energy import get_meter, shipped_profile_dirs
    from dnntune.profiling.instrument import configure_runtime

    runtime = configure_runtime(settings.num_threads, settings.cpu_affinity)
    if runtime["intra_op"] != settings.num_threads:
        warnings.warn(f"TensorFlow was already running in this process, so --num_threads "
                      f"{settings.num_threads} could not be applied; it runs with "
                      f"{runtime['intra_op']} threads (recorded in the profile)", stacklevel=2)
    choice = get_meter(settings.energy, meter_root, threads=settings.num_threads,
                       search_dirs=(shipped_profile_dirs() if settings.shipped_power_profiles_only
                                    else None))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    setup_rss = rss_bytes()
    inputs = loaded.example_inputs()
    instrumented, plain = _passes(loaded)
    report = progress or (lambda stage, done, total: None)
    for i in range(settings.warmup_runs):
        instrumented(inputs)
        plain(inputs)
        report("warm-up", i + 1, settings.warmup_runs)
    stamps, in_graph, plain_wall, inst_wall = [], [], [], []
    for i in range(settings.num_runs):
        # Interleaved, so drift (thermal, other load) hits both passes alike.
        t0 = time.perf_counter()
        _, seconds = plain(inputs)
        t1 = time.perf_counter()
        _, s = instrumented(inputs)
        t2 = time.perf_counter()
        plain_wall.append(t1 - t0)
        inst_wall.append(t2 - t1)
        in_graph.append(seconds)
        stamps.append(s)
        if pace is not None:
            pace()
        report("runs", i + 1, settings.num_runs)
    idle = active = None
    if choice.meter is not None:
        from dnntune.profiling.energy import measure_active_power, measure_idle_power

        report("energy", 0, 1)
        idle = measure_idle_power(choice.meter, settings.energy_seconds).power_mw
        active = measure_active_power(choice.meter, lambda: plain(inputs),
                                      settings.energy_seconds).power_mw
        report("energy", 1, 1)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    memory = inference_memory(loaded, lambda: plain(inputs), setup_rss)
    return RawSamples(np.stack(stamps), np.asarray(in_graph), np.asarray(plain_wall),
                      np.asarray(inst_wall), idle, active, choice.label, choice.note,
                      (rss_after - rss_before) * 1024, runtime, memory)


MEMORY_RUNS = 3


def inference_memory(loaded: LoadedModel, run: Callable[[], object], setup_rss_bytes: int,
                     framework: str = "tensorflow", loaded_bytes: int | None = None,
                     loaded_what: str = "") -> MemoryInfo:
    """Peak resident growth of :data:`MEMORY_RUNS` inferences (``run``) of a warmed-up
    model, and the size of what was loaded: ``loaded_bytes`` (a ``.tflite``), else the
    Keras file, else the weights when the model was built in memory."""
    window = PeakWindow.start()
    for _ in range(MEMORY_RUNS):
        run()
    growth = window.growth_bytes()
    if loaded_bytes is not None:
        size, what = loaded_bytes, loaded_what
    elif loaded.file and os.path.isfile(loaded.file):
        size, what = os.path.getsize(loaded.file), f"Keras file {os.path.basename(loaded.file)}"
    else:
        size, what = _param_bytes(loaded.model), "weights (model built in memory)"
    return MemoryInfo(framework, size, what, window.start_rss_bytes - setup_rss_bytes,
                      growth, peak_rss_bytes(), window.note)


def _passes(loaded: LoadedModel) -> tuple[Callable[[list[np.ndarray]], Any],
                                          Callable[[list[np.ndarray]], Any]]:
    """The instrumented and the plain pass: of the Keras model, or of a TensorFlow graph
    (:mod:`dnntune.model.tf_graph`, a pruned function per name scope)."""
    from dnntune.model.tf_graph import GraphModel
    from dnntune.profiling.instrument import InstrumentedModel, compile_plain

    if isinstance(loaded.model, GraphModel):
        return loaded.model.instrumented(), loaded.model.compile_plain()
    return InstrumentedModel(loaded.model, loaded.graph.atomic), compile_plain(loaded.model)


def build_profile(loaded: LoadedModel, settings: ProfileSettings, raw: RawSamples) -> Profile:
    """Turn raw samples into a :class:`Profile` (pure: no model runs here)."""
    from dnntune.profiling.energy import attribute_energy

    durations_ms = np.diff(raw.stamps_s, axis=1) * 1e3  # layer i: stamp i+1 − stamp i
    in_graph_s = raw.plain_in_graph_s
    if (settings.emulation or {}).get("mechanism") == "dilation":
        # The dilated phone: runs a neighbour on this host slowed down are not the phone's.
        durations_ms = durations_ms[undisturbed(durations_ms.sum(axis=1))]
        in_graph_s = in_graph_s[undisturbed(in_graph_s)]
    graph = loaded.graph
    if durations_ms.shape[1] != len(graph.layers):
        raise DnntuneError(f"internal: {durations_ms.shape[1]} timings for "
                           f"{len(graph.layers)} layers")
    latency = [summarize(durations_ms[:, i]) for i in range(len(graph.layers))]
    end_to_end = summarize(in_graph_s * 1e3)
    wall = summarize(raw.plain_wall_s * 1e3)
    inst = summarize(raw.instrumented_wall_s * 1e3)
    if raw.idle_power_mw is not None and raw.active_power_mw is not None:
        energies, energy = attribute_energy([s.mean_ms for s in latency], raw.idle_power_mw,
                                            raw.active_power_mw, raw.energy_label,
                                            raw.energy_note)
        layer_energy: list[float | None] = list(energies)
    else:
        energy = EnergyInfo("none", 0.0, 0.0, raw.energy_note)
        layer_energy = [None] * len(graph.layers)
    layers = tuple(LayerProfile(node, stats, e)
                   for node, stats, e in zip(graph.layers, latency, layer_energy, strict=True))
    return Profile(
        meta=_meta(loaded, settings, raw.runtime), layers=layers,
        model_inputs=graph.model_inputs, model_outputs=graph.model_outputs,
        end_to_end=end_to_end, instrumented=inst,
        overhead_pct=100.0 * (inst.mean_ms / wall.mean_ms - 1.0),
        ratio=sum(s.mean_ms for s in latency) / end_to_end.mean_ms,
        energy=energy, param_bytes=_param_bytes(loaded.model),
        peak_rss_growth_bytes=int(raw.peak_rss_growth_bytes), end_to_end_wall=wall,
        memory=raw.memory)


def _param_bytes(model: Any) -> int:
    return int(sum(np.dtype(str(w.dtype)).itemsize * int(np.prod(w.shape))
                   for w in model.weights))


def _meta(loaded: LoadedModel, settings: ProfileSettings, runtime: dict[str, Any]
          ) -> ProfileMeta:
    import keras
    import tensorflow as tf

    return ProfileMeta(
        side=settings.side, model_name=loaded.name, model_hash=model_hash(loaded.model),
        input_shapes=tuple(s[1:] for s in loaded.input_shapes), batch_size=loaded.batch_size,
        seed=loaded.seed, num_threads=int(runtime["intra_op"]),
        cpu_affinity=tuple(runtime["cpu_affinity"]), warmup_runs=settings.warmup_runs,
        num_runs=settings.num_runs, host=socket.gethostname(), cpu_model=cpu_model(),
        os=platform.platform(), python_version=sys.version.split()[0],
        tensorflow_version=tf.__version__, keras_version=keras.__version__,
        dnntune_version=__version__,
        created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        emulation=settings.emulation)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
