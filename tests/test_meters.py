"""The sysfs meters on temporary trees laid out as the kernel lays out the real ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dnntune.errors import DnntuneError
from dnntune.profiling.meters import (
    BatteryMeter,
    CounterSample,
    Ina3221Meter,
    MeterUnavailableError,
    PowerSample,
    RaplMeter,
    average_power_from_counters,
    average_power_from_samples,
    counter_delta_uj,
    read_sysfs,
)

RAPL_RANGE_UJ = 262_143_328_850  # max_energy_range_uj of a real package zone


def write(root: Path, rel: str, text: str | int) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{text}\n")
    return path


def rapl_zone(root: Path, rel: str, name: str, energy_uj: int) -> Path:
    zone = root / "sys/devices/virtual/powercap/intel-rapl" / rel
    write(zone, "name", name)
    write(zone, "energy_uj", energy_uj)
    write(zone, "max_energy_range_uj", RAPL_RANGE_UJ)
    write(zone, "enabled", 1)
    return zone


def make_rapl(root: Path) -> None:
    """Two packages with core/uncore/dram subzones, psys, and an MMIO duplicate.

    As in the kernel, /sys/class/powercap lists every zone, subzones included, as a
    symlink into /sys/devices/virtual/powercap.
    """
    zones = {
        "intel-rapl:0": rapl_zone(root, "intel-rapl:0", "package-0", 1_000_000),
        "intel-rapl:0:0": rapl_zone(root, "intel-rapl:0/intel-rapl:0:0", "core", 600_000),
        "intel-rapl:0:1": rapl_zone(root, "intel-rapl:0/intel-rapl:0:1", "uncore", 100_000),
        "intel-rapl:1": rapl_zone(root, "intel-rapl:1", "package-1", 2_000_000),
        "intel-rapl:1:0": rapl_zone(root, "intel-rapl:1/intel-rapl:1:0", "dram", 300_000),
        "intel-rapl:2": rapl_zone(root, "intel-rapl:2", "psys", 9_000_000),
    }
    mmio = root / "sys/devices/virtual/powercap/intel-rapl-mmio/intel-rapl-mmio:0"
    write(mmio, "name", "package-0")
    write(mmio, "energy_uj", 1_000_000)
    zones["intel-rapl-mmio:0"] = mmio
    cls = root / "sys/class/powercap"
    cls.mkdir(parents=True)
    (cls / "intel-rapl").symlink_to(root / "sys/devices/virtual/powercap/intel-rapl")
    for name, target in zones.items():
        (cls / name).symlink_to(os.path.relpath(target, cls))


ZONE0 = "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0"
ZONE1 = "sys/devices/virtual/powercap/intel-rapl/intel-rapl:1"


# --- RAPL --------------------------------------------------------------------------


def test_rapl_sums_packages_only(tmp_path: Path) -> None:
    make_rapl(tmp_path)
    meter = RaplMeter(tmp_path)
    assert [name for name, _ in meter.zones] == ["package-0", "package-1"]
    assert meter.read_counter().energy_uj == (1_000_000, 2_000_000)
    assert meter.max_energy_range_uj == (RAPL_RANGE_UJ, RAPL_RANGE_UJ)
    assert meter.label == "measured:rapl"
    assert "package-0" in meter.description and "package-1" in meter.description


def test_rapl_include_dram_adds_the_dram_subzone(tmp_path: Path) -> None:
    make_rapl(tmp_path)
    meter = RaplMeter(tmp_path, include_dram=True)
    assert [name for name, _ in meter.zones] == ["package-0", "package-1", "package-1/dram"]
    assert meter.read_counter().energy_uj == (1_000_000, 2_000_000, 300_000)


def test_rapl_counter_follows_the_file(tmp_path: Path) -> None:
    make_rapl(tmp_path)
    meter = RaplMeter(tmp_path)
    write(tmp_path, f"{ZONE0}/energy_uj", 1_500_000)
    assert meter.read_counter().energy_uj == (1_500_000, 2_000_000)


def test_counter_delta_wraps_at_max_energy_range() -> None:
    assert counter_delta_uj(1_000, 4_000, RAPL_RANGE_UJ) == 3_000
    # 851 µJ up to the top value (RANGE − 262_143_328_000 = 850, plus the step to 0), then 500
    assert counter_delta_uj(262_143_328_000, 500, RAPL_RANGE_UJ) == 1_351
    assert counter_delta_uj(RAPL_RANGE_UJ, 0, RAPL_RANGE_UJ) == 1
    assert counter_delta_uj(7, 7, RAPL_RANGE_UJ) == 0


def test_average_power_from_counters_across_a_wrap_per_zone() -> None:
    # zone 0 wraps (99_000 → 1_000 with range 99_999: 1_000 + 1_000 µJ), zone 1 does not
    samples = [CounterSample(10.0, (99_000, 5_000)), CounterSample(10.5, (1_000, 6_000)),
               CounterSample(11.0, (2_000, 7_000))]
    # (2_000 + 1_000) + (1_000 + 1_000) µJ over 1 s = 5_000 µW = 5 mW
    assert average_power_from_counters(samples, (99_999, 99_999)) == pytest.approx(5.0)
    with pytest.raises(DnntuneError, match="two counter reads"):
        average_power_from_counters(samples[:1], (99_999, 99_999))


def test_rapl_root_only_energy_uj_names_path_and_cve(tmp_path: Path) -> None:
    """Since Linux 5.10 energy_uj is mode 0400 (root-only).

    ``chmod 000`` cannot simulate that here: tests may run as root, and root reads
    files whatever their mode. So the meter's injectable reader raises PermissionError
    for energy_uj exactly as open() does for a non-root user.
    """
    make_rapl(tmp_path)

    def non_root_reader(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return read_sysfs(path)

    with pytest.raises(MeterUnavailableError) as err:
        RaplMeter(tmp_path, reader=non_root_reader)
    message = str(err.value)
    assert f"{tmp_path}/sys/class/powercap/intel-rapl:0/energy_uj" in message
    assert "only by root" in message and "Linux 5.10" in message and "CVE-2020-8694" in message
    assert "model:<profile>" in message
    assert "\n" not in message


def test_rapl_unreadable_energy_uj_directory(tmp_path: Path) -> None:
    """A path that cannot be read as a file (here a directory) is named with the reason."""
    make_rapl(tmp_path)
    energy = tmp_path / ZONE1 / "energy_uj"
    energy.unlink()
    energy.mkdir()
    with pytest.raises(MeterUnavailableError, match=r"intel-rapl:1/energy_uj \(Is a directory\)"):
        RaplMeter(tmp_path)


def test_rapl_garbage_counter(tmp_path: Path) -> None:
    make_rapl(tmp_path)
    write(tmp_path, f"{ZONE0}/energy_uj", "n/a")
    with pytest.raises(MeterUnavailableError, match="expected an integer, got 'n/a'"):
        RaplMeter(tmp_path)


def test_rapl_absent(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailableError, match=f"{tmp_path}/sys/class/powercap has no"):
        RaplMeter(tmp_path)
    (tmp_path / "sys/class/powercap").mkdir(parents=True)  # e.g. masked in a container
    with pytest.raises(MeterUnavailableError, match="no intel-rapl package zones"):
        RaplMeter(tmp_path)


# --- battery fuel gauge --------------------------------------------------------------

BAT = "sys/class/power_supply/battery"


def make_battery(root: Path, current_ua: int, voltage_uv: int = 3_800_000,
                 status: str | None = "Discharging", name: str = "battery") -> Path:
    base = root / "sys/class/power_supply" / name
    write(base, "type", "Battery")
    write(base, "current_now", current_ua)
    write(base, "voltage_now", voltage_uv)
    if status is not None:
        write(base, "status", status)
    return base


@pytest.mark.parametrize("current_ua", [-500_000, 500_000], ids=["negative", "positive"])
def test_battery_auto_uses_magnitude_while_discharging(tmp_path: Path, current_ua: int) -> None:
    make_battery(tmp_path, current_ua)
    meter = BatteryMeter(tmp_path)
    # 0.5 A × 3.8 V = 1.9 W
    assert meter.read_power().power_mw == pytest.approx(1900.0)
    assert meter.label == "measured:battery"


def test_battery_explicit_sign_conventions(tmp_path: Path) -> None:
    make_battery(tmp_path, -250_000, 4_000_000, status=None)
    assert BatteryMeter(tmp_path, discharge_sign="negative").read_power().power_mw == \
        pytest.approx(1000.0)
    with pytest.raises(MeterUnavailableError, match=r"current_now is -250000 µA: charging"):
        BatteryMeter(tmp_path, discharge_sign="positive")
    write(tmp_path, f"{BAT}/current_now", 250_000)
    assert BatteryMeter(tmp_path, discharge_sign="positive").read_power().power_mw == \
        pytest.approx(1000.0)


@pytest.mark.parametrize("status", ["Charging", "Full", "Not charging"])
def test_battery_on_charger_is_an_error(tmp_path: Path, status: str) -> None:
    make_battery(tmp_path, 300_000, status=status)
    with pytest.raises(MeterUnavailableError) as err:
        BatteryMeter(tmp_path)
    assert f"{tmp_path}/{BAT}/status is {status!r}" in str(err.value)
    assert "unplug" in str(err.value)


def test_battery_unknown_status_needs_an_explicit_sign(tmp_path: Path) -> None:
    make_battery(tmp_path, -300_000, 4_000_000, status="Unknown")
    with pytest.raises(MeterUnavailableError, match="status is 'Unknown'"):
        BatteryMeter(tmp_path)
    assert BatteryMeter(tmp_path, discharge_sign="negative").read_power().power_mw == \
        pytest.approx(1200.0)
    write(tmp_path, f"{BAT}/status", "Charging")
    with pytest.raises(MeterUnavailableError, match="status is 'Charging'"):
        BatteryMeter(tmp_path, discharge_sign="negative")


def test_battery_auto_without_status_cannot_tell_the_sign(tmp_path: Path) -> None:
    make_battery(tmp_path, -300_000, status=None)
    with pytest.raises(MeterUnavailableError, match="status does not exist.*discharge_sign"):
        BatteryMeter(tmp_path)


def test_battery_picks_the_main_gauge_or_the_named_supply(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/power_supply/ac/type", "Mains")
    make_battery(tmp_path, -100_000, name="bms")
    make_battery(tmp_path, -200_000, name="battery")
    assert BatteryMeter(tmp_path).path.name == "battery"
    assert BatteryMeter(tmp_path, supply="bms").read_power().power_mw == pytest.approx(380.0)
    with pytest.raises(MeterUnavailableError, match="power_supply/ac/current_now does not"):
        BatteryMeter(tmp_path, supply="ac")


def test_battery_absent_or_bad_option(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailableError, match="power_supply does not exist"):
        BatteryMeter(tmp_path)
    write(tmp_path, "sys/class/power_supply/ac/type", "Mains")
    with pytest.raises(MeterUnavailableError, match="no supply of type Battery"):
        BatteryMeter(tmp_path)
    with pytest.raises(DnntuneError, match="discharge_sign must be"):
        BatteryMeter(tmp_path, discharge_sign="down")


# --- INA3221 ---------------------------------------------------------------------------

def make_ina3221(root: Path, chip: str = "hwmon3", labels: tuple[str | None, ...] = (
        "VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"), update_interval_ms: int | None = None) -> Path:
    write(root, "sys/class/hwmon/hwmon0/name", "coretemp")
    base = root / "sys/class/hwmon" / chip
    write(base, "name", "ina3221")
    readings = [(5_000, 1_200), (5_000, 300), (5_000, 200)]  # mV, mA
    for n, (label, (mv, ma)) in enumerate(zip(labels, readings, strict=True), start=1):
        if label is not None:
            write(base, f"in{n}_label", label)
        write(base, f"in{n}_input", mv)
        write(base, f"curr{n}_input", ma)
        write(base, f"in{n}_enable", 1)
        write(base, f"shunt{n}_resistor", 5_000)
    if update_interval_ms is not None:
        write(base, "update_interval", update_interval_ms)
    return base


def test_ina3221_defaults_to_the_total_input_rail(tmp_path: Path) -> None:
    make_ina3221(tmp_path)
    meter = Ina3221Meter(tmp_path)
    assert meter.available == ("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC")
    assert [r.label for r in meter.rails] == ["VDD_IN"]
    assert meter.read_power().power_mw == pytest.approx(6000.0)  # 5 V × 1.2 A
    assert meter.label == "measured:ina3221"
    assert meter.sampling_period_s == pytest.approx(0.01)


def test_ina3221_chosen_rails_are_summed(tmp_path: Path) -> None:
    make_ina3221(tmp_path)
    meter = Ina3221Meter(tmp_path, rails=["VDD_CPU_GPU_CV", "VDD_SOC"])
    assert meter.read_power().power_mw == pytest.approx(2500.0)  # 5 V × (0.3 + 0.2) A
    with pytest.raises(MeterUnavailableError, match=r"rail\(s\) VDD_GPU not found; "
                                                    r"available: VDD_IN, VDD_CPU_GPU_CV"):
        Ina3221Meter(tmp_path, rails=["VDD_GPU"])


def test_ina3221_without_total_rail_sums_connected_enabled_rails(tmp_path: Path) -> None:
    base = make_ina3221(tmp_path, labels=(None, "NC", "VDD_SOC"))
    write(base, "in3_enable", 0)
    meter = Ina3221Meter(tmp_path)
    assert [r.label for r in meter.rails] == ["hwmon3/channel1"]
    write(base, "in3_enable", 1)
    meter = Ina3221Meter(tmp_path)
    assert [r.label for r in meter.rails] == ["hwmon3/channel1", "VDD_SOC"]
    assert meter.read_power().power_mw == pytest.approx(7000.0)  # 5 V × (1.2 + 0.2) A


def test_ina3221_sampling_period_follows_update_interval(tmp_path: Path) -> None:
    make_ina3221(tmp_path, update_interval_ms=150)
    assert Ina3221Meter(tmp_path).sampling_period_s == pytest.approx(0.15)


def test_ina3221_legacy_l4t_iio_rails(tmp_path: Path) -> None:
    """Jetson Nano on L4T 32.x: the ina3221x IIO driver, rails named POM_5V_*."""
    dev = tmp_path / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for n, (name, mv, ma) in enumerate([("POM_5V_IN", 5_000, 800), ("POM_5V_GPU", 5_000, 100),
                                        ("POM_5V_CPU", 5_000, 300)]):
        write(dev, f"rail_name_{n}", name)
        write(dev, f"in_voltage{n}_input", mv)
        write(dev, f"in_current{n}_input", ma)
        write(dev, f"in_power{n}_input", mv * ma // 1000)
    meter = Ina3221Meter(tmp_path)
    assert [r.label for r in meter.rails] == ["POM_5V_IN"]
    assert meter.read_power().power_mw == pytest.approx(4000.0)
    assert Ina3221Meter(tmp_path, rails=["POM_5V_CPU"]).read_power().power_mw == \
        pytest.approx(1500.0)


def test_ina3221_absent(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/hwmon/hwmon0/name", "coretemp")
    with pytest.raises(MeterUnavailableError, match="no ina3221 rails under"):
        Ina3221Meter(tmp_path)


def test_average_power_from_samples_is_time_weighted() -> None:
    # 100 mW for 1 s ramping to 300 mW, then 300 mW for 3 s: (200 + 900) / 4 s
    samples = [PowerSample(0.0, 100.0), PowerSample(1.0, 300.0), PowerSample(4.0, 300.0)]
    assert average_power_from_samples(samples) == pytest.approx(275.0)
    assert average_power_from_samples([PowerSample(2.0, 42.0)]) == 42.0
    with pytest.raises(DnntuneError, match="no power samples"):
        average_power_from_samples([])
