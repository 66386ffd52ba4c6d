"""Energy: the sampling runner, the registry, device profiles, the estimator, attribution."""

from __future__ import annotations

import doctest
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import dnntune.profiling.energy
import dnntune.profiling.meters
from dnntune.errors import ConfigError, DnntuneError
from dnntune.profiling.energy import (
    CounterMeter,
    PowerMeter,
    PowerModelMeter,
    attribute_energy,
    find_device_profile,
    get_meter,
    load_device_profile,
    measure_active_power,
    measure_idle_power,
)
from dnntune.profiling.meters import BatteryMeter, Ina3221Meter, MeterUnavailableError, RaplMeter
from dnntune.profiling.profile import EnergyInfo
from tests.test_meters import BAT, ZONE0, make_battery, make_ina3221, make_rapl, write

REPO_DEVICES = Path(__file__).resolve().parent.parent / "configs" / "devices"


class Rewriter:
    """Rewrites a sysfs file from another thread, as the kernel updates it."""

    def __init__(self, path: Path, value_at: Callable[[float], object],
                 every_s: float = 0.002) -> None:
        self.path, self.value_at, self.every_s = path, value_at, every_s
        self.t0 = time.perf_counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        # (perf_counter when written, value): what the file really held, and when. On a
        # loaded host this thread can be late by 100 ms, so a test's truth comes from here,
        # not from the schedule in value_at.
        self.writes: list[tuple[float, object]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            value = self.value_at(time.perf_counter() - self.t0)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(f"{value}\n")
            tmp.replace(self.path)  # atomic, so a reader never sees a half-written file
            self.writes.append((time.perf_counter(), value))
            time.sleep(self.every_s)

    def mean_over(self, start: float, end: float, scale: Callable[[object], float]) -> float:
        """Time-weighted mean of ``scale(value)`` the file held between two perf_counter times."""
        area = 0.0
        for (t, value), (t_next, _) in itertools.pairwise([*self.writes, (end, None)]):
            lo, hi = max(t, start), min(t_next, end)
            if hi > lo:
                area += scale(value) * (hi - lo)
        return area / (end - start)

    def __enter__(self) -> Rewriter:
        self.run_once()
        self.thread.start()
        return self

    def run_once(self) -> None:
        self.path.write_text(f"{self.value_at(0.0)}\n")
        self.writes.append((time.perf_counter(), self.value_at(0.0)))

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# --- the sampling runner -------------------------------------------------------------

def test_rapl_power_from_a_counter_rewritten_by_another_thread(tmp_path: Path) -> None:
    """1 W into a counter that wraps every 0.3 s: the average must still be 1 W.

    (A wrap every 0.1 s was missed whole when a busy host stalled the polling thread for
    longer than that: no meter can see a wrap it never polled inside.)
    """
    make_rapl(tmp_path)
    range_uj = 299_999
    write(tmp_path, f"{ZONE0}/max_energy_range_uj", range_uj)
    meter = RaplMeter(tmp_path)
    assert isinstance(meter, CounterMeter)
    meter.poll_interval_s = 0.02  # several reads per wrap period
    rate_uj_per_s = 1_000_000
    with Rewriter(tmp_path / ZONE0 / "energy_uj",
                  lambda t: int(rate_uj_per_s * t) % (range_uj + 1)):
        reading = measure_idle_power(meter, seconds=1.0)  # three wraps or more
    # package-1 is constant, so all power comes from package-0: 1000 mW
    assert reading.power_mw == pytest.approx(1000.0, rel=0.15)
    assert reading.window_s >= 1.0
    assert reading.samples >= 10
    assert reading.runs == 0


def test_battery_power_changing_mid_window(tmp_path: Path) -> None:
    """1 W, then 3 W in the middle half of the window, then 1 W: 2 W on average.

    Reading only at the window's ends would see 1 W: the answer needs the polling.
    """
    make_battery(tmp_path, -250_000, 4_000_000)
    meter = BatteryMeter(tmp_path)
    meter.poll_interval_s = 0.005
    meter.sampling_period_s = 0.4  # keep the test short; the real gauge needs 1 s
    with Rewriter(tmp_path / BAT / "current_now",
                  lambda t: -750_000 if 0.1 <= t < 0.3 else -250_000) as rewriter:
        start = time.perf_counter()
        reading = measure_idle_power(meter, seconds=0.0)
        end = time.perf_counter()
    assert reading.window_s >= 0.4
    # 2 W when the rewriter keeps its schedule; the file's own history when the host is busy
    truth = rewriter.mean_over(start, end, lambda ua: -float(ua) * 4.0 / 1000.0)  # type: ignore[arg-type]
    assert truth > 1500.0  # the 3 W stretch fell inside the window: the ends alone read 1 W
    assert reading.power_mw == pytest.approx(truth, rel=0.15)


def test_window_never_shorter_than_sampling_period(tmp_path: Path) -> None:
    make_ina3221(tmp_path, update_interval_ms=150)
    meter = Ina3221Meter(tmp_path)
    reading = measure_idle_power(meter, seconds=0.01)
    assert reading.window_s >= 0.15
    assert reading.power_mw == pytest.approx(6000.0)


def test_active_power_loops_run_fn_for_the_window(tmp_path: Path) -> None:
    make_ina3221(tmp_path)
    meter = Ina3221Meter(tmp_path)
    assert isinstance(meter, PowerMeter)
    curr = tmp_path / "sys/class/hwmon/hwmon3/curr1_input"
    calls = []

    def run_once() -> None:  # the "model" draws 2 A while it runs
        tmp = curr.with_suffix(".tmp")
        tmp.write_text("2000\n")
        tmp.replace(curr)  # atomic: sysfs never shows a half-written value
        time.sleep(0.02)
        calls.append(1)

    reading = measure_active_power(meter, run_once, min_seconds=0.2)
    assert reading.runs == len(calls) >= 3
    assert reading.window_s >= 0.2
    # the first read, before the first run, still sees 1.2 A: the average lies between
    assert 6000.0 < reading.power_mw <= 10000.0
    assert reading.power_mw == pytest.approx(10000.0, rel=0.1)


def test_active_power_runs_at_least_once(tmp_path: Path) -> None:
    make_ina3221(tmp_path)
    calls = []
    reading = measure_active_power(Ina3221Meter(tmp_path), lambda: calls.append(1), 0.0)
    assert reading.runs == len(calls) >= 1


def test_run_fn_error_propagates_and_stops_the_sampler(tmp_path: Path) -> None:
    make_ina3221(tmp_path)
    before = threading.active_count()

    def broken() -> None:
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        measure_active_power(Ina3221Meter(tmp_path), broken, 0.1)
    assert threading.active_count() == before


def test_charger_plugged_mid_window_is_reported(tmp_path: Path) -> None:
    """An error in the sampler thread reaches the caller, naming the status file."""
    make_battery(tmp_path, -250_000)
    meter = BatteryMeter(tmp_path)
    meter.poll_interval_s = 0.01
    meter.sampling_period_s = 0.3
    with Rewriter(tmp_path / BAT / "status", lambda t: "Discharging" if t < 0.1 else "Charging"), \
            pytest.raises(MeterUnavailableError, match="status is 'Charging'"):
        measure_idle_power(meter, 0.0)


# --- registry --------------------------------------------------------------------------

def test_auto_falls_back_to_default_model_and_says_why(tmp_path: Path) -> None:
    choice = get_meter("auto", tmp_path, threads=2)
    assert choice.label == "estimated:default"
    assert isinstance(choice.meter, PowerModelMeter)
    for reason in ("rapl: ", "battery: ", "ina3221: ", "no hardware energy meter",
                   "default.yaml", str(tmp_path / "sys/class/powercap")):
        assert reason in choice.note


def test_auto_prefers_rapl(tmp_path: Path) -> None:
    make_rapl(tmp_path)
    make_battery(tmp_path, -100_000)
    choice = get_meter("auto", tmp_path)
    assert choice.label == "measured:rapl"
    assert isinstance(choice.meter, RaplMeter)
    assert "auto chose RAPL" in choice.note


def test_auto_skips_an_unreadable_rapl_and_records_the_reason(tmp_path: Path) -> None:
    make_rapl(tmp_path)
    energy = tmp_path / ZONE0 / "energy_uj"
    energy.unlink()
    energy.mkdir()
    make_battery(tmp_path, -100_000)
    choice = get_meter("auto", tmp_path)
    assert choice.label == "measured:battery"
    assert "rapl: cannot read" in choice.note and "energy_uj (Is a directory)" in choice.note


@pytest.mark.parametrize("spec", ["rapl", "battery", "ina3221"])
def test_named_absent_meter_is_a_one_line_error_naming_the_path(tmp_path: Path,
                                                                spec: str) -> None:
    with pytest.raises(DnntuneError) as err:
        get_meter(spec, tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_named_meters_and_none(tmp_path: Path) -> None:
    make_rapl(tmp_path)
    make_battery(tmp_path, -100_000)
    make_ina3221(tmp_path)
    assert get_meter("rapl", tmp_path).label == "measured:rapl"
    assert get_meter("battery", tmp_path).label == "measured:battery"
    assert get_meter("ina3221", tmp_path).label == "measured:ina3221"
    rails = get_meter("ina3221:VDD_CPU_GPU_CV+VDD_SOC", tmp_path).meter
    assert isinstance(rails, Ina3221Meter)
    assert [r.label for r in rails.rails] == ["VDD_CPU_GPU_CV", "VDD_SOC"]
    rapl = get_meter("rapl:dram", tmp_path).meter
    assert isinstance(rapl, RaplMeter) and len(rapl.zones) == 3
    battery = get_meter("battery:negative", tmp_path).meter
    assert isinstance(battery, BatteryMeter) and battery.discharge_sign == "negative"
    none = get_meter("none", tmp_path)
    assert none.meter is None and none.label == "none"


@pytest.mark.parametrize("spec, message", [
    ("bogus", "must be one of auto\\|none\\|rapl"),
    ("rapl:core", "rapl takes no argument or 'dram'"),
    ("battery:up", "discharge_sign must be auto, negative or positive, got 'up'"),
    ("model:", "needs a profile name"),
    ("model:no_such_phone", "'no_such_phone' not found in .*available: .*pixel3"),
    ("model:../secrets", "must be a plain name or a .yaml path"),
])
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(DnntuneError, match=message):
        get_meter(spec)


# --- estimator: numbers checked by hand ------------------------------------------------

def test_pixel3_one_thread_by_hand() -> None:
    choice = get_meter("model:pixel3", threads=1)
    assert choice.label == "estimated:pixel3" and choice.meter is not None
    idle = measure_idle_power(choice.meter, 5.0)
    active = measure_active_power(choice.meter, lambda: pytest.fail("must not run"), 5.0)
    # idle 39.96; active = idle + cpu.active 80.99 + big cluster 19.57 + one big core 938.95
    assert idle.power_mw == pytest.approx(39.96)
    assert active.power_mw == pytest.approx(39.96 + 1039.51)
    energies, info = attribute_energy([2.0, 0.5, 10.0], idle.power_mw, active.power_mw,
                                      choice.label, choice.note)
    # 2 ms × 1039.51 mW = 2079.02 µJ = 2.07902 mJ
    assert energies == pytest.approx((2.07902, 0.519755, 10.3951))
    assert info == EnergyInfo("estimated:pixel3", 39.96, 1079.47, choice.note)
    assert not info.measured


def test_pixel3_six_threads_spill_to_little_cores() -> None:
    meter = PowerModelMeter.from_profile("pixel3", threads=6)
    # 80.99 + (19.57 + 4 × 938.95) + (4.81 + 2 × 97.87) = 4056.91
    assert meter.active_power_mw - meter.idle_power_mw == pytest.approx(4056.91)
    assert meter.note == ""


def test_more_threads_than_cores_is_clamped_with_a_note() -> None:
    meter = PowerModelMeter.from_profile("raspberry_pi4", threads=6)
    assert meter.active_power_mw == pytest.approx(1600.0 + 4 * 850.0)
    assert "6 threads > 4 cores" in meter.note
    assert "6 threads > 4 cores" in get_meter("model:raspberry_pi4", threads=6).note


def test_gpu_unit(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    path.write_text(MINIMAL + "gpu:\n  active_mw: 2500\n")
    meter = PowerModelMeter(load_device_profile(path), unit="gpu")
    assert (meter.idle_power_mw, meter.active_power_mw) == (1000.0, 3500.0)
    assert meter.label == "estimated:board"
    with pytest.raises(DnntuneError, match="no 'gpu' section"):
        PowerModelMeter.from_profile("pixel3", unit="gpu")
    with pytest.raises(DnntuneError, match="'cpu' or 'gpu', got 'npu'"):
        PowerModelMeter.from_profile("pixel3", unit="npu")
    with pytest.raises(DnntuneError, match="threads must be >= 1"):
        PowerModelMeter.from_profile("pixel3", threads=0)


# --- attribution ---------------------------------------------------------------------------

def test_attribution_units_and_label() -> None:
    energies, info = attribute_energy([1.0, 4.0, 0.0], 800.0, 2300.0, "measured:battery")
    # 1 ms × 1500 mW = 1500 µJ = 1.5 mJ
    assert energies == pytest.approx((1.5, 6.0, 0.0))
    assert info.measured and info.label == "measured:battery"
    assert (info.idle_power_mw, info.active_power_mw) == (800.0, 2300.0)


def test_active_below_idle_gives_zero_with_a_note() -> None:
    energies, info = attribute_energy([3.0], 1000.0, 990.0, "measured:rapl", "rapl zones")
    assert energies == (0.0,)
    assert info.note.startswith("rapl zones; active power 990.0 mW is below idle 1000.0 mW")


@pytest.mark.parametrize("latencies, idle, active, message", [
    ([1.0, -0.1], 1.0, 2.0, "layer 1 latency"),
    ([float("nan")], 1.0, 2.0, "layer 0 latency"),
    ([1.0], float("inf"), 2.0, "idle power"),
    ([1.0], 1.0, -2.0, "active power"),
])
def test_attribution_bad_input(latencies: list[float], idle: float, active: float,
                               message: str) -> None:
    with pytest.raises(DnntuneError, match=message):
        attribute_energy(latencies, idle, active, "measured:rapl")


# --- device profiles ------------------------------------------------------------------------

MINIMAL = """description: test board
idle_power_mw: 1000
cpu:
  clusters:
    - name: a
      cores: 2
      active_mw: 10
      core_active_mw: 100
"""


@pytest.mark.parametrize("path", sorted(REPO_DEVICES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_profiles_load_and_every_number_has_a_source_comment(path: Path) -> None:
    profile = load_device_profile(path)
    assert profile.name == path.stem and profile.clusters
    for line in path.read_text().splitlines():
        code = line.split("#", 1)[0]
        if ":" in code and code.split(":", 1)[1].strip().replace(".", "").isdigit():
            assert "#" in line, f"{path.name}: no source comment on {line.strip()!r}"


def test_default_profile_is_labelled_assumed() -> None:
    profile = load_device_profile(find_device_profile("default"))
    assert "ASSUMED" in profile.description


@pytest.mark.parametrize("text, message", [
    (MINIMAL.replace("idle_power_mw: 1000\n", ""), "missing key 'idle_power_mw'"),
    (MINIMAL.replace("cores: 2", "cores: four"),
     "key 'cpu.clusters\\[0\\].cores' must be an integer >= 1, got 'four'"),
    (MINIMAL.replace("cores: 2", "cores: 0"), "key 'cpu.clusters\\[0\\].cores' must be"),
    (MINIMAL.replace("core_active_mw: 100", "core_active_mw: -5"),
     "key 'cpu.clusters\\[0\\].core_active_mw' must be a power in mW"),
    (MINIMAL.replace("      active_mw: 10\n", ""), "missing key 'cpu.clusters\\[0\\].active_mw'"),
    (MINIMAL.replace("idle_power_mw", "idle_power_mW"), "unknown key 'idle_power_mW'"),
    (MINIMAL.replace("cpu:\n", "cpu:\n  active_mw: lots\n"), "key 'cpu.active_mw' must be"),
    (MINIMAL + "gpu: 5\n", "key 'gpu' must be a mapping"),
    ("description: x\nidle_power_mw: 1\ncpu:\n  clusters: []\n", "'cpu.clusters' must be a "
                                                                 "non-empty list"),
    ("- just\n- a list\n", "the document must be a mapping"),
    ("cpu: [unclosed\n", "not valid YAML"),
])
def test_profile_validation_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "phone.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_device_profile(path)
    assert str(err.value).startswith(f"{path}: ")
    assert err.value.where == str(path)


def test_find_profile_prefers_the_working_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "configs" / "devices"
    own.mkdir(parents=True)
    (own / "pixel3.yaml").write_text(MINIMAL)
    monkeypatch.chdir(tmp_path)
    assert find_device_profile("pixel3") == tmp_path / "configs/devices/pixel3.yaml"
    shipped = find_device_profile("raspberry_pi4")  # through dnntune/_data, as in a wheel
    assert shipped.resolve() == (REPO_DEVICES / "raspberry_pi4.yaml").resolve()
    assert find_device_profile("pixel3", [REPO_DEVICES]) == REPO_DEVICES / "pixel3.yaml"
    mine = tmp_path / "my_phone.yaml"
    mine.write_text(MINIMAL)
    assert get_meter(f"model:{mine}").label == "estimated:my_phone"
    with pytest.raises(DnntuneError, match="does not exist"):
        find_device_profile(str(tmp_path / "missing.yaml"))


# --- module hygiene ------------------------------------------------------------------------

def test_docstring_examples_hold() -> None:
    for module in (dnntune.profiling.meters, dnntune.profiling.energy):
        assert doctest.testmod(module).failed == 0


def test_importable_without_tensorflow() -> None:
    code = ("import sys, dnntune.profiling.energy, dnntune.profiling.meters; "
            "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
