"""Run configuration files (YAML), parsed once into frozen, typed objects.

Example ``configs/mobilenet_v2.yaml``::

    model:
      name: mobilenet_v2          # a zoo name, or a path to a .keras/.h5 file
      input_shape: [224, 224, 3]  # optional, without the batch dimension
      batch_size: 1
      seed: 1234
    profiling:
      num_runs: 50
      warmup_runs: 5
    objective: energy-first       # or latency-first
    links: [3g, 4g, wifi]         # presets, links YAML files or trace files
    wire: [fp32, uint8, jpeg90, fp16, int8]  # encodings of what crosses a cut (dnntune.wire)
    processing:
      device: {threads: 1, cpu_affinity: [], energy: auto}
      cloud: {threads: 2, energy: none}

Every problem raises :class:`ConfigError` naming the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dnntune.analysis.links import Link, resolve_links
from dnntune.errors import ConfigError, DnntuneError
from dnntune.model.loading import DEFAULT_SEED


@dataclass(frozen=True)
class SideConfig:
    """How one side (device or cloud) runs the model."""

    threads: int = 1
    cpu_affinity: tuple[int, ...] = ()
    energy: str = "auto"
    emulate: str | None = None  # device only: a preset in configs/devices


@dataclass(frozen=True)
class RunConfig:
    model: str
    input_shape: tuple[int, ...] | None = None
    batch_size: int = 1
    seed: int = DEFAULT_SEED
    num_runs: int = 50
    warmup_runs: int = 5
    device: SideConfig = field(default_factory=SideConfig)
    cloud: SideConfig = field(default_factory=lambda: SideConfig(threads=2, energy="none"))
    objective: str = "energy-first"
    links: tuple[str, ...] = ("3g", "4g", "wifi")
    # What crosses a cut: float32 as profiled unless the config names encodings; the
    # built-in default run (configs/default.yaml) uses REALISTIC_WIRE.
    wire: tuple[str, ...] = ("fp32",)
    source: str = field(default="", compare=False)  # the file it was read from, if any


OBJECTIVES = ("latency-first", "energy-first")
# How an app ships data: the input as uint8 pixels or JPEG, activations as fp16 or int8;
# fp32 stays for comparison with DNNTune's assumption (docs/wire.md).
REALISTIC_WIRE = ("fp32", "uint8", "jpeg90", "fp16", "int8")
# Ranges of the numbers a user sets (flags and config keys alike): an absurd value is
# refused at the edge, never an overflow inside TensorFlow or protobuf.
MAX_BATCH_SIZE = 1024  # the servers' limit too (proto: batch_size 1..1024)
MAX_RUNS = 100_000
MAX_WARMUP_RUNS = 10_000
MAX_THREADS = 1024
MAX_SEED = 2**31 - 1
ENERGY_KINDS = ("auto", "none", "rapl", "battery", "ina3221")  # and model:<profile>


def _is_energy_spec(text: str) -> bool:
    kind, sep, arg = text.partition(":")
    if kind == "model":
        return bool(arg)
    return kind in ENERGY_KINDS and not (kind in ("auto", "none") and sep)


def config_links(config: RunConfig, flag_links: list[str] | None) -> list[Link]:
    """The links to analyze: ``--links`` if given, else the config's, checked now.

    A bad link in a config file is reported against that file and its ``links`` key.
    """
    if flag_links:
        return resolve_links(flag_links)
    try:
        return resolve_links([",".join(config.links)])
    except DnntuneError as exc:
        if not config.source:
            raise
        raise ConfigError(config.source, f"key 'links': {exc}") from None


def with_overrides(config: RunConfig, model: str | None = None, num_runs: int | None = None,
                   warmup_runs: int | None = None, emulate: str | None = None) -> RunConfig:
    """``config`` with command-line overrides; a new model drops the config's input shape.

    ``emulate`` is a device preset, or ``"none"`` for this machine as it is.
    """
    changes: dict[str, object] = {}
    if model == "":
        raise DnntuneError("--model is empty: expected a zoo name or a .keras/.h5 file")
    if emulate is not None:
        changes["device"] = dataclasses.replace(
            config.device, emulate=None if emulate == "none" else emulate)
    if model:
        changes.update(model=model, input_shape=None)
    if num_runs is not None:
        changes["num_runs"] = num_runs
    if warmup_runs is not None:
        changes["warmup_runs"] = warmup_runs
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def default_config_path() -> Path:
    """The shipped ``configs/default.yaml`` (from a clone or an installed wheel)."""
    from dnntune.resources import data_path

    return data_path("configs", "default.yaml")


def default_config() -> RunConfig:
    """The built-in default run: configs/default.yaml when present, else the same values."""
    path = default_config_path()
    return load_config(path) if path.is_file() else RunConfig(
        model="mobilenet_v2", device=SideConfig(emulate="dnntune_phone"), wire=REALISTIC_WIRE)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a run configuration file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(str(path), f"not valid YAML{line}") from None
    return parse_config(data, str(path))


# DNNTune's (Xia et al. 2019) model keys, read as they are: a frozen graph and its tensors.
DNNTUNE_KEYS = ("file", "input_name", "input_shape", "output_name", "data_type")
_DNNTUNE_DTYPES = {"float": "float32", "float32": "float32", "fp32": "float32",
                   "float16": "float16", "half": "float16", "fp16": "float16",
                   "uint8": "uint8", "quint8": "uint8", "int8": "int8", "qint8": "int8",
                   "int32": "int32", "int64": "int64"}


def is_dnntune_config(data: Any) -> bool:
    """Is ``data`` a DNNTune configuration (a ``file:`` key at the top or under ``model``)?"""
    if not isinstance(data, Mapping):
        return False
    model = data.get("model")
    return "file" in data or (isinstance(model, Mapping) and "file" in model)


def parse_dnntune_config(data: Mapping[str, Any], where: str) -> RunConfig:
    """A DNNTune configuration mapped onto a :class:`RunConfig`.

    ``file`` (relative to the config's folder), ``input_name``, ``output_name`` (a name,
    a list or comma-separated names), ``input_shape`` (the graph's full input shape,
    batch first, as DNNTune gives it: ``1,224,224,3``) and ``data_type`` become the
    graph model spec (:mod:`dnntune.model.tf_graph`) and batch size; dnntune's own
    sections (``profiling``, ``processing``, ``objective``, ``links``, ``wire``) are read
    as usual; every other key is named in one line on stderr and not used.
    """
    import sys

    from dnntune.model.tf_graph import format_graph_spec

    nested = isinstance(data.get("model"), Mapping)
    model = dict(data["model"]) if nested else {k: data[k] for k in DNNTUNE_KEYS if k in data}
    prefix = "model." if nested else ""
    own = ("profiling", "processing", "objective", "links", "wire")
    unknown = [f"{prefix}{k}" for k in model if k not in DNNTUNE_KEYS]
    unknown += [k for k in data if k not in own and k not in DNNTUNE_KEYS and k != "model"]
    if unknown:
        print(f"dnntune: warning: {where}: DNNTune key(s) dnntune does not use: "
              f"{', '.join(unknown)}", file=sys.stderr)
    file = model["file"]
    if not isinstance(file, str) or not file.strip():
        raise ConfigError(where, f"key '{prefix}file' must be a graph file (.pb) or "
                                 f"SavedModel folder, got {file!r}")
    path = Path(file)
    if not path.is_absolute() and not path.exists() and where:
        beside = Path(where).parent / path
        path = beside if beside.exists() else path

    def names(key: str) -> tuple[str, ...]:
        value = model.get(key)
        if value is None:
            return ()
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(x, str) and x.strip()
                                                  for x in items):
            raise ConfigError(where, f"key '{prefix}{key}' must be a tensor name or a list "
                                     f"of them, got {value!r}")
        return tuple(x.strip() for x in items)

    dtype = model.get("data_type")
    if dtype is not None:
        key = str(dtype).lower().removeprefix("dt_")
        if key not in _DNNTUNE_DTYPES:
            raise ConfigError(where, f"key '{prefix}data_type' must be one of "
                                     f"{', '.join(sorted(_DNNTUNE_DTYPES))}, got {dtype!r}")
        dtype = _DNNTUNE_DTYPES[key]
    shape = model.get("input_shape")
    if isinstance(shape, str):
        text = shape
        try:
            shape = [int(d) for d in text.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            shape = [-1]  # reported below with the value as written
    batch, dims = 1, None
    if shape is not None:
        if (not isinstance(shape, list) or len(shape) < 2
                or not all(isinstance(d, int) and d > 0 for d in shape)):
            raise ConfigError(where, f"key '{prefix}input_shape' must be the input's full "
                                     f"shape, batch first, e.g. 1,224,224,3, got "
                                     f"{model.get('input_shape')!r}")
        batch, dims = shape[0], shape[1:]
    rest = {k: data[k] for k in own if k in data}
    rest["model"] = {"name": format_graph_spec(path, names("input_name"),
                                               names("output_name"), dtype),
                     "batch_size": batch, **({"input_shape": dims} if dims else {})}
    return parse_config(rest, where)


def parse_config(data: Any, where: str) -> RunConfig:
    if is_dnntune_config(data):
        return parse_dnntune_config(data, where)
    top = _section(data, "", where, ("model", "profiling", "processing", "objective", "links",
                                     "wire"))
    model = _section(top.get("model"), "model", where, ("name", "input_shape", "batch_size",
                                                        "seed"))
    if "name" not in model:
        raise ConfigError(where, "key 'model.name' is required (a zoo name or a model file)")
    profiling = _section(top.get("profiling", {}), "profiling", where,
                         ("num_runs", "warmup_runs"))
    processing = _section(top.get("processing", {}), "processing", where, ("device", "cloud"))
    shape = model.get("input_shape")
    if shape is not None and (not isinstance(shape, list) or not shape
                              or not all(isinstance(d, int) and d > 0 for d in shape)):
        raise ConfigError(where, f"key 'model.input_shape' must be a list of positive "
                                 f"integers without the batch, e.g. [224, 224, 3], got {shape!r}")
    defaults = RunConfig(model="")
    objective = top.get("objective", defaults.objective)
    if objective not in OBJECTIVES:
        raise ConfigError(where, f"key 'objective' must be one of {', '.join(OBJECTIVES)}, "
                                 f"got {objective!r}")
    links = top.get("links", list(defaults.links))
    if not isinstance(links, list) or not links or not all(isinstance(x, str) for x in links):
        raise ConfigError(where, f"key 'links' must be a list of link names or files, "
                                 f"got {links!r}")
    return RunConfig(
        objective=objective, links=tuple(links), source=where,
        wire=_wire(top.get("wire", list(defaults.wire)), where),
        model=str(model["name"]),
        input_shape=tuple(shape) if shape is not None else None,
        batch_size=_int(model, "batch_size", "model", where, 1, 1, MAX_BATCH_SIZE),
        seed=_int(model, "seed", "model", where, DEFAULT_SEED, 0),
        num_runs=_int(profiling, "num_runs", "profiling", where, defaults.num_runs, 1, MAX_RUNS),
        warmup_runs=_int(profiling, "warmup_runs", "profiling", where, defaults.warmup_runs, 0,
                         MAX_WARMUP_RUNS),
        device=_side(processing.get("device", {}), "processing.device", where, defaults.device),
        cloud=_side(processing.get("cloud", {}), "processing.cloud", where, defaults.cloud),
    )


def _wire(value: Any, where: str) -> tuple[str, ...]:
    """The ``wire`` key: a list (or comma-separated string) of known encoding names."""
    from dnntune.wire.codecs import parse_encodings

    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
        raise ConfigError(where, f"key 'wire' must be a list of encodings, e.g. [fp32, int8], "
                                 f"got {value!r}")
    try:
        return tuple(e.name for e in parse_encodings(value))
    except ConfigError as exc:
        raise ConfigError(where, f"key 'wire': {exc.problem}") from None


def _section(value: Any, key: str, where: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    name = f"'{key}'" if key else "the top level"
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"{name} must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        prefix = f"{key}." if key else ""
        raise ConfigError(where, f"unknown key '{prefix}{unknown[0]}' (expected one of "
                                 f"{', '.join(prefix + a for a in allowed)})")
    return value


def _int(section: Mapping[str, Any], key: str, parent: str, where: str, default: int,
         minimum: int, maximum: int = MAX_SEED) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(where, f"key '{parent}.{key}' must be an integer from {minimum} to "
                                 f"{maximum}, got {value!r}")
    return value


def _side(value: Any, key: str, where: str, default: SideConfig) -> SideConfig:
    allowed = ("threads", "cpu_affinity", "energy", "emulate")
    side = _section(value, key, where, allowed if key.endswith("device") else allowed[:3])
    affinity = side.get("cpu_affinity", list(default.cpu_affinity))
    if not isinstance(affinity, list) or not all(isinstance(c, int) and c >= 0
                                                 for c in affinity):
        raise ConfigError(where, f"key '{key}.cpu_affinity' must be a list of core numbers, "
                                 f"got {affinity!r}")
    energy = side.get("energy", default.energy)
    if not isinstance(energy, str) or not _is_energy_spec(energy):
        raise ConfigError(where, f"key '{key}.energy' must be one of "
                                 f"{', '.join(ENERGY_KINDS)} or model:<profile> "
                                 f"(hardware meters take an optional ':<argument>'), "
                                 f"got {energy!r}")
    emulate = side.get("emulate", default.emulate)
    if emulate is not None and (not isinstance(emulate, str) or not emulate):
        raise ConfigError(where, f"key '{key}.emulate' must be a device preset name (see "
                                 f"configs/devices) or none, got {emulate!r}")
    return SideConfig(threads=_int(side, "threads", key, where, default.threads, 1, MAX_THREADS),
                      cpu_affinity=tuple(affinity), energy=energy,
                      emulate=None if emulate in (None, "none") else emulate)
