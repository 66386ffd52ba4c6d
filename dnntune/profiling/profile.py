"""The profile file: per-layer measurements of one model on one side (device or cloud).

A profile is a versioned JSON document. :func:`load_profile` turns it into frozen
dataclasses (validated once, with a message naming the file and key on any problem),
:func:`profile_to_dataframe` into a pandas DataFrame for notebooks. The layer graph is
embedded, so the analyzer needs nothing but two profile files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnntune.errors import ConfigError, DnntuneError
from dnntune.model.graph import LayerGraph, LayerNode

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "dnntune.profile"
SCHEMA_VERSION = 1
# Version 2 adds ``measured_cuts`` (device time of heads at chosen cuts); a version-1
# reader must not take such a profile's per-layer times for real, so only it says 2.
SCHEMA_VERSIONS = (1, 2)


@dataclass(frozen=True)
class Stats:
    """Summary statistics of repeated timings, in milliseconds."""

    n: int
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Stats:
        return cls(**_typed_fields(cls, data, where))


@dataclass(frozen=True)
class EnergyInfo:
    """How layer energies were obtained.

    Attributes:
        label: ``"measured:<meter>"``, ``"estimated:<power profile>"`` or ``"none"``.
        idle_power_mw: Power of the idle device (subtracted from the active power).
        active_power_mw: Average power while the model runs.
        note: Free text, e.g. why a measured meter fell back to the estimator.
    """

    label: str
    idle_power_mw: float
    active_power_mw: float
    note: str = ""

    @property
    def measured(self) -> bool:
        return self.label.startswith("measured:")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> EnergyInfo:
        return cls(**_typed_fields(cls, data, where))


@dataclass(frozen=True)
class LayerProfile:
    """One layer's description and measurements.

    Attributes:
        layer: The layer as in the graph (type, tensors, params, FLOPs).
        latency: Per-run timings of the layer inside the instrumented pass.
        energy_mj: ``latency.mean_ms × (P_active − P_idle)``, or ``None`` if not profiled.
    """

    layer: LayerNode
    latency: Stats
    energy_mj: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.layer.to_dict(), "latency": self.latency.to_dict(),
                "energy_mj": self.energy_mj}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> LayerProfile:
        layer = LayerNode.from_dict(data, where)
        here = f"{where} {layer.name!r}"
        derived = data.get("output_bytes", layer.output_bytes)
        if isinstance(derived, bool) or derived != layer.output_bytes:
            raise ConfigError(here, f"'output_bytes' must be the sum of the outputs' bytes, "
                                    f"{layer.output_bytes}, got {derived!r}")
        energy = data.get("energy_mj")
        if energy is not None and (isinstance(energy, bool)
                                   or not isinstance(energy, (int, float))):
            raise ConfigError(here, f"'energy_mj' must be a number or null, got {energy!r}")
        return cls(layer=layer,
                   latency=Stats.from_dict(_require(data, "latency", here), f"{here} latency"),
                   energy_mj=None if energy is None else float(energy))


@dataclass(frozen=True)
class CutLatency:
    """Device time of the head that ends at one prefix cut.

    Attributes:
        index: Layers on the device (the cut's index in :func:`dnntune.model.cuts.enumerate_cuts`).
        after: Name of the last device layer, ``None`` for cut 0.
        head: Timings of the head (model inputs to the cut's crossing tensors), in ms.
        bytes_up: Bytes of the crossing tensors as this head computes them (an int8
            head's quantised tensors, with their scale and zero point), when measured;
            ``None`` = the layer graph's sizes (float32 as profiled). Optional in JSON.
    """

    index: int
    after: str | None
    head: Stats
    bytes_up: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"index": self.index, "after": self.after, "head": self.head.to_dict()}
        if self.bytes_up is not None:
            out["bytes_up"] = self.bytes_up
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> CutLatency:
        after = _require(data, "after", where)
        sent = data.get("bytes_up")
        if sent is not None and (isinstance(sent, bool) or not isinstance(sent, int)
                                 or sent < 0):
            raise ConfigError(where, f"key 'bytes_up' must be a whole number of bytes >= 0, "
                                     f"got {sent!r}")
        return cls(index=int(_require(data, "index", where)),
                   after=None if after is None else str(after),
                   head=Stats.from_dict(_require(data, "head", where), f"{where} head"),
                   bytes_up=sent)


@dataclass(frozen=True)
class MeasuredCuts:
    """A device profile that holds prefix (head) latencies at chosen cuts only.

    Frameworks that fuse layers (LiteRT) cannot time every Keras layer, so the device
    side is measured per cut instead: ``kind == "heads"`` times each head on its own,
    ``kind == "ops"`` sums an on-device op profile's op times up to each cut that exists
    in the converted graph. The analyzer evaluates exactly these cuts; the per-layer
    latencies of such a profile are only what the cuts imply (see ``source``).

    Attributes:
        kind: ``"heads"`` or ``"ops"``.
        framework: Runtime and precision, e.g. ``"litert 2.3.0 fp32 (XNNPACK)"``.
        source: How the numbers were obtained, in words.
        cuts: The measured cuts, by increasing index; always cut 0 and the last cut.
    """

    kind: str
    framework: str
    source: str
    cuts: tuple[CutLatency, ...]

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(c.index for c in self.cuts)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "framework": self.framework, "source": self.source,
                "cuts": [c.to_dict() for c in self.cuts]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> MeasuredCuts:
        if not isinstance(data, Mapping):
            raise ConfigError(where, "expected a JSON object")
        kind = str(_require(data, "kind", where))
        if kind not in ("heads", "ops"):
            raise ConfigError(where, f"key 'kind' must be 'heads' or 'ops', got {kind!r}")
        cuts = tuple(CutLatency.from_dict(c, f"{where} cuts[{i}]")
                     for i, c in enumerate(_require(data, "cuts", where)))
        if [c.index for c in cuts] != sorted({c.index for c in cuts}):
            raise ConfigError(where, "cuts must have distinct, increasing indices")
        return cls(kind, str(_require(data, "framework", where)),
                   str(data.get("source", "")), cuts)


@dataclass(frozen=True)
class ProfileMeta:
    """Where, how and on what a profile was measured."""

    side: str
    model_name: str
    model_hash: str
    input_shapes: tuple[tuple[int, ...], ...]
    batch_size: int
    seed: int
    num_threads: int
    cpu_affinity: tuple[int, ...]
    warmup_runs: int
    num_runs: int
    host: str
    cpu_model: str
    os: str
    python_version: str
    tensorflow_version: str
    keras_version: str
    dnntune_version: str
    created_utc: str
    emulation: dict[str, Any] | None = None  # dnntune.profiling.emulation.Emulation.to_dict()

    @property
    def device_label(self) -> str:
        """``emulated:<preset>``, ``scaled:<preset>`` or ``measured`` (this machine)."""
        return str(self.emulation["label"]) if self.emulation else "measured"

    @property
    def device_note(self) -> str:
        """How the device was emulated or scaled, in one line (empty when measured)."""
        return str(self.emulation.get("description", "")) if self.emulation else ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shapes"] = [list(s) for s in self.input_shapes]
        d["cpu_affinity"] = list(self.cpu_affinity)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ProfileMeta:
        values = _typed_fields(cls, data, where)
        values["input_shapes"] = tuple(tuple(int(d) for d in s) for s in data["input_shapes"])
        values["cpu_affinity"] = tuple(int(c) for c in data["cpu_affinity"])
        return cls(**values)


@dataclass(frozen=True)
class MemoryInfo:
    """Memory of one framework running the model (bytes).

    Attributes:
        framework: ``tensorflow`` or ``litert``.
        loaded_bytes: Size of what was loaded: the model file (``.keras``/``.h5``, or the
            ``.tflite``); the weights' bytes for a model built in memory.
        loaded_what: What ``loaded_bytes`` counts, e.g. ``Keras file`` or ``.tflite int8``.
        setup_rss_growth_bytes: Resident-set growth from before the framework compiled the
            model to after its warm-up runs (graphs, kernels, arenas).
        inference_rss_growth_bytes: Peak resident-set growth over the timed inferences,
            from the resident set just before them (Linux ``VmHWM`` reset; see
            :mod:`dnntune.profiling.rss`).
        peak_rss_bytes: The process's peak resident set during the timed inferences.
    """

    framework: str
    loaded_bytes: int
    loaded_what: str
    setup_rss_growth_bytes: int
    inference_rss_growth_bytes: int
    peak_rss_bytes: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> MemoryInfo:
        return cls(**_typed_fields(cls, data, where))


@dataclass(frozen=True)
class Profile:
    """A full profile: metadata, the graph's layers with their timings, and totals.

    Attributes:
        end_to_end: In-graph timings of the *uninstrumented* model, measured in its own
            pass (from its inputs being ready to its outputs being ready).
        instrumented: Wall-clock timings of calls of the instrumented pass.
        overhead_pct: ``100 × (instrumented.mean / end_to_end_wall.mean − 1)``: what the
            timers cost a caller.
        ratio: ``sum(layer latency means) / end_to_end.mean``.
        param_bytes: Bytes of all weights.
        peak_rss_growth_bytes: Peak resident-set growth while profiling.
        end_to_end_wall: Wall-clock timings of calls of the uninstrumented model, which add
            the framework's per-call overhead to ``end_to_end``.
        memory: What the framework held to run the model (absent in older profiles).
    """

    meta: ProfileMeta
    layers: tuple[LayerProfile, ...]
    model_inputs: tuple[str, ...]
    model_outputs: tuple[str, ...]
    end_to_end: Stats
    instrumented: Stats
    overhead_pct: float
    ratio: float
    energy: EnergyInfo
    param_bytes: int
    peak_rss_growth_bytes: int
    end_to_end_wall: Stats | None = None
    measured_cuts: MeasuredCuts | None = None
    memory: MemoryInfo | None = None

    @property
    def call_overhead_ms(self) -> float:
        """Mean wall-clock time of a call outside the graph (dispatch, captures, copies)."""
        if self.end_to_end_wall is None:
            return 0.0
        return self.end_to_end_wall.mean_ms - self.end_to_end.mean_ms

    @property
    def device_note(self) -> str:
        """How the device was emulated or scaled (one line), and, when the profiled model
        is the emulation's reference, how far its in-graph time drifted from the
        calibration: a confined process follows the host's load.

        Example:
            >>> # "...runs in 136 ms against the reference ...; profiled at 148 ms in
            >>> #  graph, +9% on its calibration"
        """
        note = self.meta.device_note
        emulation = self.meta.emulation or {}
        calibrated = emulation.get("achieved_ms")
        if (emulation.get("mode") != "emulated" or not calibrated
                or emulation.get("mechanism") == "dilation"  # its description says it
                or emulation.get("reference_model") != self.meta.model_name):
            return note
        drift = self.end_to_end.mean_ms / float(calibrated) - 1.0
        return (f"{note}; profiled at {self.end_to_end.mean_ms:.3g} ms in graph, "
                f"{drift:+.0%} on its calibration")

    @property
    def graph(self) -> LayerGraph:
        return LayerGraph(self.meta.model_name, tuple(lp.layer for lp in self.layers),
                          self.model_inputs, self.model_outputs)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(lp.layer.name for lp in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION if self.measured_cuts is None else 2,
            "meta": self.meta.to_dict(),
            "model_inputs": list(self.model_inputs),
            "model_outputs": list(self.model_outputs),
            "end_to_end": self.end_to_end.to_dict(),
            "instrumented": self.instrumented.to_dict(),
            "overhead_pct": self.overhead_pct,
            "ratio": self.ratio,
            "energy": self.energy.to_dict(),
            "param_bytes": self.param_bytes,
            "peak_rss_growth_bytes": self.peak_rss_growth_bytes,
            "end_to_end_wall": (None if self.end_to_end_wall is None
                                else self.end_to_end_wall.to_dict()),
            "call_overhead_ms": self.call_overhead_ms,
            "layers": [lp.to_dict() for lp in self.layers],
            **({} if self.measured_cuts is None
               else {"measured_cuts": self.measured_cuts.to_dict()}),
            **({} if self.memory is None else {"memory": self.memory.to_dict()}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "profile") -> Profile:
        if not isinstance(data, Mapping):
            raise ConfigError(where, "expected a JSON object")
        if data.get("schema") != SCHEMA:
            raise ConfigError(where, f"key 'schema' must be {SCHEMA!r}, "
                                     f"got {data.get('schema')!r}")
        if data.get("schema_version") not in SCHEMA_VERSIONS:
            raise ConfigError(where, f"key 'schema_version' must be one of "
                                     f"{', '.join(map(str, SCHEMA_VERSIONS))}, "
                                     f"got {data.get('schema_version')!r}")
        try:
            layers = tuple(LayerProfile.from_dict(d, f"{where} layers[{i}]")
                           for i, d in enumerate(_require(data, "layers", where)))
            profile = cls(
                meta=ProfileMeta.from_dict(_require(data, "meta", where), f"{where} meta"),
                layers=layers,
                model_inputs=tuple(_require(data, "model_inputs", where)),
                model_outputs=tuple(_require(data, "model_outputs", where)),
                end_to_end=Stats.from_dict(_require(data, "end_to_end", where),
                                           f"{where} end_to_end"),
                instrumented=Stats.from_dict(_require(data, "instrumented", where),
                                             f"{where} instrumented"),
                overhead_pct=float(_require(data, "overhead_pct", where)),
                ratio=float(_require(data, "ratio", where)),
                energy=EnergyInfo.from_dict(_require(data, "energy", where), f"{where} energy"),
                param_bytes=int(_require(data, "param_bytes", where)),
                peak_rss_growth_bytes=int(_require(data, "peak_rss_growth_bytes", where)),
                end_to_end_wall=(None if data.get("end_to_end_wall") is None else
                                 Stats.from_dict(data["end_to_end_wall"],
                                                 f"{where} end_to_end_wall")),
                measured_cuts=(None if data.get("measured_cuts") is None else
                               MeasuredCuts.from_dict(data["measured_cuts"],
                                                      f"{where} measured_cuts")),
                memory=(None if data.get("memory") is None else
                        MemoryInfo.from_dict(data["memory"], f"{where} memory")),
            )
        except KeyError as exc:
            raise ConfigError(where, f"missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(where, f"bad value ({exc})") from None
        profile.graph  # noqa: B018 - validates that the embedded graph is consistent
        return profile


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write ``profile`` as indented JSON; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    return path


def load_profile(path: str | Path) -> Profile:
    """Read a profile file.

    Raises:
        DnntuneError: naming the file and the key when it is missing, not JSON, or
            lacks a field.

    Example:
        >>> # profile = load_profile("dnntune-runs/mobilenet_v2/device.json")
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DnntuneError(f"{path}: cannot read profile ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DnntuneError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None
    return Profile.from_dict(data, str(path))


def profile_to_dataframe(profile: Profile) -> pd.DataFrame:
    """One row per layer: name, type, output_bytes, params, flops, latency stats, energy."""
    import pandas as pd

    rows = []
    for i, lp in enumerate(profile.layers):
        row: dict[str, Any] = {"index": i, "name": lp.layer.name, "type": lp.layer.type,
                               "output_bytes": lp.layer.output_bytes,
                               "params": lp.layer.params, "flops": lp.layer.flops}
        row.update({f"latency_{k}": v for k, v in lp.latency.to_dict().items() if k != "n"})
        row["energy_mj"] = lp.energy_mj
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("index")
    frame.attrs.update(model=profile.meta.model_name, side=profile.meta.side,
                       energy_label=profile.energy.label,
                       device_label=profile.meta.device_label)
    return frame


def _require(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ConfigError(where, f"missing key {key!r}")
    return data[key]


def _typed_fields(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Pick the dataclass's fields out of ``data``, casting each to its annotated type."""
    if not isinstance(data, Mapping):
        raise ConfigError(where, "expected a JSON object")
    casts = {"int": int, "float": float, "str": str}
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is not MISSING:
                continue
            raise ConfigError(where, f"missing key {f.name!r}")
        cast = casts.get(str(f.type))
        try:
            out[f.name] = cast(data[f.name]) if cast else data[f.name]
        except (TypeError, ValueError):
            raise ConfigError(where, f"key {f.name!r} must be {f.type}, "
                                     f"got {data[f.name]!r}") from None
    return out


def check_same_model(device: Profile, cloud: Profile, names: Sequence[str] = ("device",
                                                                             "cloud")) -> None:
    """Raise if two profiles are not of the same model with the same layer list."""
    if device.meta.model_hash != cloud.meta.model_hash:
        raise DnntuneError(
            f"{names[0]} and {names[1]} profiles are of different models "
            f"(hash {device.meta.model_hash[:12]} vs {cloud.meta.model_hash[:12]})")
    if device.layer_names != cloud.layer_names:
        raise DnntuneError(f"{names[0]} and {names[1]} profiles list different layers")
