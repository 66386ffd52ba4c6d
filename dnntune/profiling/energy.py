"""Energy meters behind one small interface, and DNNTune's per-layer energy attribution.

Per-layer energy follows DNNTune (Xia et al., TACO 2019): measure the idle power,
measure the average power while the model runs in a loop (long enough for the meter's
sampling period), and give each layer ``latency × (P_active − P_idle)``. Every figure
is labelled ``measured:<meter>`` (RAPL, battery fuel gauge, INA3221; see
:mod:`dnntune.profiling.meters`) or ``estimated:<profile>`` (a device power profile in
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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from dnntune.errors import DnntuneError
from dnntune.profiling.devices import (  # noqa: F401 - re-exported for callers of the estimator
    CpuCluster,
    DeviceProfile,
    _mapping,
    _power,
    default_profile_dirs,
    find_device_profile,
    load_device_profile,
)
from dnntune.profiling.meters import (
    BatteryMeter,
    CounterSample,
    Ina3221Meter,
    MeterUnavailableError,
    PowerSample,
    RaplMeter,
    average_power_from_counters,
    average_power_from_samples,
)
from dnntune.profiling.profile import EnergyInfo

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


def shipped_profile_dirs() -> tuple[Path, ...]:
    """The power profiles dnntune ships (a server serves only these, never a path)."""
    from dnntune.resources import data_path

    return (data_path("configs", "devices"),)


def check_served_energy(spec: str, field: str, own_profiles: Collection[str] = ()) -> str:
    """An ``--energy`` spec a server accepts from a request (``""`` means ``none``).

    A request may name a meter kind, ``model:<name>`` of a power profile dnntune ships,
    or ``model:<one of own_profiles>``: the preset its operator started an emulated agent with
    (the operator's choice, not the request's). The name is compared with those names
    only, never opened as a path, so the answer is the same whether or not a file of
    that name exists on the server, and no message carries a server path.
    """
    kind, _, arg = spec.partition(":")
    if kind == "model":
        names = sorted(p.stem for d in shipped_profile_dirs() for p in d.glob("*.yaml"))
        if arg not in names and arg not in own_profiles:
            raise DnntuneError(f"{field}: power profile {arg!r} is not one this server ships; "
                               f"it has {', '.join(names)}")
    elif spec not in ("", "none", "auto") and kind not in _HARDWARE:
        raise DnntuneError(f"{field} must be one of {SPECS}, got {spec!r}")
    return spec or "none"


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
