"""The framework/precision study (DNNTune's influence factors): TensorFlow vs LiteRT at
fp32, fp16 and int8, per model.

For each model and (framework, precision) it reports latency (mean, p90) of whole-model
inferences, model size, resident-memory growth while building and running it, the size
of what was loaded and the peak resident growth of the inferences alone, energy per
inference (measured or estimated, labelled, when asked), and
output agreement with fp32 TensorFlow on generated inputs (max abs difference, top-1
agreement over the last axis). TensorFlow runs the model as one compiled
``tf.function``; LiteRT runs the converted model in ``ai_edge_litert`` (XNNPACK). Set
the thread count before the first TensorFlow op (see
:func:`dnntune.profiling.instrument.configure_runtime`).

Example:
    >>> # rows = run_study(["tiny_resnet"], ("tf", "litert"), ("fp32", "int8"))
    >>> # write_study(rows, "study-out")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnntune.errors import DnntuneError

FRAMEWORKS = ("tf", "litert")


@dataclass(frozen=True)
class StudyRow:
    """One model under one framework and precision (times in ms, sizes in bytes)."""

    model: str
    framework: str
    precision: str
    mean_ms: float
    p90_ms: float
    model_bytes: int
    rss_growth_bytes: int
    max_abs_diff: float
    top1_agreement: float
    runs: int
    threads: int
    note: str = ""
    loaded_bytes: int = 0
    inference_rss_growth_bytes: int = 0
    peak_rss_bytes: int = 0
    energy_mj: float = float("nan")
    energy_label: str = "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: a NaN (the precision could not be converted) becomes ``None``."""
        return {k: None if isinstance(v, float) and v != v else v
                for k, v in asdict(self).items()}


def parse_list(text: str, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in items if x not in allowed]
    if not items or bad:
        raise DnntuneError(f"{flag} {text!r}: expected a comma-separated subset of "
                           f"{', '.join(allowed)}")
    return items


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _agreement(outputs: Sequence[list[np.ndarray]], reference: Sequence[list[np.ndarray]]
               ) -> tuple[float, float]:
    diff, agree, total = 0.0, 0, 0
    for got, ref in zip(outputs, reference, strict=True):
        for g, r in zip(got, ref, strict=True):
            g64, r64 = np.asarray(g, np.float64), np.asarray(r, np.float64)
            diff = max(diff, float(np.abs(g64 - r64).max()))
            if r64.ndim and r64.shape[-1] > 1:
                same = np.argmax(g64, axis=-1) == np.argmax(r64, axis=-1)
                agree += int(same.sum())
                total += int(same.size)
    return diff, (agree / total if total else 1.0)


def _time(call: Callable[[], object], warmup: int, runs: int) -> tuple[np.ndarray, Any]:
    """Wall-clock ms of ``runs`` calls after warm-up, and the peak-RSS window over them."""
    from dnntune.profiling.rss import PeakWindow

    for _ in range(warmup):
        call()
    window = PeakWindow.start()
    out = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        call()
        out[i] = (time.perf_counter() - start) * 1e3
    return out, window


PowerFn = Callable[[Callable[[], object]], tuple[float, str]]
"""``P_active − P_idle`` in mW while a run function loops, and the energy label."""


def _memory_energy(t: np.ndarray, window: Any, power: PowerFn | None,
                   call: Callable[[], object]) -> dict[str, Any]:
    from dnntune.profiling.rss import peak_rss_bytes

    out: dict[str, Any] = {"inference_rss_growth_bytes": window.growth_bytes(),
                           "peak_rss_bytes": peak_rss_bytes()}
    if power is not None:
        delta_mw, label = power(call)
        out.update(energy_mj=float(t.mean()) * delta_mw / 1e3, energy_label=label)
    return out


