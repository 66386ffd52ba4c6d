"""Hardware energy meters read from Linux sysfs: RAPL, a battery fuel gauge, INA3221 rails.

Each meter only *reads* (nn-Meter's "profiler" side): a counter meter returns
:class:`CounterSample` (cumulative µJ per zone), a power meter returns
:class:`PowerSample` (instantaneous mW). The pure functions :func:`counter_delta_uj`,
:func:`average_power_from_counters` and :func:`average_power_from_samples` (the
"parser" side) turn a window of samples into an average power. Every meter takes
``root`` (default ``/``) so tests can point it at a temporary tree with the real sysfs
layout, and ``reader`` so a test can simulate a file that only root may read.

A meter that is absent or unreadable raises :class:`MeterUnavailableError` (a
:class:`~dnntune.errors.DnntuneError`) whose one-line message names the path and why.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dnntune.errors import DnntuneError

Reader = Callable[[Path], str]


class MeterUnavailableError(DnntuneError):
    """An energy meter is not present on this machine or cannot be read."""


@dataclass(frozen=True)
class CounterSample:
    """Cumulative energy counters read at one instant (``t_s`` from ``time.perf_counter``)."""

    t_s: float
    energy_uj: tuple[int, ...]


@dataclass(frozen=True)
class PowerSample:
    """One instantaneous power reading, in milliwatts."""

    t_s: float
    power_mw: float


def read_sysfs(path: Path) -> str:
    """Read a sysfs attribute as stripped text (raises ``OSError`` as ``open`` does)."""
    with open(path) as f:
        return f.read().strip()


def _read(path: Path, reader: Reader, denied: str = "is not readable by this user") -> str:
    try:
        return reader(path)
    except FileNotFoundError:
        raise MeterUnavailableError(f"{path} does not exist") from None
    except PermissionError:
        raise MeterUnavailableError(f"{path} {denied}; run as root or use "
                                    "--energy model:<profile>") from None
    except OSError as exc:
        raise MeterUnavailableError(f"cannot read {path} ({exc.strerror or exc})") from None


def _read_int(path: Path, reader: Reader, denied: str = "is not readable by this user") -> int:
    text = _read(path, reader, denied)
    try:
        return int(text)
    except ValueError:
        raise MeterUnavailableError(f"{path}: expected an integer, got {text!r}") from None


def counter_delta_uj(start: int, end: int, max_energy_range_uj: int) -> int:
    """Energy between two reads of one RAPL counter, across at most one wraparound.

    The kernel's ``max_energy_range_uj`` is the counter's top value: intel_rapl_common.c
    computes it as ``rapl_unit_xlate(ENERGY_STATUS_MASK=0xffffffff)``, i.e. the 32-bit
    raw counter's maximum converted to µJ, and ``energy_uj`` then restarts from 0. We use
    ``(end - start) mod (max_energy_range_uj + 1)``; the true period is the maximum plus
    one energy unit (15.3–61 µJ), so a wrap costs at most that much error.

    Example:
        >>> counter_delta_uj(999_990, 15, 999_999)
        25
    """
    return (end - start) % (max_energy_range_uj + 1)


def average_power_from_counters(samples: Sequence[CounterSample],
                                max_energy_range_uj: Sequence[int]) -> float:
    """Average power (mW) from successive reads of cumulative µJ counters.

    Each zone's consecutive deltas are taken modulo its wraparound, so the window may
    contain any number of wraps as long as reads are less than one wrap apart.

    Example:
        >>> s = [CounterSample(0.0, (100,)), CounterSample(0.5, (50,)),
        ...      CounterSample(1.0, (550,))]
        >>> average_power_from_counters(s, (999,))   # 950 + 500 µJ in 1 s
        1.45
    """
    if len(samples) < 2 or samples[-1].t_s <= samples[0].t_s:
        raise DnntuneError("need at least two counter reads spanning a positive time")
    energy_uj = 0
    for a, b in itertools.pairwise(samples):
        energy_uj += sum(counter_delta_uj(x, y, r)
                         for x, y, r in zip(a.energy_uj, b.energy_uj, max_energy_range_uj,
                                            strict=True))
    # µJ / s = µW; / 1000 → mW
    return energy_uj / (samples[-1].t_s - samples[0].t_s) / 1000.0


def average_power_from_samples(samples: Sequence[PowerSample]) -> float:
    """Time-weighted (trapezoidal) average of instantaneous power samples, in mW.

    Example:
        >>> average_power_from_samples([PowerSample(0.0, 100.0), PowerSample(1.0, 300.0),
        ...                             PowerSample(2.0, 300.0)])   # (200 + 300) / 2 s
        250.0
    """
    if not samples:
        raise DnntuneError("no power samples in the window")
    span = samples[-1].t_s - samples[0].t_s
    if span <= 0:
        return sum(s.power_mw for s in samples) / len(samples)
    area = sum((a.power_mw + b.power_mw) / 2 * (b.t_s - a.t_s)
               for a, b in itertools.pairwise(samples))
    return area / span


# Intel SDM vol. 3B (RAPL interfaces): MSR_PKG_ENERGY_STATUS updates about every 1 ms.
# A window must span many updates for the quantisation to vanish: 50 ms gives ≥ 50.
RAPL_SAMPLING_PERIOD_S = 0.05
# MAX17047/MAX17050 datasheet (the gauge of many Nexus phones, per source.android.com
# "Measure device power"): the Current and VCELL registers update every 175.8 ms. 1 s
# spans five updates; gauges we have no datasheet for may be slower, so no shorter.
BATTERY_SAMPLING_PERIOD_S = 1.0
# INA3221 conversion is a few ms (Documentation/hwmon/ina3221.rst: update_interval =
# channels × samples × (bus + shunt conversion time)); we read update_interval when the
# driver exposes it and never go below 10 ms.
INA3221_MIN_SAMPLING_PERIOD_S = 0.01


class RaplMeter:
    """Linux powercap RAPL: sum of the ``package-N`` zones' cumulative ``energy_uj``.

    Only top-level zones ``intel-rapl:N`` named ``package-*`` are summed: their subzones
    (``intel-rapl:N:M``, "core"/"uncore") are already inside the package figure, ``psys``
    contains the packages, and ``intel-rapl-mmio:N`` duplicates the MSR package zone on
    some laptops. DRAM (a subzone, outside the package) is added with ``include_dram``.
    """

    name = "rapl"
    sampling_period_s = RAPL_SAMPLING_PERIOD_S
    poll_interval_s = 0.5  # only to catch wraparounds; the counter itself integrates

    def __init__(self, root: str | Path = "/", *, include_dram: bool = False,
                 reader: Reader = read_sysfs) -> None:
        self._reader = reader
        base = Path(root) / "sys/class/powercap"
        zones = self._find_zones(base, include_dram)
        if not zones:
            raise MeterUnavailableError(f"{base} has no intel-rapl package zones (not an "
                                        "Intel/AMD CPU with RAPL, or not exposed here)")
        self.zones: tuple[tuple[str, Path], ...] = tuple(zones)
        self.max_energy_range_uj: tuple[int, ...] = tuple(
            _read_int(path / "max_energy_range_uj", reader) for _, path in zones)
        self.read_counter()  # fail now, with the path, if energy_uj is root-only

    def _find_zones(self, base: Path, include_dram: bool) -> list[tuple[str, Path]]:
        if not base.is_dir():
            return []
        zones = []
        for path in sorted(base.iterdir(), key=lambda p: _natural_key(p.name)):
            if not re.fullmatch(r"intel-rapl:\d+", path.name):
                continue
            zone_name = _read(path / "name", self._reader)
            if zone_name.startswith("package"):
                zones.append((zone_name, path))
                if include_dram:
                    zones.extend((f"{zone_name}/dram", sub) for sub in self._subzones(path)
                                 if _read(sub / "name", self._reader) == "dram")
        return zones

    @staticmethod
    def _subzones(zone: Path) -> list[Path]:
        return sorted((p for p in zone.iterdir() if re.fullmatch(rf"{zone.name}:\d+", p.name)),
                      key=lambda p: _natural_key(p.name))

    @property
    def label(self) -> str:
        return f"measured:{self.name}"

    @property
    def description(self) -> str:
        return "RAPL " + " + ".join(f"{n} ({p})" for n, p in self.zones)

    def read_counter(self) -> CounterSample:
        values = tuple(_read_int(path / "energy_uj", self._reader, _RAPL_DENIED)
                       for _, path in self.zones)
        return CounterSample(time.perf_counter(), values)


# Linux commit 949dd0104c49 "powercap: restrict energy meter to root access" (Nov 2020,
# in 5.10 and backported to stable kernels) made energy_uj mode 0400.
_RAPL_DENIED = ("is readable only by root (mode 0400 since Linux 5.10 and its stable "
                "backports, the CVE-2020-8694 'Platypus' mitigation)")


class BatteryMeter:
    """Battery fuel gauge via ``/sys/class/power_supply/<battery>``: power = |I| × V.

    ``current_now`` is in µA and ``voltage_now`` in µV. Its sign is not portable: the
    kernel ABI (Documentation/ABI/testing/sysfs-class-power, since 2020) says negative
    means discharging, but the commit that wrote this down notes drivers that report
    discharge as positive or only report magnitudes. So by default (``discharge_sign=
    "auto"``) the meter trusts ``status`` and uses the magnitude while it says
    "Discharging"; with ``"negative"`` or ``"positive"`` the sign is checked instead.
    A battery that is charging (or full, on a charger) does not show the device's draw:
    that is an error, never a silent wrong number.
    """

    name = "battery"
    sampling_period_s = BATTERY_SAMPLING_PERIOD_S
    poll_interval_s = 0.05

    def __init__(self, root: str | Path = "/", *, supply: str | None = None,
                 discharge_sign: str = "auto", reader: Reader = read_sysfs) -> None:
        if discharge_sign not in ("auto", "negative", "positive"):
            raise DnntuneError(f"battery discharge_sign must be auto, negative or positive, "
                               f"got {discharge_sign!r}")
        self._reader = reader
        self.discharge_sign = discharge_sign
        self.path = self._find_supply(Path(root) / "sys/class/power_supply", supply)
        self.read_power()  # fail now if charging or unreadable

    def _find_supply(self, base: Path, supply: str | None) -> Path:
        if supply is not None:
            path = base / supply
            if not (path / "current_now").exists():
                raise MeterUnavailableError(f"{path}/current_now does not exist")
            return path
        if not base.is_dir():
            raise MeterUnavailableError(f"{base} does not exist (no power-supply class)")
        batteries = [p for p in sorted(base.iterdir())
                     if (p / "type").exists() and _read(p / "type", self._reader) == "Battery"
                     and (p / "current_now").exists() and (p / "voltage_now").exists()]
        if not batteries:
            raise MeterUnavailableError(f"{base} has no supply of type Battery with "
                                        "current_now and voltage_now")
        named = [p for p in batteries if p.name == "battery"]  # Android's main gauge
        return (named or batteries)[0]

    @property
    def label(self) -> str:
        return f"measured:{self.name}"

    @property
    def description(self) -> str:
        return f"battery fuel gauge {self.path} (discharge sign: {self.discharge_sign})"

    def read_power(self) -> PowerSample:
        status_file = self.path / "status"
        status = _read(status_file, self._reader) if status_file.exists() else None
        if status in ("Charging", "Full", "Not charging") or (
                self.discharge_sign == "auto" and status not in (None, "Discharging")):
            raise MeterUnavailableError(
                f"{status_file} is {status!r}, not 'Discharging': on a charger the battery "
                "current is not the device's draw; unplug it to measure")
        current_ua = _read_int(self.path / "current_now", self._reader)
        voltage_uv = _read_int(self.path / "voltage_now", self._reader)
        if self.discharge_sign == "auto":
            if status is None:
                raise MeterUnavailableError(f"{status_file} does not exist, so the sign of "
                                            "current_now is unknown; set discharge_sign")
            discharge_ua = abs(current_ua)
        else:
            discharge_ua = -current_ua if self.discharge_sign == "negative" else current_ua
            if discharge_ua < 0:
                raise MeterUnavailableError(
                    f"{self.path / 'current_now'} is {current_ua} µA: charging, for "
                    f"discharge_sign={self.discharge_sign}")
        # µA × µV = pW; / 1e9 → mW
        return PowerSample(time.perf_counter(), discharge_ua * voltage_uv / 1e9)


# Rails that carry the whole module's input: Jetson hwmon (JetPack 5+) and L4T ina3221x.
TOTAL_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


@dataclass(frozen=True)
class Rail:
    """One INA3221 channel: where its bus voltage (mV) and current (mA) are read."""

    label: str
    voltage_mv_path: Path
    current_ma_path: Path


class Ina3221Meter:
    """Jetson INA3221 power rails, power = bus voltage (mV) × current (mA) per rail.

    Rails are found through hwmon (``/sys/class/hwmon/hwmonN`` with ``name`` =
    "ina3221": ``in{1,2,3}_input`` mV, ``curr{1,2,3}_input`` mA, ``in{N}_label``; see
    Documentation/hwmon/ina3221.rst) and, on older L4T releases (Jetson Nano/TX2),
    through the ina3221x IIO driver (``/sys/bus/i2c/drivers/ina3221x/*/iio:device*``:
    ``rail_name_N``, ``in_voltageN_input`` mV, ``in_currentN_input`` mA). ``rails``
    picks the rails to sum; by default the total input rail (VDD_IN or POM_5V_IN) if
    there is one, else every connected rail.
    """

    name = "ina3221"
    poll_interval_s = 0.01

    def __init__(self, root: str | Path = "/", *, rails: Sequence[str] | None = None,
                 reader: Reader = read_sysfs) -> None:
        self._reader = reader
        root = Path(root)
        found, periods = self._hwmon_rails(root / "sys/class/hwmon")
        found += self._iio_rails(root / "sys/bus/i2c/drivers/ina3221x")
        if not found:
            raise MeterUnavailableError(f"no ina3221 rails under {root / 'sys/class/hwmon'} "
                                        f"or {root / 'sys/bus/i2c/drivers/ina3221x'}")
        self.available: tuple[str, ...] = tuple(r.label for r in found)
        self.rails = self._select(found, rails)
        self.sampling_period_s = max([INA3221_MIN_SAMPLING_PERIOD_S, *periods])
        self.read_power()

    def _hwmon_rails(self, base: Path) -> tuple[list[Rail], list[float]]:
        rails, periods = [], []
        chips = sorted(base.glob("hwmon*"), key=lambda p: _natural_key(p.name))
        for chip in chips:
            if not (chip / "name").exists() or _read(chip / "name", self._reader) != "ina3221":
                continue
            if (chip / "update_interval").exists():
                periods.append(_read_int(chip / "update_interval", self._reader) / 1000.0)
            for n in (1, 2, 3):
                volt, curr = chip / f"in{n}_input", chip / f"curr{n}_input"
                enable = chip / f"in{n}_enable"
                if not (volt.exists() and curr.exists()):
                    continue
                if enable.exists() and _read(enable, self._reader) == "0":
                    continue
                label_file = chip / f"in{n}_label"
                label = (_read(label_file, self._reader) if label_file.exists()
                         else f"{chip.name}/channel{n}")
                rails.append(Rail(label, volt, curr))
        return [r for r in rails if r.label != "NC"], periods  # NC: not connected

    def _iio_rails(self, base: Path) -> list[Rail]:
        rails = []
        for dev in sorted(base.glob("*/iio:device*")):
            for n in (0, 1, 2):
                name_file = dev / f"rail_name_{n}"
                if name_file.exists():
                    rails.append(Rail(_read(name_file, self._reader),
                                      dev / f"in_voltage{n}_input", dev / f"in_current{n}_input"))
        return rails

    def _select(self, found: list[Rail], wanted: Sequence[str] | None) -> tuple[Rail, ...]:
        by_label = {r.label: r for r in found}
        if wanted:
            missing = [w for w in wanted if w not in by_label]
            if missing:
                raise MeterUnavailableError(f"ina3221 rail(s) {', '.join(missing)} not "
                                            f"found; available: {', '.join(self.available)}")
            return tuple(by_label[w] for w in wanted)
        for total in TOTAL_INPUT_RAILS:
            if total in by_label:
                return (by_label[total],)
        return tuple(found)

    @property
    def label(self) -> str:
        return f"measured:{self.name}"

    @property
    def description(self) -> str:
        return "INA3221 rails " + " + ".join(r.label for r in self.rails)

    def read_power(self) -> PowerSample:
        total_uw = 0
        for rail in self.rails:
            # mV × mA = µW
            total_uw += (_read_int(rail.voltage_mv_path, self._reader)
                         * _read_int(rail.current_ma_path, self._reader))
        return PowerSample(time.perf_counter(), total_uw / 1000.0)


def _natural_key(name: str) -> list[int | str]:
    """Sort ``hwmon10`` after ``hwmon9`` and ``intel-rapl:10`` after ``intel-rapl:9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
