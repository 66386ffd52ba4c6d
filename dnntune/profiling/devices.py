"""Device power profiles: active and idle power per processing unit, from YAML.

``configs/devices/<name>.yaml`` describes a device's CPU clusters (a shared cost while
any core of the cluster runs, plus a cost per busy core) and its idle power; every
figure carries its source in a comment. The power-model estimator in
:mod:`dnntune.profiling.energy` turns a profile into an "estimated" meter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from dnntune.errors import ConfigError, DnntuneError


@dataclass(frozen=True)
class CpuCluster:
    """CPU cores of one kind: a shared cost while any runs, plus a cost per busy core."""

    name: str
    cores: int
    active_mw: float
    core_active_mw: float


@dataclass(frozen=True)
class ReferenceLatency:
    """A published latency of a named model on the device, with where it comes from."""

    model: str
    latency_ms: float
    source: str


@dataclass(frozen=True)
class EmulationPreset:
    """What :mod:`dnntune.profiling.emulation` needs to emulate the device on this machine.

    Attributes:
        threads: Intra-op threads the device runs the model with (as in the reference).
        reference: The latency the CPU share is calibrated to.
    """

    threads: int
    reference: ReferenceLatency
    call_ms: float = 0.0
    call_source: str = ""

    @property
    def call_note(self) -> str:
        """Where the phone's per-call cost comes from (``emulation.call``)."""
        return self.call_source or DEFAULT_CALL_SOURCE


# What an app on the phone pays per inference outside the model's layers. The emulated
# phone never charges the host's Python/TensorFlow dispatch (a phone app does not run
# TensorFlow-Python): it charges this modelled figure instead.
DEFAULT_CALL_SOURCE = ("modelled: LiteRT Interpreter::Invoke runs the graph in native code "
                       "with no per-call dispatch to speak of (assumed 0 ms)")

MECHANISMS = ("dilation", "quota")


def split_emulate(text: str) -> tuple[str, str]:
    """``"<preset>[:<mechanism>]"`` as ``(preset, mechanism)``; the default is dilation.

    Example:
        >>> split_emulate("pixel1"), split_emulate("pixel1:quota")
        (('pixel1', 'dilation'), ('pixel1', 'quota'))
    """
    head, sep, tail = text.rpartition(":")
    if sep and tail in MECHANISMS and head:
        return head, tail
    return text, "dilation"


@dataclass(frozen=True)
class DeviceProfile:
    """A device's power model, from ``configs/devices/<name>.yaml``.

    Attributes:
        name: The file's stem; energy figures are labelled ``estimated:<name>``.
        idle_power_mw: The awake, idle device (subtracted, as in DNNTune).
        cpu_active_mw: Added once while any CPU core is busy.
        clusters: CPU clusters in the order busy threads are placed on them.
        gpu_active_mw: Added while the GPU runs the model, if the profile has one.
        emulation: How to emulate the device (``emulation:`` section), if it can be.
    """

    name: str
    description: str
    idle_power_mw: float
    cpu_active_mw: float
    clusters: tuple[CpuCluster, ...]
    gpu_active_mw: float | None
    source: Path
    emulation: EmulationPreset | None = None

    def active_increment_mw(self, unit: str, threads: int) -> tuple[float, str]:
        """``P_active − P_idle`` for ``unit`` ("cpu" or "gpu") and a note on clamping."""
        if unit == "gpu":
            if self.gpu_active_mw is None:
                raise DnntuneError(f"{self.source}: no 'gpu' section, so unit 'gpu' cannot "
                                   "be estimated")
            return self.gpu_active_mw, ""
        if unit != "cpu":
            raise DnntuneError(f"processing unit must be 'cpu' or 'gpu', got {unit!r}")
        total_cores = sum(c.cores for c in self.clusters)
        note = ""
        if threads > total_cores:
            note = f"{threads} threads > {total_cores} cores in {self.source.name}: estimated " \
                   f"for {total_cores}"
        left, delta = min(threads, total_cores), self.cpu_active_mw
        for cluster in self.clusters:
            k = min(left, cluster.cores)
            if k:
                delta += cluster.active_mw + k * cluster.core_active_mw
            left -= k
        return delta, note


def default_profile_dirs() -> tuple[Path, ...]:
    """``./configs/devices`` (so a user's own profiles win), then the shipped ones."""
    from dnntune.resources import data_path

    return (Path.cwd() / "configs" / "devices", data_path("configs", "devices"))


def find_device_profile(name: str, search_dirs: Sequence[Path] | None = None) -> Path:
    """The YAML file for profile ``name`` (or ``name`` itself if it is a ``.yaml`` path).

    Example:
        >>> find_device_profile("pixel3").name
        'pixel3.yaml'
    """
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise DnntuneError(f"device profile {path} does not exist")
        return path
    dirs = tuple(search_dirs) if search_dirs is not None else default_profile_dirs()
    if "/" in name or "\\" in name or name.startswith("."):
        raise DnntuneError(f"device profile name {name!r} must be a plain name or a .yaml path")
    for d in dirs:
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})
    raise DnntuneError(f"device profile {name!r} not found in {', '.join(map(str, dirs))}; "
                       f"available: {', '.join(known) or 'none'}")


