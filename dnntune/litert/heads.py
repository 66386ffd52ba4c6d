"""Heads in the phone's runtime: a split whose head runs as a LiteRT model of its cut.

Where the device framework is LiteRT, an app runs the head as a ``.tflite`` model, not
as TensorFlow-Python. :func:`prepare_litert_split` converts the head of one cut (the
cut must exist in LiteRT: the layer map of ``dnntune convert`` says which do) and
returns a :class:`LiteRTSplit` that :func:`dnntune.rpc.splitrun.run_split` runs like a
TensorFlow split: the same crossing tensors, by name, to the same cloud tail.

Conversion is a compile step (TensorFlow's MLIR converter). It runs once per model and
cut, when a ``RunSplit`` asks for that head, *before* any of its runs (warm-up or timed)
and never inside one; the agent keeps the result (:class:`HeadCache`). Timing a run
only calls ``Interpreter.invoke``.

On an emulated phone the head runs natively and is held until the phone would have
finished it, as a TensorFlow head is (docs/emulation.md), but paced in its own runtime:
the preset's reference latency is the phone's runtime's, so :class:`LiteRTPhone` runs
the reference model *in LiteRT* before each head and holds the head for ``(reference -
call) x head / reference + call``, both native ``invoke`` times on the host as it is at
that moment. (Paced by the TensorFlow reference instead, a loaded host slows the two
runtimes differently: LiteRT heads of MobileNetV2 held 62-201 ms against a 138 ms
preset at a load average of 4.)
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dnntune.errors import DnntuneError
from dnntune.litert.convert import LayerMap, build_layer_map, convert_keras, interpreter
from dnntune.litert.profile import (
    LiteRTSettings,
    Progress,
    ordered_outputs,
    profile_litert,
    run_litert,
)
from dnntune.profiling.dilation import MIN_PACES, REFRESH_RUNS, REFRESH_WARMUP, SPLIT_PACES

if TYPE_CHECKING:
    from dnntune.model.loading import LoadedModel
    from dnntune.profiling.profile import Profile, Stats

FRAMEWORKS = ("tf", "litert")
CACHED_HEADS = 16


def check_framework(name: str, field: str = "--framework") -> str:
    """``tf`` or ``litert`` ("" = ``tf``); anything else is one line naming ``field``."""
    name = name or "tf"
    if name not in FRAMEWORKS:
        raise DnntuneError(f"{field} must be one of {', '.join(FRAMEWORKS)}, got {name!r}")
    return name


def invoke_clock(threads: int) -> Callable[[], float]:
    """The clock an emulated phone times LiteRT ``invoke`` on, in seconds.

    With one thread, the interpreter runs on the calling thread, and its CPU time
    (``time.thread_time``) is what the phone's CPU would do: a neighbour on the host
    that takes the core away for a while does not add to it, where wall time would add it
    and dilation would multiply it by the phone's factor (x16 for dnntune_phone:
    MobileNetV2 mobile-only measured +25 % on a host running a type checker). Heads and
    the reference that paces them are timed on the same clock, so the factor stays
    their ratio. With more threads the work is spread over a pool: wall time.
    """
    return time.thread_time if threads == 1 else time.perf_counter


class LiteRTHead:
    """A converted head: model inputs in, the head's outputs (by name) out."""

    def __init__(self, tflite: bytes, outputs: Sequence[str], threads: int) -> None:
        self.tflite = tflite
        self.it = interpreter(tflite, threads)
        self.clock = invoke_clock(threads)
        self._inputs = sorted(self.it.get_input_details(), key=lambda d: d["index"])
        self._outputs = [d["index"] for d in ordered_outputs(self.it)]
        self.names = tuple(outputs)
        if len(self._outputs) != len(self.names):
            raise DnntuneError(f"internal: a LiteRT head has {len(self._outputs)} outputs, "
                               f"its cut {len(self.names)}")

    def timed(self, inputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """The head's outputs and the seconds ``invoke`` took (its in-graph time, on
        :func:`invoke_clock`)."""
        for d, x in zip(self._inputs, inputs, strict=True):
            self.it.set_tensor(d["index"], np.asarray(x, dtype=d["dtype"]))
        start = self.clock()
        self.it.invoke()
        seconds = self.clock() - start
        return [self.it.get_tensor(i) for i in self._outputs], seconds


@dataclass(frozen=True)
class LiteRTSplit:
    """A TensorFlow split (names, tail, cut) whose head runs in LiteRT.

    Quacks like :class:`dnntune.model.split.SplitModel` for
    :func:`dnntune.rpc.splitrun.run_split`; on an emulated phone ``hold`` and ``pace``
    are its :class:`LiteRTPhone`'s, which run_split takes in place of the device's.
    """

    split: Any  # the SplitModel: names, the cut, and the tail the cloud runs
    head: LiteRTHead | None
    hold: Callable[[float, float], None] | None = None
    pace: Callable[[], object] | None = None

    @property
    def cut(self) -> Any:
        return self.split.cut

    @property
    def tail(self) -> Any:
        return self.split.tail

    @property
    def tail_inputs(self) -> tuple[str, ...]:
        return tuple(self.split.tail_inputs)

    @property
    def model_outputs(self) -> tuple[str, ...]:
        return tuple(self.split.model_outputs)

    def run_head_timed(self, inputs: Sequence[np.ndarray]
                       ) -> tuple[dict[str, np.ndarray], float]:
        """The held tensors and the head's native ``invoke`` seconds."""
        held = dict(zip(self.split.model_inputs, inputs, strict=True))
        seconds = 0.0
        if self.head is not None:
            outs, seconds = self.head.timed(inputs)
            held.update(zip(self.head.names, outs, strict=True))
        return held, seconds

    def run_head(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_head_timed(inputs)[0]


def check_cut(layer_map: LayerMap, index: int) -> None:
    """Refuse a cut the LiteRT graph does not have (fused away), naming why."""
    status = {c.index: c for c in layer_map.cuts}
    if index not in status:
        raise DnntuneError(f"cut {index} out of range 0..{len(layer_map.cuts) - 1}")
    cut = status[index]
    if not cut.exists:
        raise DnntuneError(f"cut {index} (after {cut.after}) does not exist in LiteRT: "
                           f"{cut.reason} (dnntune convert lists the cuts that do)")


def prepare_litert_split(loaded: LoadedModel, split: Any, layer_map: LayerMap,
                         threads: int, precision: str = "fp32") -> LiteRTSplit:
    """Convert ``split``'s head to LiteRT (a compile step: call it before any run)."""
    check_cut(layer_map, split.cut.index)
    if split.head is None:
        return LiteRTSplit(split, None)
    tflite = convert_keras(split.head, loaded.input_shapes, loaded.input_dtypes, precision,
                           loaded.seed, f"{loaded.name} head {split.cut.index}")
    return LiteRTSplit(split, LiteRTHead(tflite, split.head_outputs, threads))


def layer_map_of(loaded: LoadedModel, precision: str = "fp32") -> LayerMap:
    """The layer map of the whole model, as ``dnntune convert`` builds it."""
    tflite = convert_keras(loaded.model, loaded.input_shapes, loaded.input_dtypes, precision,
                           loaded.seed, loaded.name)
    return build_layer_map(tflite, loaded.graph, precision)


class LiteRTPhone:
    """The emulated phone's pace for LiteRT heads: its reference model, in LiteRT.

    ``device`` is the agent's :class:`~dnntune.profiling.dilation.DilatedDevice` (its
    preset: reference model, latency and call). :meth:`prepare` converts the reference
    once, before any split run (a compile step); :meth:`refresh` fits the factor on
    30 back-to-back runs, :meth:`pace` refits it before each head on the last few runs
    (as the device does for TensorFlow heads) and :meth:`hold` holds a head's result.
    """

    def __init__(self, device: Any, threads: int) -> None:
        self.device = device
        self.threads = threads
        self._reference: LiteRTHead | None = None
        self._inputs: list[np.ndarray] = []
        self._paces: deque[float] = deque(maxlen=SPLIT_PACES)
        self.factor = 0.0
        self.native_ms = 0.0
        self._factors: list[float] = []

    @property
    def _budget_ms(self) -> float:
        spec = self.device.spec
        return float(spec.reference.latency_ms - spec.call_ms)

    def prepare(self) -> None:
        from dnntune.model.loading import load_model

        if self._reference is None:
            loaded = load_model(self.device.spec.reference.model, calibrate=False)
            tflite = convert_keras(loaded.model, loaded.input_shapes, loaded.input_dtypes,
                                   "fp32", loaded.seed, loaded.name)
            self._reference = LiteRTHead(tflite, ["output"], self.threads)
            self._inputs = loaded.example_inputs()

    def _run(self) -> float:
        self.prepare()
        assert self._reference is not None
        return self._reference.timed(self._inputs)[1] * 1e3

    def refresh(self) -> float:
        """Fit the factor on the reference's native LiteRT time now; returns it."""
        from dnntune.profiling.stats import undisturbed_mean

        for _ in range(REFRESH_WARMUP):
            self._run()
        self.native_ms = undisturbed_mean([self._run() for _ in range(REFRESH_RUNS)])
        self.factor = self._budget_ms / self.native_ms
        self._paces.clear()
        return self.factor

    def pace(self) -> None:
        """Run the reference once before a head; the factor follows the last few runs."""
        self._paces.append(self._run())
        self.factor = self._budget_ms / float(np.median(self._paces))

    def hold(self, started: float, native_in_graph_s: float) -> None:
        """Wait until the head that started at ``started`` would have finished on the
        phone: ``factor x native + call``."""
        call_ms = float(self.device.spec.call_ms)
        deadline = started + (self.factor * native_in_graph_s * 1e3 + call_ms) / 1e3
        while (left := deadline - time.perf_counter()) > 0:
            time.sleep(left)

    def time_head(self, it: Any, inputs: Sequence[np.ndarray], warmup_runs: int,
                  num_runs: int) -> Stats:
        """A head's times on the phone, as :meth:`hold` makes a split run take them.

        Native ``invoke()`` runs, the reference run in LiteRT after each (paced, as a
        dilated TensorFlow profile is); the factor of this head is fitted on those
        reference runs (at least :data:`MIN_PACES`), and each kept run reports ``factor x
        native + call``. Runs the host disturbed (over 1.15 x the median) are dropped, as
        a dilated profile drops them.
        """
        from dnntune.profiling.stats import summarize, undisturbed, undisturbed_mean

        run_litert(it, inputs)
        for _ in range(warmup_runs):
            it.invoke()
        samples, paces = np.empty(num_runs), []
        clock = invoke_clock(self.threads)
        for i in range(num_runs):
            start = clock()
            it.invoke()
            samples[i] = (clock() - start) * 1e3
            paces.append(self._run())
        while len(paces) < MIN_PACES:
            paces.append(self._run())
        self.native_ms = undisturbed_mean(paces)
        self.factor = self._budget_ms / self.native_ms
        self._factors.append(self.factor)
        kept = samples[undisturbed(samples)]
        return summarize(self.factor * kept + float(self.device.spec.call_ms))

    def profile(self, loaded: LoadedModel, settings: LiteRTSettings,
                progress: Progress | None = None, field: str = "--cuts") -> Profile:
        """The LiteRT per-cut profile of ``loaded`` on this phone: each head timed by
        :meth:`time_head`; the profile records the emulation with the mean factor."""
        self.refresh()
        self._factors = []
        profile = profile_litert(loaded, settings, progress, self.time_head, field)
        factor = float(np.mean(self._factors)) if self._factors else self.factor
        call = float(self.device.spec.call_ms)
        emulation = dataclasses.replace(
            self.device.emulation, factor=factor, native_ms=self._budget_ms / factor,
            achieved_ms=self._budget_ms + call, checked_ms=0.0,
            reference_source=f"{self.device.spec.reference.source}; run in LiteRT")
        measured = profile.measured_cuts
        assert measured is not None
        note = (f"; on the emulated {emulation.preset}: each head's native runs x the "
                f"factor fitted on {self.device.spec.reference.model} in LiteRT run after "
                f"each of them (mean x{factor:.3g}) + the {call:g} ms call")
        return dataclasses.replace(
            profile, meta=dataclasses.replace(profile.meta, emulation=emulation.to_dict()),
            measured_cuts=dataclasses.replace(measured, source=measured.source + note))


class HeadCache:
    """Converted heads and layer maps an agent keeps (least recently used go first)."""

    def __init__(self, size: int = CACHED_HEADS) -> None:
        self.size = size
        self.lock = threading.Lock()
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = make()
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return value
