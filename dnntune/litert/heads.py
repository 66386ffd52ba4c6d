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

On an emulated phone the head's native ``invoke`` time is dilated as a TensorFlow
head's is (:meth:`dnntune.profiling.dilation.DilatedDevice.hold`), with one more factor:
the preset's reference latency is the phone's runtime's, so a LiteRT head is scaled
against the reference model *in LiteRT* (:class:`RuntimeRatio`): ``held = (reference -
call) x head_litert / reference_litert + call``, the same arithmetic as dilation's.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dnntune.errors import DnntuneError
from dnntune.litert.convert import LayerMap, build_layer_map, convert_keras, interpreter
from dnntune.litert.profile import ordered_outputs

if TYPE_CHECKING:
    from dnntune.model.loading import LoadedModel

FRAMEWORKS = ("tf", "litert")
CACHED_HEADS = 16
RATIO_RUNS = 30


def check_framework(name: str, field: str = "--framework") -> str:
    """``tf`` or ``litert`` ("" = ``tf``); anything else is one line naming ``field``."""
    name = name or "tf"
    if name not in FRAMEWORKS:
        raise DnntuneError(f"{field} must be one of {', '.join(FRAMEWORKS)}, got {name!r}")
    return name


class LiteRTHead:
    """A converted head: model inputs in, the head's outputs (by name) out."""

    def __init__(self, tflite: bytes, outputs: Sequence[str], threads: int) -> None:
        self.tflite = tflite
        self.it = interpreter(tflite, threads)
        self._inputs = sorted(self.it.get_input_details(), key=lambda d: d["index"])
        self._outputs = [d["index"] for d in ordered_outputs(self.it)]
        self.names = tuple(outputs)
        if len(self._outputs) != len(self.names):
            raise DnntuneError(f"internal: a LiteRT head has {len(self._outputs)} outputs, "
                               f"its cut {len(self.names)}")

    def timed(self, inputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """The head's outputs and the seconds ``invoke`` took (its in-graph time)."""
        for d, x in zip(self._inputs, inputs, strict=True):
            self.it.set_tensor(d["index"], np.asarray(x, dtype=d["dtype"]))
        start = time.perf_counter()
        self.it.invoke()
        seconds = time.perf_counter() - start
        return [self.it.get_tensor(i) for i in self._outputs], seconds


@dataclass(frozen=True)
class LiteRTSplit:
    """A TensorFlow split (names, tail, cut) whose head runs in LiteRT.

    Quacks like :class:`dnntune.model.split.SplitModel` for
    :func:`dnntune.rpc.splitrun.run_split`.
    """

    split: Any  # the SplitModel: names, the cut, and the tail the cloud runs
    head: LiteRTHead | None
    runtime_ratio: float = 1.0  # native TF / native LiteRT of the reference (emulated)
    # On an emulated phone, run_split paces (runs the TensorFlow reference) before each
    # head; a LiteRT head, profiled back to back, is then warmed once more after it.
    warm_after_pace: bool = True

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
        """The held tensors and the head's native ``invoke`` seconds, expressed in the
        TensorFlow-native seconds the device's dilation factor applies to (x the
        reference's TF/LiteRT ratio; 1 when not emulated)."""
        held = dict(zip(self.split.model_inputs, inputs, strict=True))
        seconds = 0.0
        if self.head is not None:
            outs, seconds = self.head.timed(inputs)
            held.update(zip(self.head.names, outs, strict=True))
        return held, seconds * self.runtime_ratio

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
                         threads: int, precision: str = "fp32",
                         runtime_ratio: float = 1.0) -> LiteRTSplit:
    """Convert ``split``'s head to LiteRT (a compile step: call it before any run)."""
    check_cut(layer_map, split.cut.index)
    if split.head is None:
        return LiteRTSplit(split, None, runtime_ratio)
    tflite = convert_keras(split.head, loaded.input_shapes, loaded.input_dtypes, precision,
                           loaded.seed, f"{loaded.name} head {split.cut.index}")
    return LiteRTSplit(split, LiteRTHead(tflite, split.head_outputs, threads), runtime_ratio)


def layer_map_of(loaded: LoadedModel, precision: str = "fp32") -> LayerMap:
    """The layer map of the whole model, as ``dnntune convert`` builds it."""
    tflite = convert_keras(loaded.model, loaded.input_shapes, loaded.input_dtypes, precision,
                           loaded.seed, loaded.name)
    return build_layer_map(tflite, loaded.graph, precision)


class RuntimeRatio:
    """How much faster this host runs the emulated phone's reference model in LiteRT
    than in TensorFlow: ``native TF / native LiteRT``, so a LiteRT head's native time x
    this ratio x the device's (TensorFlow-fitted) factor is the phone's LiteRT time.

    Converts the reference once (when the first LiteRT head is prepared), then measures
    both runtimes back to back each time :meth:`measure` is called (before each batch
    of split runs, as the device refits its factor).
    """

    def __init__(self, device: Any, threads: int) -> None:
        self.device = device
        self.threads = threads
        self._head: LiteRTHead | None = None
        self._inputs: list[np.ndarray] = []

    def measure(self) -> float:
        from dnntune.model.loading import load_model
        from dnntune.profiling.stats import undisturbed_mean

        if self._head is None:
            loaded = load_model(self.device.spec.reference.model, calibrate=False)
            tflite = convert_keras(loaded.model, loaded.input_shapes, loaded.input_dtypes,
                                   "fp32", loaded.seed, loaded.name)
            self._head = LiteRTHead(tflite, ["output"], self.threads)
            self._inputs = loaded.example_inputs()
        for _ in range(RATIO_RUNS // 3):
            self._head.timed(self._inputs)
        lite = undisturbed_mean([self._head.timed(self._inputs)[1] * 1e3
                                 for _ in range(RATIO_RUNS)])
        tf_ms = self.device.measure_native(RATIO_RUNS, RATIO_RUNS // 3).latency_ms
        return float(tf_ms / lite)


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
