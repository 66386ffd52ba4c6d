"""Time dilation: the emulated phone as this machine's native run, slowed by one factor.

The device runs its layers natively, with the preset's threads. At start it times the
preset's reference model the way the analyzer adds it up for mobile-only: the
instrumented pass's in-graph total (the sum of its layers), trimmed mean of
:data:`RUNS` runs. The factor is ``k = (reference - call) / native``, where ``call`` is
what the phone pays per inference outside its layers (``emulation.call`` in the preset,
modelled from the phone's runtime: 0 ms for LiteRT's invoke unless a preset says
otherwise). From then on:

- every time the device reports (each layer's samples, the whole pass) is ``k`` times
  its native time, and a call costs ``call`` ms: the host's Python/TensorFlow dispatch
  is harness, not phone, and is neither slowed nor charged; runs that a neighbour on
  the host slowed down (over 1.15 x the median run) are not the phone's and are dropped
  (:func:`dnntune.profiling.stats.undisturbed`);
- this host's speed wanders by ±10 % and more over seconds (other processes, the other
  hyperthread), a phone's does not: a profile is **paced**, the reference runs once
  after each of the model's runs, and that profile's ``k`` is fitted on those runs, so
  whatever slowed the model slowed the reference alike. A profile of the reference model
  itself is the check: beyond ±10 % of the reference the device profiles once more; a
  second miss refuses in one line naming both figures;
- in a real split run the head's result is held until ``k`` times its native in-graph
  time plus ``call`` has passed since the head started (:meth:`DilatedDevice.hold`),
  with ``k`` following the reference run before each of the last 5 heads; what follows
  (serialising, the link, the cloud) runs at this machine's real speed.

Why not the CFS quota (``<preset>:quota``, :mod:`dnntune.profiling.emulation`): the
quota is paid in 1 ms slices per period, so a layer either fits in its slice or waits a
whole period (per-layer times become bimodal), the host's dispatch and serialisation are
slowed with the layers, and the share drifts with the host's load.
``benchmarks/bench_emulation.py`` measures both side by side (docs/emulation.md).

What dilation does not model: a phone's speed is not the same multiple of this
machine's for every layer type (cache sizes, SIMD width); one factor, fitted on the
reference model, stands for all of them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from dnntune.errors import DnntuneError
from dnntune.profiling.devices import load_emulation_preset
from dnntune.profiling.emulation import TOLERANCE, Emulation, Timing, time_runs, usable_threads
from dnntune.profiling.stats import undisturbed_mean

if TYPE_CHECKING:
    from dnntune.profiling.profile import Profile

RUNS = 80          # timed native runs of the reference per measurement (after warm-up)
WARMUP = 30
REFRESH_RUNS = 30  # before each profile and each batch of split runs
REFRESH_WARMUP = 5
MIN_PACES = 10     # reference runs a profile's factor is fitted on, at least
SPLIT_PACES = 5    # reference runs (one per head) the factor of split runs follows
MIN_FACTOR = 1.2   # the head's native run and its dispatch must fit inside its dilated time


PRIORITY = -10  # nice value of an emulated device process, where it may be raised


def raise_priority() -> int:
    """Give this process (and every thread it starts after this) nice ``-10``, so other
    processes on the host barely slow the native runs that the phone's times are made
    of; call it before TensorFlow starts its threads. Returns the nice value in force
    (unchanged where this user may not raise it)."""
    import os

    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, PRIORITY)
    return os.getpriority(os.PRIO_PROCESS, 0)


class DilatedDevice:
    """The preset's phone on this machine by time dilation; thread-safe.

    Example:
        >>> # device = DilatedDevice("dnntune_phone"); device.calibrate()
        >>> # profile = device.profile(lambda emulation: profile_model(loaded, settings))
    """

    def __init__(self, preset_name: str, report: Callable[[str], None] | None = None,
                 runs: int = RUNS) -> None:
        self.preset = load_emulation_preset(preset_name)
        assert self.preset.emulation is not None
        self.spec = self.preset.emulation
        self.threads = usable_threads(self.preset)
        self.runs = runs
        self._report = report or (lambda message: None)
        self._run_reference: Callable[[], float] | None = None
        self._reference_shape: tuple[int, ...] = ()
        self._emulation: Emulation | None = None
        self._paces: list[float] = []
        self._split_paces: collections.deque[float] = collections.deque(maxlen=SPLIT_PACES)
        self._split_factor: float | None = None
        self.lock = threading.RLock()  # one calibration or profile at a time

    @property
    def emulation(self) -> Emulation:
        if self._emulation is None:
            raise DnntuneError("internal: the dilated device was not calibrated")
        return self._emulation

    @property
    def factor(self) -> float:
        return self.emulation.factor

    def measure_native(self, runs: int | None = None, warmup: int = WARMUP) -> Timing:
        """The reference's native in-graph total (Σ of its layers), ms: the mean of the
        runs the host did not disturb (:func:`dnntune.profiling.stats.undisturbed`), as
        the dilated profile keeps them."""
        if self._run_reference is None:
            self._run_reference = self._build_reference()
        return time_runs(self._run_reference, runs or self.runs, warmup,
                         average=undisturbed_mean)

    def _build_reference(self) -> Callable[[], float]:
        from dnntune.model.loading import load_model
        from dnntune.profiling.instrument import InstrumentedModel

        # BatchNorm calibration skipped: the weights' values do not change the work.
        loaded = load_model(self.spec.reference.model, calibrate=False)
        self._reference_shape = tuple(loaded.input_shapes[0][1:])
        model = InstrumentedModel(loaded.model, loaded.graph.atomic)
        inputs = loaded.example_inputs()

        def run_once() -> float:
            stamps = model(inputs)[1]
            return float(stamps[-1] - stamps[0]) * 1e3
        return run_once

    def calibrate(self) -> Emulation:
        """Fit the factor to the reference, then measure it again to state what it gives.

        Raises:
            DnntuneError: when this machine is not fast enough to be dilated into the
                phone (its native time must be at most the reference / 1.2).
        """
        ref, call = self.spec.reference, self.spec.call_ms
        with self.lock:
            self._report(f"calibrating {self.preset.name} by time dilation: {ref.model} to "
                         f"{ref.latency_ms:g} ms (layers + a {call:g} ms call), {self.runs} "
                         f"native runs, {self.threads} thread(s)")
            native = self.measure_native()
            budget = ref.latency_ms - call
            if budget <= 0 or native.latency_ms * MIN_FACTOR > budget:
                raise DnntuneError(
                    f"cannot emulate {self.preset.name} ({ref.model} {ref.latency_ms:g} ms) "
                    f"by time dilation: this machine already takes {native.latency_ms:.3g} ms "
                    f"natively with {self.threads} thread(s), so the phone is not at least "
                    f"{MIN_FACTOR:g}x slower than this machine")
            factor = budget / native.latency_ms
            again = self.measure_native()  # a second, independent measurement
            self._emulation = Emulation(
                preset=self.preset.name, mode="emulated", threads=self.threads,
                reference_model=ref.model, reference_ms=ref.latency_ms,
                reference_source=ref.source,
                achieved_ms=factor * again.latency_ms + call, native_ms=native.latency_ms,
                factor=factor, calibration_runs=self.runs, calibration_steps=1,
                mechanism="dilation", call_ms=call, call_source=self.spec.call_note)
            return self._emulation

    def refresh(self) -> Emulation:
        """Fit the factor again to the reference as this host runs *now* (about half a
        second): this host's speed wanders by ±10 % over seconds, the phone's does not.
        Called before every profile and every batch of split runs."""
        ref, call = self.spec.reference, self.spec.call_ms
        with self.lock:
            native = self.measure_native(REFRESH_RUNS, REFRESH_WARMUP)
            factor = (ref.latency_ms - call) / native.latency_ms
            self._emulation = dataclasses.replace(
                self.emulation, factor=factor, native_ms=native.latency_ms,
                achieved_ms=factor * native.latency_ms + call,
                calibration_steps=self.emulation.calibration_steps + 1)
            self._split_paces.clear()
            self._split_factor = None
            return self._emulation

    def mobile_only_ms(self, native_total_ms: float) -> float:
        """What the device reports for a native in-graph total: ``k x native + call``."""
        return self.factor * native_total_ms + self.spec.call_ms

    def pace(self) -> float:
        """Run the reference once natively (between a profile's runs); returns its ms."""
        if self._run_reference is None:
            self._run_reference = self._build_reference()
        ms = self._run_reference()
        self._paces.append(ms)
        return ms

    def profile(self, run: Callable[[Emulation, Callable[[], float]], Profile]) -> Profile:
        """Profile natively with ``run``, paced by the reference, and return it dilated.

        ``run(emulation, pace)`` profiles on this machine as it is, records ``emulation``
        and calls ``pace()`` after every timed run: the reference runs between the
        model's runs, so the factor of this profile is fitted on the host as the model's
        runs saw it (a neighbour that slows the host slows both; the phone does not
        slow down). When the profile is of the reference model itself, its mobile-only T
        is the check: beyond ±10 % of the reference the device profiles once more; a
        second miss raises :class:`DnntuneError` naming both figures.
        """
        ref, call = self.spec.reference, self.spec.call_ms
        with self.lock:
            for attempt in (0, 1):
                before = self.emulation
                if self._run_reference is not None:
                    for _ in range(REFRESH_WARMUP):  # caches cold after another model
                        self._run_reference()
                self._paces = []
                native = run(before, self.pace)
                while len(self._paces) < MIN_PACES:
                    self.pace()
                paced_ms = undisturbed_mean(self._paces)
                factor = (ref.latency_ms - call) / paced_ms
                emulation = dataclasses.replace(
                    before, factor=factor, native_ms=paced_ms,
                    achieved_ms=factor * paced_ms + call,
                    calibration_steps=before.calibration_steps + 1)
                self._emulation = emulation
                if not self._is_reference(native):
                    return dilate_profile(native, dataclasses.replace(
                        emulation, recalibrated=attempt))
                checked = self.mobile_only_ms(
                    sum(lp.latency.mean_ms for lp in native.layers))
                drift = checked / emulation.achieved_ms - 1.0
                if abs(drift) <= TOLERANCE:
                    return dilate_profile(native, dataclasses.replace(
                        emulation, checked_ms=checked, recalibrated=attempt))
                if attempt == 0:
                    self._report(f"{self.preset.name}: {ref.model} profiled at {checked:.3g} ms, "
                                 f"{drift:+.0%} on its calibration "
                                 f"({emulation.achieved_ms:.3g} ms): profiling again")
            raise DnntuneError(
                f"the emulated {self.preset.name} drifted beyond ±{TOLERANCE:.0%} twice: "
                f"calibrated to {emulation.achieved_ms:.3g} ms, {ref.model} profiled at "
                f"{checked:.3g} ms (is the machine too loaded?)")

    def _is_reference(self, profile: Profile) -> bool:
        meta = profile.meta
        return (meta.model_name == self.spec.reference.model and meta.batch_size == 1
                and tuple(meta.input_shapes[0]) == self._reference_shape)

    def pace_split(self) -> None:
        """Before each head of a real split run: run the reference once and fit the
        factor that :meth:`hold` uses on the last :data:`SPLIT_PACES` of them (the host as
        the head will see it)."""
        if self._run_reference is None:
            self._run_reference = self._build_reference()
        self._split_paces.append(self._run_reference())
        paced = float(np.median(self._split_paces))
        self._split_factor = (self.spec.reference.latency_ms - self.spec.call_ms) / paced

    def hold(self, started: float, native_in_graph_s: float) -> None:
        """Wait until the head that started at ``started`` (``time.perf_counter()``) and
        ran ``native_in_graph_s`` natively would have finished on the phone."""
        factor = self._split_factor or self.factor
        deadline = started + (factor * native_in_graph_s * 1e3 + self.spec.call_ms) / 1e3
        while (left := deadline - time.perf_counter()) > 0:
            time.sleep(left)

    def dilate(self, started: float, native_s: float) -> None:
        """Wait until device work other than a graph call (encoding a crossing tensor)
        that started at ``started`` and ran ``native_s`` natively would have finished
        on the phone: the same factor as a head, no call overhead."""
        factor = self._split_factor or self.factor
        deadline = started + factor * native_s
        while (left := deadline - time.perf_counter()) > 0:
            time.sleep(left)


def dilate_profile(profile: Profile, emulation: Emulation) -> Profile:
    """``profile`` as the dilated device reports it (pure).

    Every timing and layer energy is multiplied by ``emulation.factor``; a call's wall
    time is its in-graph time plus the phone's modelled ``call_ms`` (the host's dispatch is
    not the phone's). The result records ``emulation``.
    """
    from dnntune.profiling.profile import LayerProfile, Stats

    k = emulation.factor

    def scaled(s: Stats, shift: float = 0.0) -> Stats:
        values = {f.name: getattr(s, f.name) * k + (0.0 if f.name == "std_ms" else shift)
                  for f in dataclasses.fields(Stats) if f.name != "n"}
        return Stats(n=s.n, **values)

    layers = tuple(LayerProfile(lp.layer, scaled(lp.latency),
                                None if lp.energy_mj is None else k * lp.energy_mj)
                   for lp in profile.layers)
    end_to_end = scaled(profile.end_to_end)
    wall = scaled(profile.end_to_end, emulation.call_ms)
    # the instrumented call's wall time, less this host's dispatch, plus the phone's call
    instrumented = scaled(profile.instrumented, emulation.call_ms - k * profile.call_overhead_ms)
    meta = dataclasses.replace(profile.meta, emulation=emulation.to_dict())
    return dataclasses.replace(
        profile, meta=meta, layers=layers, end_to_end=end_to_end, instrumented=instrumented,
        end_to_end_wall=wall, overhead_pct=100.0 * (instrumented.mean_ms / wall.mean_ms - 1.0))
