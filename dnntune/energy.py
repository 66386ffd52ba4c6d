"""Energy meters behind one small interface, and DNNTune's per-layer energy attribution.

Per-layer energy follows DNNTune (Xia et al., TACO 2019): measure the idle power,
measure the average power while the model runs in a loop (long enough for the meter's
sampling period), and give each layer ``latency × (P_active − P_idle)``. Every figure
is labelled ``measured:<meter>`` (RAPL, battery fuel gauge, INA3221; see
:mod:`dnntune.meters`) or ``estimated:<profile>`` (a device power profile in
``configs/devices/<profile>.yaml``).

Typical use by the profiler::

    choice = get_meter(spec, root="/", threads=num_threads)
    idle = measure_idle_power(choice.meter, seconds=2.0)
    active = measure_active_power(choice.meter, run_once, min_seconds=2.0)
    energies_mj, info = attribute_energy(latencies_ms, idle.power_mw, active.power_mw,
                                         choice.label, choice.note)
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from dnntune.errors import ConfigError, DnntuneError
from dnntune.meters import (
    BatteryMeter,
    CounterSample,
    Ina3221Meter,
    MeterUnavailableError,
    PowerSample,
    RaplMeter,
    average_power_from_counters,
    average_power_from_samples,
)
from dnntune.profile import EnergyInfo

__all__ = [
    "CounterMeter", "CpuCluster", "DeviceProfile", "EnergyMeter", "MeterChoice",
    "PowerMeter", "PowerModelMeter", "PowerReading", "attribute_energy",
    "find_device_profile", "get_meter", "load_device_profile", "measure_active_power",
    "measure_idle_power", "measure_power",
]


@runtime_checkable
class EnergyMeter(Protocol):
    """What every meter has: a name, a label for its figures, and its sampling period.

    ``sampling_period_s`` is the shortest window the meter can see: a measurement
    window is never shorter.
    """

    name: str
    sampling_period_s: float

    @property
    def label(self) -> str: ...

    @property
    def description(self) -> str: ...


@runtime_checkable
class CounterMeter(EnergyMeter, Protocol):
    """A meter of cumulative energy (RAPL): read before, during and after the window."""

    poll_interval_s: float
    max_energy_range_uj: tuple[int, ...]

    def read_counter(self) -> CounterSample: ...


@runtime_checkable
class PowerMeter(EnergyMeter, Protocol):
    """A meter of instantaneous power (fuel gauge, INA3221): polled during the window."""

    poll_interval_s: float

    def read_power(self) -> PowerSample: ...


@dataclass(frozen=True)
class PowerReading:
    """Average power over one window.

    Attributes:
        power_mw: Average power in milliwatts.
        window_s: Length of the window the samples cover.
        samples: Number of meter readings used.
        runs: How many times the workload ran in the window (0 when idle).
    """

    power_mw: float
    window_s: float
    samples: int
    runs: int


# --- runner: sample a meter while a workload runs -------------------------------------

def measure_power(meter: CounterMeter | PowerMeter,
                  workload: Callable[[], int]) -> PowerReading:
    """Average power while ``workload()`` runs; it returns how many runs it made.

    The meter is read once before and once after the workload and, from a background
    thread, every ``meter.poll_interval_s`` in between (counters: to catch wraparounds;
    power meters: to average). An error inside the thread is re-raised here.
    """
    read: Callable[[], CounterSample | PowerSample]
    if isinstance(meter, CounterMeter):
        read = meter.read_counter
    elif isinstance(meter, PowerMeter):
        read = meter.read_power
    else:
        raise TypeError(f"{meter!r} is neither a counter nor a power meter")
    samples: list[CounterSample | PowerSample] = [read()]
    stop = threading.Event()
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            while not stop.wait(meter.poll_interval_s):
                samples.append(read())
        except DnntuneError as exc:
            errors.append(exc)

    thread = threading.Thread(target=poll, name=f"dnntune-{meter.name}-sampler", daemon=True)
    thread.start()
    try:
        runs = workload()
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]
    samples.append(read())
    window_s = samples[-1].t_s - samples[0].t_s
    if isinstance(meter, CounterMeter):
        power = average_power_from_counters(
            [s for s in samples if isinstance(s, CounterSample)], meter.max_energy_range_uj)
    else:
        power = average_power_from_samples([s for s in samples if isinstance(s, PowerSample)])
    return PowerReading(power, window_s, len(samples), runs)


def measure_idle_power(meter: EnergyMeter, seconds: float = 2.0) -> PowerReading:
    """Average power while this process sleeps for ``max(seconds, sampling period)``.

    For the power-model estimator this returns the profile's idle power at once.

    Example:
        >>> idle = measure_idle_power(PowerModelMeter.from_profile("default"), 1.0)
        >>> idle.power_mw > 0
        True
    """
    if isinstance(meter, PowerModelMeter):
        return PowerReading(meter.idle_power_mw, 0.0, 0, 0)
    window_s = max(seconds, meter.sampling_period_s)

    def sleep() -> int:
        time.sleep(window_s)
        return 0

    return measure_power(_hardware(meter), sleep)


def measure_active_power(meter: EnergyMeter, run_fn: Callable[[], object],
                         min_seconds: float = 2.0) -> PowerReading:
    """Average power while ``run_fn`` loops until ``max(min_seconds, sampling period)``.

    ``run_fn`` runs at least once and is not interrupted, so the window may run past
    the minimum by one call. For the estimator, ``run_fn`` is not run: the profile's
    active power for the configured unit and threads is returned.
    """
    if isinstance(meter, PowerModelMeter):
        return PowerReading(meter.active_power_mw, 0.0, 0, 0)
    window_s = max(min_seconds, meter.sampling_period_s)

    def loop() -> int:
        runs = 0
        start = time.perf_counter()
        while runs == 0 or time.perf_counter() - start < window_s:
            run_fn()
            runs += 1
        return runs

    return measure_power(_hardware(meter), loop)


def _hardware(meter: EnergyMeter) -> CounterMeter | PowerMeter:
    if isinstance(meter, CounterMeter | PowerMeter):
        return meter
    raise TypeError(f"{meter!r} has neither read_counter() nor read_power()")


# --- device power profiles -------------------------------------------------------------

@dataclass(frozen=True)
class CpuCluster:
    """CPU cores of one kind: a shared cost while any runs, plus a cost per busy core."""

    name: str
    cores: int
    active_mw: float
    core_active_mw: float


@dataclass(frozen=True)
class DeviceProfile:
    """A device's power model, from ``configs/devices/<name>.yaml``.

    Attributes:
        name: The file's stem; energy figures are labelled ``estimated:<name>``.
        idle_power_mw: The awake, idle device (subtracted, as in DNNTune).
        cpu_active_mw: Added once while any CPU core is busy.
        clusters: CPU clusters in the order busy threads are placed on them.
        gpu_active_mw: Added while the GPU runs the model, if the profile has one.
    """

    name: str
    description: str
    idle_power_mw: float
    cpu_active_mw: float
    clusters: tuple[CpuCluster, ...]
    gpu_active_mw: float | None
    source: Path

    def active_increment_mw(self, unit: str, threads: int) -> tuple[float, str]:
        """``P_active − P_idle`` for ``unit`` ("cpu" or "gpu") and a note on clamping."""
        if unit == "gpu":
            if self.gpu_active_mw is None:
                raise DnntuneError(f"{self.source}: no 'gpu' section, so unit 'gpu' cannot "
                                   "be estimated")
            return self.gpu_active_mw, ""
        if unit != "cpu":
            raise DnntuneError(f"processing unit must be 'cpu' or 'gpu', got {unit!r}")
        total_cores = sum(c.cores for c in self.clusters)
        note = ""
        if threads > total_cores:
            note = f"{threads} threads > {total_cores} cores in {self.source.name}: estimated " \
                   f"for {total_cores}"
        left, delta = min(threads, total_cores), self.cpu_active_mw
        for cluster in self.clusters:
            k = min(left, cluster.cores)
            if k:
                delta += cluster.active_mw + k * cluster.core_active_mw
            left -= k
        return delta, note


def default_profile_dirs() -> tuple[Path, ...]:
    """``./configs/devices`` (so a user's own profiles win), then the checkout's copy."""
    package_dir = Path(__file__).resolve().parent
    return (Path.cwd() / "configs" / "devices", package_dir.parent / "configs" / "devices")


def find_device_profile(name: str, search_dirs: Sequence[Path] | None = None) -> Path:
    """The YAML file for profile ``name`` (or ``name`` itself if it is a ``.yaml`` path).

    Example:
        >>> find_device_profile("pixel3").name
        'pixel3.yaml'
    """
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise DnntuneError(f"device profile {path} does not exist")
        return path
    dirs = tuple(search_dirs) if search_dirs is not None else default_profile_dirs()
    if "/" in name or "\\" in name or name.startswith("."):
        raise DnntuneError(f"device profile name {name!r} must be a plain name or a .yaml path")
    for d in dirs:
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})
    raise DnntuneError(f"device profile {name!r} not found in {', '.join(map(str, dirs))}; "
                       f"available: {', '.join(known) or 'none'}")


def load_device_profile(path: str | Path) -> DeviceProfile:
    """Read and validate a device power profile; errors name the file and the key.

    Example:
        >>> load_device_profile(find_device_profile("raspberry_pi4")).clusters[0].cores
        4
    """
    import yaml

    path = Path(path)
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DnntuneError(f"{path}: cannot read device profile ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(where, f"not valid YAML ({exc})") from None
    top = _mapping(data, "", where, required=("description", "idle_power_mw", "cpu"),
                   optional=("gpu",))
    cpu = _mapping(top["cpu"], "cpu", where, required=("clusters",), optional=("active_mw",))
    raw_clusters = cpu["clusters"]
    if not isinstance(raw_clusters, list) or not raw_clusters:
        raise ConfigError(where, "key 'cpu.clusters' must be a non-empty list of clusters")
    clusters = []
    for i, raw in enumerate(raw_clusters):
        key = f"cpu.clusters[{i}]"
        c = _mapping(raw, key, where, required=("name", "cores", "active_mw", "core_active_mw"))
        cores = c["cores"]
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise ConfigError(where, f"key '{key}.cores' must be an integer >= 1, got {cores!r}")
        clusters.append(CpuCluster(str(c["name"]), cores, _power(c, "active_mw", key, where),
                                   _power(c, "core_active_mw", key, where)))
    gpu = None
    if top.get("gpu") is not None:
        gpu = _power(_mapping(top["gpu"], "gpu", where, required=("active_mw",)),
                     "active_mw", "gpu", where)
    if not isinstance(top["description"], str):
        raise ConfigError(where, f"key 'description' must be text, got {top['description']!r}")
    return DeviceProfile(path.stem, top["description"], _power(top, "idle_power_mw", "", where),
                         _power(cpu, "active_mw", "cpu", where, default=0.0), tuple(clusters),
                         gpu, path)


def _mapping(data: object, key: str, where: str, required: Sequence[str] = (),
             optional: Sequence[str] = ()) -> dict[str, object]:
    name = f"key '{key}'" if key else "the document"
    if not isinstance(data, dict):
        raise ConfigError(where, f"{name} must be a mapping, got {type(data).__name__}")
    prefix = f"{key}." if key else ""
    for k in data:  # unknown keys first: a misspelt key is also a "missing" one
        if k not in required and k not in optional:
            raise ConfigError(where, f"unknown key '{prefix}{k}' (expected "
                                     f"{', '.join(map(repr, [*required, *optional]))})")
    for k in required:
        if k not in data:
            raise ConfigError(where, f"missing key '{prefix}{k}'")
    return data


def _power(data: dict[str, object], k: str, key: str, where: str,
           default: float | None = None) -> float:
    full = f"{key}.{k}" if key else k
    value = data.get(k, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise ConfigError(where, f"key '{full}' must be a power in mW (a number >= 0), "
                                 f"got {value!r}")
    return float(value)


# --- estimator -------------------------------------------------------------------------

class PowerModelMeter:
    """The power-model "meter": active and idle power from a device power profile.

    Active power for ``unit="cpu"`` and ``threads`` t fills the profile's CPU clusters
    in their listed order (big cores first, as a scheduler places busy threads):
    ``P_active = P_idle + cpu.active_mw + Σ_used clusters (active_mw + k × core_active_mw)``
    with k the threads placed on that cluster. ``unit="gpu"`` adds ``gpu.active_mw``.
    """

    name = "model"
    sampling_period_s = 0.0

    def __init__(self, profile: DeviceProfile, *, threads: int = 1, unit: str = "cpu") -> None:
        if threads < 1:
            raise DnntuneError(f"threads must be >= 1, got {threads}")
        self.profile = profile
        self.threads = threads
        self.unit = unit
        delta_mw, self.note = profile.active_increment_mw(unit, threads)
        self.idle_power_mw = profile.idle_power_mw
        self.active_power_mw = profile.idle_power_mw + delta_mw

    @classmethod
    def from_profile(cls, name: str, *, threads: int = 1, unit: str = "cpu",
                     search_dirs: Sequence[Path] | None = None) -> PowerModelMeter:
        """Load ``configs/devices/<name>.yaml`` (see :func:`find_device_profile`)."""
        profile = load_device_profile(find_device_profile(name, search_dirs))
        return cls(profile, threads=threads, unit=unit)

    @property
    def label(self) -> str:
        return f"estimated:{self.profile.name}"

    @property
    def description(self) -> str:
        return (f"power model {self.profile.source} ({self.profile.description}; "
                f"{self.unit}, {self.threads} thread(s))")


# --- registry --------------------------------------------------------------------------

@dataclass(frozen=True)
class MeterChoice:
    """The meter a spec resolved to (``None`` for ``none``) and a note saying why."""

    meter: EnergyMeter | None
    note: str

    @property
    def label(self) -> str:
        return "none" if self.meter is None else self.meter.label


def _rapl(root: Path, arg: str) -> EnergyMeter:
    if arg not in ("", "dram"):
        raise DnntuneError(f"--energy rapl takes no argument or 'dram', got {arg!r}")
    return RaplMeter(root, include_dram=arg == "dram")


_HARDWARE: dict[str, Callable[[Path, str], EnergyMeter]] = {
    "rapl": _rapl,
    "battery": lambda root, arg: BatteryMeter(root, discharge_sign=arg or "auto"),
    "ina3221": lambda root, arg: Ina3221Meter(root, rails=arg.split("+") if arg else None),
}
AUTO_ORDER = ("rapl", "battery", "ina3221")
SPECS = ("auto|none|rapl[:dram]|battery[:negative|positive]|ina3221[:RAIL+RAIL...]|"
         "model:<profile>")


def get_meter(spec: str, root: str | Path = "/", *, threads: int = 1, unit: str = "cpu",
              search_dirs: Sequence[Path] | None = None) -> MeterChoice:
    """Resolve an ``--energy`` spec to a meter.

    ``auto`` tries RAPL, the battery and INA3221 in that order and falls back to the
    ``default`` power profile, saying in the note why each meter was passed over. A
    named meter that is absent or unreadable raises a one-line :class:`DnntuneError`
    naming the path and the reason. Hardware meters take an optional argument:
    ``rapl:dram`` adds DRAM zones, ``battery:negative`` or ``battery:positive`` fixes
    the sign of discharge current, ``ina3221:VDD_CPU_GPU_CV+VDD_SOC`` picks rails.
    ``threads`` and ``unit`` feed the estimator.

    Example:
        >>> choice = get_meter("model:default", threads=2)
        >>> choice.label
        'estimated:default'
    """
    root = Path(root)
    kind, _, arg = spec.partition(":")
    if spec == "none":
        return MeterChoice(None, "energy not measured (--energy none)")
    if kind == "model":
        if not arg:
            raise DnntuneError(f"--energy model:<profile> needs a profile name, got {spec!r}")
        meter = PowerModelMeter.from_profile(arg, threads=threads, unit=unit,
                                             search_dirs=search_dirs)
        return MeterChoice(meter, _join(meter.description, meter.note))
    if kind in _HARDWARE:
        meter_hw = _HARDWARE[kind](root, arg)
        return MeterChoice(meter_hw, meter_hw.description)
    if spec == "auto":
        reasons = []
        for name in AUTO_ORDER:
            try:
                meter_hw = _HARDWARE[name](root, "")
            except MeterUnavailableError as exc:
                reasons.append(f"{name}: {exc}")
                continue
            return MeterChoice(meter_hw, _join(f"auto chose {meter_hw.description}", *reasons))
        model = PowerModelMeter.from_profile("default", threads=threads, unit=unit,
                                             search_dirs=search_dirs)
        return MeterChoice(model, _join("no hardware energy meter, so energy is estimated "
                                        f"from {model.profile.source}", *reasons, model.note))
    raise DnntuneError(f"--energy must be one of {SPECS}, got {spec!r}")


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# --- attribution -----------------------------------------------------------------------

def attribute_energy(latencies_ms: Sequence[float], idle_power_mw: float,
                     active_power_mw: float, label: str,
                     note: str = "") -> tuple[tuple[float, ...], EnergyInfo]:
    """DNNTune's per-layer energy: ``energy_mj = latency_ms × (P_active − P_idle) / 1000``.

    Units: mW × ms = µJ, so dividing by 1000 gives mJ. If noise puts the active power
    below idle, layer energies are 0 and the note says so.

    Example:
        >>> energies, info = attribute_energy([2.0, 0.5], 500.0, 1500.0, "measured:rapl")
        >>> energies                       # 2 ms × 1000 mW = 2000 µJ = 2 mJ
        (2.0, 0.5)
    """
    for i, t in enumerate(latencies_ms):
        if not (math.isfinite(t) and t >= 0):
            raise DnntuneError(f"layer {i} latency must be a finite number >= 0 ms, got {t!r}")
    for what, p in (("idle", idle_power_mw), ("active", active_power_mw)):
        if not (math.isfinite(p) and p >= 0):
            raise DnntuneError(f"{what} power must be a finite number >= 0 mW, got {p!r}")
    delta_mw = active_power_mw - idle_power_mw
    if delta_mw < 0:
        note = _join(note, f"active power {active_power_mw:.1f} mW is below idle "
                           f"{idle_power_mw:.1f} mW (meter noise?): layer energies set to 0")
        delta_mw = 0.0
    energies = tuple(t * delta_mw / 1000.0 for t in latencies_ms)
    return energies, EnergyInfo(label, idle_power_mw, active_power_mw, note)
