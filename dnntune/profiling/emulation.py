"""An emulated phone-class device: this process under a calibrated cgroup CPU limit.

The device agent (or ``dnntune profile``) moves itself into a cgroup of its own and
calibrates the CPU share so that the plain, compiled latency of the preset's reference
model (``emulation.reference`` in ``configs/devices/<preset>.yaml``) matches the
published figure within ±10 %. Every layer then really runs slower, and everything
measured is labelled ``emulated:<preset>`` with the share and the reference.

Calibration is robust to other load on the machine: it starts from the reference
model's CPU time per inference (not its wall time), so the first share is right even
when other processes slow this one down, and each step takes the 10 %-trimmed mean of
:data:`CALIBRATION_RUNS` runs (at least :data:`CALIBRATION_SECONDS` of them). As long as
the share is below what the loaded machine would give the process anyway, other load
does not change the emulated speed.

Where no cgroup can be written, :func:`scaled_emulation` measures the reference model
natively and :func:`scale_profile` multiplies a profile by ``reference / native``:
labelled ``scaled:<preset>``, a what-if, not a measurement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dnntune.errors import DnntuneError
from dnntune.profiling.cgroups import CpuLimit, find_backend, limit_for_share
from dnntune.profiling.devices import DeviceProfile, load_emulation_preset

if TYPE_CHECKING:
    from dnntune.profiling.profile import Profile

TOLERANCE = 0.10        # the reference must be met within ±10 %
AIM = 0.03              # calibration stops once within ±3 %
MAX_STEPS = 8
CALIBRATION_RUNS = 15   # timed runs per calibration step (after 2 warm-up runs) ...
CALIBRATION_SECONDS = 2.0  # ... or as many as fill this many seconds (at most 100)
MIN_SHARE_CPUS = 0.002


@dataclass(frozen=True)
class Emulation:
    """How a device was emulated; recorded in every profile it measures.

    Attributes:
        preset: The device preset's name.
        mode: ``"emulated"`` (a cgroup CPU limit, really measured) or ``"scaled"`` (this
            machine's timings multiplied by ``factor``: a what-if).
        threads: Intra-op threads the device ran with (the preset's, at most this
            machine's usable cores).
        reference_model, reference_ms, reference_source: What was calibrated to.
        achieved_ms: The reference model's trimmed-mean plain latency as emulated
            (emulated) or as scaled (scaled).
        native_ms: The same, unconfined on this machine.
        quota_us, period_us: The CPU limit in force (0 for scaled).
        factor: ``achieved_ms / native_ms``: how much slower than this machine.
        calibration_runs: Timed runs per calibration step; ``calibration_steps`` steps.
        cgroup: ``v1:<path>`` or ``v2:<path>`` (empty for scaled).
        reason: Why the device is scaled rather than emulated.
        mechanism: ``"quota"`` (a cgroup CPU limit) or ``"dilation"`` (this machine's
            native run, each measured time multiplied by ``factor``;
            :mod:`dnntune.profiling.dilation`).
        call_ms, call_source: What the phone pays per call outside the layers (dilation:
            modelled, charged instead of this host's Python dispatch).
        checked_ms: The reference's mobile-only T measured again after a profile
            (dilation; 0 when not checked), and ``recalibrated``: how often the drift
            check recalibrated before the profile it is recorded in.
    """

    preset: str
    mode: str
    threads: int
    reference_model: str
    reference_ms: float
    reference_source: str
    achieved_ms: float
    native_ms: float
    quota_us: int = 0
    period_us: int = 0
    factor: float = 1.0
    calibration_runs: int = 0
    calibration_steps: int = 0
    cgroup: str = ""
    reason: str = ""
    mechanism: str = "quota"
    call_ms: float = 0.0
    call_source: str = ""
    checked_ms: float = 0.0
    recalibrated: int = 0

    @property
    def label(self) -> str:
        return f"{self.mode}:{self.preset}"

    @property
    def drift(self) -> float:
        """The re-measured mobile-only T against the calibration (0 when not checked)."""
        return self.checked_ms / self.achieved_ms - 1.0 if self.checked_ms else 0.0

    @property
    def share_cpus(self) -> float:
        return self.quota_us / self.period_us if self.period_us else 0.0

    def describe(self) -> str:
        """One line: what was emulated, how, and against which reference."""
        ref = (f"{self.reference_model} {self.reference_ms:.3g} ms "
               f"({self.reference_source})")
        if self.mechanism == "dilation":
            text = (f"{self.label}: this machine's native run ({self.threads} thread(s); "
                    f"{self.reference_model} {self.native_ms:.3g} ms) dilated "
                    f"x{self.factor:.3g}, so {self.reference_model}'s mobile-only T (layers "
                    f"+ call) is {self.achieved_ms:.3g} ms against the reference {ref}; a "
                    f"call costs {self.call_ms:.3g} ms ({self.call_source})")
            if self.checked_ms:
                text += (f"; this profile of {self.reference_model}: {self.checked_ms:.3g} "
                         f"ms, {self.drift:+.1%} drift")
            if self.recalibrated:
                text += f", after {self.recalibrated} more profile(s)"
            return text
        if self.mode == "scaled":
            return (f"{self.label}: this machine's timings x{self.factor:.3g} so "
                    f"{self.reference_model} takes {self.achieved_ms:.3g} ms as the "
                    f"reference {ref}; a what-if, not a measurement, because {self.reason}")
        limit = CpuLimit(self.quota_us, self.period_us).describe()
        return (f"{self.label}: CPU limited to {limit}, {self.threads} thread(s); "
                f"{self.reference_model} runs in {self.achieved_ms:.3g} ms against the "
                f"reference {ref}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label, "share_cpus": self.share_cpus,
                "drift": self.drift, "description": self.describe()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Emulation:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def usable_threads(preset: DeviceProfile) -> int:
    """The preset's threads, at most the cores this process may run on."""
    assert preset.emulation is not None
    return max(1, min(preset.emulation.threads, len(os.sched_getaffinity(0))))


def calibration_runs(target_ms: float) -> int:
    """Timed runs per calibration step: :data:`CALIBRATION_RUNS`, or more for fast models."""
    return max(CALIBRATION_RUNS, min(100, math.ceil(CALIBRATION_SECONDS * 1e3 / target_ms)))


def trimmed_mean(values: list[float], cut: float = 0.1) -> float:
    """Mean without the lowest and highest ``cut`` fraction (robust to load spikes).

    Example:
        >>> trimmed_mean([1, 2, 3, 4, 100], cut=0.2)
        3.0
    """
    ordered = sorted(values)
    k = int(len(ordered) * cut)
    kept = ordered[k:len(ordered) - k] or ordered
    return sum(kept) / len(kept)


@dataclass(frozen=True)
class Timing:
    """One calibration measurement: trimmed-mean latency and CPU time per run, ms."""

    latency_ms: float
    cpu_ms: float


def time_runs(run_once: Callable[[], float], runs: int, warmup: int = 2,
              average: Callable[[list[float]], float] = trimmed_mean) -> Timing:
    """Warm up, then time ``runs`` calls; ``run_once`` returns its in-graph ms, and
    ``average`` turns them into one figure."""
    for _ in range(warmup):
        run_once()
    cpu0 = time.process_time()
    latencies = [run_once() for _ in range(runs)]
    cpu_ms = (time.process_time() - cpu0) * 1e3 / runs
    return Timing(average(latencies), cpu_ms)


def calibrate_share(run_once: Callable[[], float], apply: Callable[[CpuLimit | None], None],
                    target_ms: float, max_share_cpus: float, runs: int,
                    steps: int = MAX_STEPS) -> tuple[CpuLimit, Timing, Timing, int]:
    """Find the CPU limit under which ``run_once`` takes ``target_ms`` (±10 %).

    Starts from the CPU time per run unconfined (latency = CPU time / share when the
    share is the bottleneck), then corrects multiplicatively until within ±3 %.

    Args:
        run_once: Runs the reference model once; returns its in-graph latency, ms.
        apply: Sets the limit (``None``: unlimited) on the process running it.
        target_ms: The reference latency.
        max_share_cpus: The most CPU the device may have (its threads).
        runs: Timed runs per step.
        steps: Limits tried at most.

    Returns:
        ``(limit, timing under it, native timing, steps taken)``.

    Raises:
        DnntuneError: if the reference cannot be reached; says the share reached.
    """
    apply(None)
    native = time_runs(run_once, runs)
    if native.latency_ms > target_ms * (1 + TOLERANCE):
        raise DnntuneError(
            f"cannot emulate a reference of {target_ms:.3g} ms: unconfined (100% of "
            f"{max_share_cpus:g} CPU) this machine already takes {native.latency_ms:.3g} ms")
    share = min(max(native.cpu_ms / target_ms, MIN_SHARE_CPUS), max_share_cpus)
    best: tuple[float, CpuLimit, Timing] | None = None
    for step in range(1, steps + 1):
        limit = limit_for_share(share)
        apply(limit)
        timing = time_runs(run_once, runs)
        error = timing.latency_ms / target_ms - 1
        if best is None or abs(error) < best[0]:
            best = (abs(error), limit, timing)
        if abs(error) <= AIM:
            return limit, timing, native, step
        share = min(max(share * (1 + error), MIN_SHARE_CPUS), max_share_cpus)
    assert best is not None
    if best[0] <= TOLERANCE:
        apply(best[1])
        return best[1], best[2], native, steps
    raise DnntuneError(
        f"cannot emulate a reference of {target_ms:.3g} ms within ±{TOLERANCE:.0%}: the "
        f"closest share reached, {best[1].describe()}, gave {best[2].latency_ms:.3g} ms "
        f"after {steps} steps (is the machine too loaded?)")


def reference_runner(preset: DeviceProfile) -> Callable[[], float]:
    """Build the preset's reference model (for timing only) and return ``run_once``.

    BatchNorm calibration is skipped: the weights' values do not change the work, and
    this model is never profiled or compared with another side.
    """
    from dnntune.model.loading import load_model
    from dnntune.profiling.instrument import compile_plain

    assert preset.emulation is not None
    loaded = load_model(preset.emulation.reference.model, calibrate=False)
    plain = compile_plain(loaded.model)
    inputs = loaded.example_inputs()

    def run_once() -> float:
        return plain(inputs)[1] * 1e3
    return run_once


@contextlib.contextmanager
def emulated_process(preset_name: str, tag: str = "device",
                     report: Callable[[str], None] | None = None) -> Iterator[Emulation]:
    """This process as the preset's device: in its own cgroup, calibrated, until exit.

    TensorFlow's threads must be configured (to :func:`usable_threads`) before this
    runs. The cgroup is removed on the way out, also after an error or a SystemExit
    raised by a signal handler.

    Raises:
        CgroupUnavailableError: no cgroup can be written here (the message says why).
        DnntuneError: unknown preset, no reference, or the reference is out of reach.
    """
    preset = load_emulation_preset(preset_name)
    assert preset.emulation is not None
    backend = find_backend()
    threads = usable_threads(preset)
    ref = preset.emulation.reference
    runs = calibration_runs(ref.latency_ms)
    if report:
        report(f"calibrating {preset.name}: {ref.model} to {ref.latency_ms:g} ms, "
               f"{runs} runs per step")
    run_once = reference_runner(preset)
    with backend.confined(tag) as path:
        def apply(limit: CpuLimit | None) -> None:
            backend.set_limit(path, limit)
        limit, timing, native, steps = calibrate_share(run_once, apply, ref.latency_ms,
                                                       float(threads), runs)
        yield Emulation(preset=preset.name, mode="emulated", threads=threads,
                        reference_model=ref.model, reference_ms=ref.latency_ms,
                        reference_source=ref.source, achieved_ms=timing.latency_ms,
                        native_ms=native.latency_ms, quota_us=limit.quota_us,
                        period_us=limit.period_us,
                        factor=timing.latency_ms / native.latency_ms,
                        calibration_runs=runs, calibration_steps=steps,
                        cgroup=f"v{backend.version}:{path}")


def scaled_emulation(preset_name: str, reason: str) -> Emulation:
    """Measure the reference model here (unconfined) and scale to the preset's figure."""
    preset = load_emulation_preset(preset_name)
    assert preset.emulation is not None
    ref = preset.emulation.reference
    native = time_runs(reference_runner(preset), calibration_runs(ref.latency_ms))
    return Emulation(preset=preset.name, mode="scaled", threads=usable_threads(preset),
                     reference_model=ref.model, reference_ms=ref.latency_ms,
                     reference_source=ref.source, achieved_ms=ref.latency_ms,
                     native_ms=native.latency_ms,
                     factor=ref.latency_ms / native.latency_ms,
                     calibration_runs=calibration_runs(ref.latency_ms), reason=reason)


def scale_profile(profile: Profile, emulation: Emulation) -> Profile:
    """``profile`` with every timing (and the energies) multiplied by the factor.

    Pure. The result's metadata carries ``emulation`` (label ``scaled:<preset>``).
    """
    from dnntune.profiling.profile import LayerProfile, Stats

    k = emulation.factor

    def stats(s: Stats) -> Stats:
        return Stats(s.n, *(k * getattr(s, f.name) for f in dataclasses.fields(Stats)
                            if f.name != "n"))
    layers = tuple(LayerProfile(lp.layer, stats(lp.latency),
                                None if lp.energy_mj is None else k * lp.energy_mj)
                   for lp in profile.layers)
    meta = dataclasses.replace(profile.meta, emulation=emulation.to_dict())
    wall = profile.end_to_end_wall
    return dataclasses.replace(profile, meta=meta, layers=layers,
                               end_to_end=stats(profile.end_to_end),
                               instrumented=stats(profile.instrumented),
                               end_to_end_wall=None if wall is None else stats(wall))