def study_model(name: str, frameworks: Sequence[str], precisions: Sequence[str],
                runs: int = 20, warmup: int = 3, threads: int = 1, samples: int = 4,
                progress: Callable[[str], None] | None = None,
                power: PowerFn | None = None) -> list[StudyRow]:
    """Rows for one zoo model or model file (TensorFlow only at fp32).

    Memory per row: the size of what the framework loads (the Keras file, the
    ``.tflite``), and the peak resident growth over the timed inferences; energy per
    inference when ``power`` is given (mean latency × its ``P_active − P_idle``).
    """
    import os

    from dnntune.litert.convert import convert_model, interpreter
    from dnntune.litert.profile import run_litert
    from dnntune.model.loading import compile_model, load_model
    from dnntune.profiling.profiler import _param_bytes

    loaded = load_model(name)
    inputs = [loaded.example_inputs(seed=loaded.seed + i) for i in range(samples)]
    rss0 = _rss()
    run_tf = compile_model(loaded.model)
    reference = [run_tf(list(x)) for x in inputs]
    rows = []
    if "tf" in frameworks:
        def call_tf() -> object:
            return run_tf(inputs[0])
        t, window = _time(call_tf, warmup, runs)
        loaded_bytes = (os.path.getsize(loaded.file) if loaded.file
                        and os.path.isfile(loaded.file) else _param_bytes(loaded.model))
        rows.append(StudyRow(loaded.name, "tf", "fp32", float(t.mean()),
                             float(np.percentile(t, 90)), _param_bytes(loaded.model),
                             _rss() - rss0, 0.0, 1.0, runs, threads,
                             "compiled tf.function; size = weight bytes", loaded_bytes,
                             **_memory_energy(t, window, power, call_tf)))
    for precision in precisions if "litert" in frameworks else ():
        if progress:
            progress(f"{loaded.name} litert {precision}")
        before = _rss()
        try:
            conversion = convert_model(loaded, precision)
        except DnntuneError as exc:
            rows.append(StudyRow(loaded.name, "litert", precision, float("nan"), float("nan"),
                                 0, 0, float("nan"), float("nan"), 0, threads, str(exc)))
            continue
        it = interpreter(conversion.tflite, threads)
        outputs = [run_litert(it, x) for x in inputs]
        diff, top1 = _agreement(outputs, reference)
        run_litert(it, inputs[0])
        t, window = _time(it.invoke, warmup, runs)
        rows.append(StudyRow(loaded.name, "litert", precision, float(t.mean()),
                             float(np.percentile(t, 90)), len(conversion.tflite),
                             _rss() - before, diff, top1, runs, threads,
                             "ai-edge-litert XNNPACK; size = .tflite bytes",
                             len(conversion.tflite),
                             **_memory_energy(t, window, power, it.invoke)))
    return rows


def run_study(models: Sequence[str], frameworks: Sequence[str], precisions: Sequence[str],
              **kwargs: Any) -> list[StudyRow]:
    """:func:`study_model` over several models."""
    return [row for name in models for row in study_model(name, frameworks, precisions,
                                                          **kwargs)]


def study_frame(rows: Sequence[StudyRow]) -> Any:
    """The rows as a pandas DataFrame, with the speed-up over TensorFlow per model."""
    import pandas as pd

    frame = pd.DataFrame([r.to_dict() for r in rows])
    tf_ms = frame[frame.framework == "tf"].set_index("model")["mean_ms"]
    frame["speedup_vs_tf"] = [tf_ms.get(m, np.nan) / v if v else np.nan
                              for m, v in zip(frame.model, frame.mean_ms, strict=True)]
    return frame


def plot_study(rows: Sequence[StudyRow], path: str | Path) -> Path:
    """Bar chart: mean latency and size per model and framework/precision."""
    from matplotlib.figure import Figure

    frame = study_frame(rows)
    fig = Figure(figsize=(11, 4.5), dpi=100)
    axes = fig.subplots(1, 2)
    keys = list(dict.fromkeys(zip(frame.framework, frame.precision, strict=True)))
    models = list(dict.fromkeys(frame.model))
    width = 0.8 / max(len(keys), 1)
    for k, (fw, prec) in enumerate(keys):
        part = frame[(frame.framework == fw) & (frame.precision == prec)].set_index("model")
        xs = np.arange(len(models)) + k * width
        axes[0].bar(xs, [part["mean_ms"].get(m, np.nan) for m in models], width,
                    label=f"{fw} {prec}")
        axes[1].bar(xs, [part["model_bytes"].get(m, np.nan) / 1e6 for m in models], width)
    for ax, title in zip(axes, ("mean latency (ms)", "model size (MB)"), strict=True):
        ax.set_xticks(np.arange(len(models)) + width * (len(keys) - 1) / 2, models,
                      rotation=20)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def write_study(rows: Sequence[StudyRow], out_dir: str | Path) -> list[Path]:
    """``study.json``, ``study.csv`` and ``study.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"rows": [r.to_dict() for r in rows]}
    (out / "study.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    study_frame(rows).to_csv(out / "study.csv", index=False)
    return [out / "study.json", out / "study.csv", plot_study(rows, out / "study.png")]


def power_function(spec: str, threads: int, seconds: float = 1.0) -> PowerFn | None:
    """``--energy`` as a :data:`PowerFn`: the power model's increment for ``threads``
    (no measurement), or a hardware meter's active power while the run function loops
    minus idle power measured once here; ``None`` for ``none``."""
    from dnntune.profiling.energy import (
        PowerModelMeter,
        get_meter,
        measure_active_power,
        measure_idle_power,
    )

    meter = get_meter(spec, threads=threads).meter
    if meter is None:
        return None
    if isinstance(meter, PowerModelMeter):
        delta, label = meter.active_power_mw - meter.idle_power_mw, meter.label
        return lambda call: (delta, label)
    hardware = meter
    idle = measure_idle_power(hardware, seconds).power_mw
    return lambda call: (measure_active_power(hardware, call, seconds).power_mw - idle,
                         hardware.label)