def load_device_profile(path: str | Path) -> DeviceProfile:
    """Read and validate a device power profile; errors name the file and the key.

    Example:
        >>> load_device_profile(find_device_profile("raspberry_pi4")).clusters[0].cores
        4
    """

    path = Path(path)
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DnntuneError(f"{path}: cannot read device profile ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(where, f"not valid YAML ({exc})") from None
    top = _mapping(data, "", where, required=("description", "idle_power_mw", "cpu"),
                   optional=("gpu", "emulation"))
    cpu = _mapping(top["cpu"], "cpu", where, required=("clusters",), optional=("active_mw",))
    raw_clusters = cpu["clusters"]
    if not isinstance(raw_clusters, list) or not raw_clusters:
        raise ConfigError(where, "key 'cpu.clusters' must be a non-empty list of clusters")
    clusters = []
    for i, raw in enumerate(raw_clusters):
        key = f"cpu.clusters[{i}]"
        c = _mapping(raw, key, where, required=("name", "cores", "active_mw", "core_active_mw"))
        cores = c["cores"]
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise ConfigError(where, f"key '{key}.cores' must be an integer >= 1, got {cores!r}")
        clusters.append(CpuCluster(str(c["name"]), cores, _power(c, "active_mw", key, where),
                                   _power(c, "core_active_mw", key, where)))
    gpu = None
    if top.get("gpu") is not None:
        gpu = _power(_mapping(top["gpu"], "gpu", where, required=("active_mw",)),
                     "active_mw", "gpu", where)
    if not isinstance(top["description"], str):
        raise ConfigError(where, f"key 'description' must be text, got {top['description']!r}")
    emulation = None if top.get("emulation") is None else _emulation(top["emulation"], where)
    return DeviceProfile(path.stem, top["description"], _power(top, "idle_power_mw", "", where),
                         _power(cpu, "active_mw", "cpu", where, default=0.0), tuple(clusters),
                         gpu, path, emulation)


def _emulation(data: object, where: str) -> EmulationPreset:
    section = _mapping(data, "emulation", where, required=("threads", "reference"),
                       optional=("call",))
    threads = section["threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(where, f"key 'emulation.threads' must be an integer >= 1, "
                                 f"got {threads!r}")
    ref = _mapping(section["reference"], "emulation.reference", where,
                   required=("model", "latency_ms", "source"))
    latency = ref["latency_ms"]
    if isinstance(latency, bool) or not isinstance(latency, int | float) or not (
            math.isfinite(latency) and latency > 0):
        raise ConfigError(where, f"key 'emulation.reference.latency_ms' must be a latency in "
                                 f"ms (a number > 0), got {latency!r}")
    for key in ("model", "source"):
        text = ref[key]
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(where, f"key 'emulation.reference.{key}' must be non-empty text, "
                                     f"got {text!r}")
    call_ms, call_source = 0.0, ""
    if section.get("call") is not None:
        call = _mapping(section["call"], "emulation.call", where, required=("ms", "source"))
        call_ms = _duration(call, "ms", "emulation.call", where)
        if not isinstance(call["source"], str) or not call["source"].strip():
            raise ConfigError(where, f"key 'emulation.call.source' must be non-empty text, "
                                     f"got {call['source']!r}")
        call_source = f"modelled: {call['source'].strip()}"
    return EmulationPreset(threads, ReferenceLatency(str(ref["model"]), float(latency),
                                                     str(ref["source"]).strip()),
                           call_ms, call_source)


def _duration(data: dict[str, object], k: str, key: str, where: str) -> float:
    value = data[k]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise ConfigError(where, f"key '{key}.{k}' must be a duration in ms (a number >= 0), "
                                 f"got {value!r}")
    return float(value)


def load_emulation_preset(name: str, search_dirs: Sequence[Path] | None = None
                          ) -> DeviceProfile:
    """A device profile that can be emulated (has ``emulation.reference``), by name.

    ``name`` may end in ``:<mechanism>`` (:func:`split_emulate`), which is ignored here.

    Raises:
        DnntuneError: naming the known presets when ``name`` is unknown, or the file
            when it has no ``emulation`` section.

    Example:
        >>> load_emulation_preset("dnntune_phone").emulation.reference.model
        'mobilenet_v2'
    """
    name = split_emulate(name)[0]
    profile = load_device_profile(find_device_profile(name, search_dirs))
    if profile.emulation is None:
        dirs = tuple(search_dirs) if search_dirs is not None else default_profile_dirs()
        usable = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")
                         if "emulation:" in p.read_text()})
        raise DnntuneError(f"device preset {name!r} ({profile.source}) has no "
                           f"'emulation.reference' latency to calibrate to; presets that "
                           f"can be emulated: {', '.join(usable) or 'none'}")
    return profile


def _mapping(data: object, key: str, where: str, required: Sequence[str] = (),
             optional: Sequence[str] = ()) -> dict[str, object]:
    name = f"key '{key}'" if key else "the document"
    if not isinstance(data, dict):
        raise ConfigError(where, f"{name} must be a mapping, got {type(data).__name__}")
    prefix = f"{key}." if key else ""
    for k in data:  # unknown keys first: a misspelt key is also a "missing" one
        if k not in required and k not in optional:
            raise ConfigError(where, f"unknown key '{prefix}{k}' (expected "
                                     f"{', '.join(map(repr, [*required, *optional]))})")
    for k in required:
        if k not in data:
            raise ConfigError(where, f"missing key '{prefix}{k}'")
    return data


def _power(data: dict[str, object], k: str, key: str, where: str,
           default: float | None = None) -> float:
    full = f"{key}.{k}" if key else k
    value = data.get(k, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise ConfigError(where, f"key '{full}' must be a power in mW (a number >= 0), "
                                 f"got {value!r}")
    return float(value)
