"""The mobile-only deployment study (DNNTune's Fig. 14 and Table 5): for one device, a
model's latency, energy and memory under every framework/precision × thread count × CPU
affinity, and the best configuration for each.

Each configuration runs in a fresh worker process (:mod:`dnntune.study.worker`) pinned to
its CPUs before the framework starts, so thread pools are created under the affinity and
thread count. Energy is measured where a hardware meter exists (active power of the
worker's inference loop minus idle power measured once), else estimated from a device
power model with each busy core priced by its cluster, and labelled either way.

Example:
    >>> # spec = StudySpec(("tiny_resnet",), ("tf", "litert"), ("fp32",), (1,), ("all",))
    >>> # rows = run_deployment_study(spec, read_topology())
    >>> # write_deployment_study(rows, "out", notes)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dnntune.errors import DnntuneError
from dnntune.profiling.topology import CpuTopology, format_cpus
from dnntune.study.spec import StudySpec

if TYPE_CHECKING:
    from dnntune.model.loading import LoadedModel
    from dnntune.profiling.devices import DeviceProfile

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: "prepare" 0/1 per model, then each configuration
as it starts with the configurations finished so far and the model's total."""

OBJECTIVES = ("latency", "energy", "memory")
WORKER_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DeploymentRow:
    """One configuration of one model (ms, mJ per inference, mW, bytes)."""

    model: str
    framework: str
    precision: str
    threads: int
    affinity: str
    cpus: str
    mean_ms: float
    p90_ms: float
    energy_mj: float
    power_mw: float
    energy_label: str
    model_file_bytes: int
    load_rss_growth_bytes: int
    inference_rss_growth_bytes: int
    peak_rss_growth_bytes: int
    runs: int
    worker_ready_s: float
    worker_total_s: float
    best: str = ""
    note: str = ""

    @property
    def config(self) -> str:
        return f"{self.framework} {self.precision} t{self.threads} {self.affinity}"

    def to_dict(self) -> dict[str, Any]:
        return {k: None if isinstance(v, float) and v != v else v
                for k, v in asdict(self).items()}


@dataclass(frozen=True)
class EnergyModel:
    """How a configuration's energy is priced: a measured idle power and a hardware meter
    spec for the workers, or a device power profile, or nothing."""

    label: str
    note: str
    meter_spec: str | None = None
    meter_root: str = "/"
    idle_power_mw: float | None = None
    profile: DeviceProfile | None = None
    notes: list[str] = field(default_factory=list)


def estimate_power_mw(profile: DeviceProfile, topology: CpuTopology, cpus: Sequence[int],
                      threads: int) -> tuple[float, str]:
    """``P_active − P_idle`` (mW) of ``threads`` busy threads pinned to ``cpus``.

    Busy cores: ``min(threads, len(cpus))``, placed on the fastest of ``cpus`` first. On a
    board whose clusters match the profile's in number, host cluster i (fastest first) is
    priced as the profile's i-th most power-hungry cluster; otherwise the busy cores fill
    the profile's clusters in its listed order (as :class:`PowerModelMeter` does), and the
    note says so.
    """
    busy = min(threads, len(cpus))
    delta = profile.cpu_active_mw
    if topology.heterogeneous and len(topology.clusters) == len(profile.clusters):
        priced = sorted(profile.clusters, key=lambda c: c.core_active_mw, reverse=True)
        left = busy
        parts = []
        for host, model in zip(topology.clusters, priced, strict=True):
            k = min(left, len([c for c in cpus if c in host.cpus]))
            if k:
                delta += model.active_mw + k * model.core_active_mw
                parts.append(f"{k} {host.name} core(s) as {model.name}")
            left -= k
        return delta, ", ".join(parts)
    left = busy
    parts = []
    for model in profile.clusters:
        k = min(left, model.cores)
        if k:
            delta += model.active_mw + k * model.core_active_mw
            parts.append(f"{k} core(s) as {model.name}")
        left -= k
    if len(profile.clusters) == 1 or not parts:
        return delta, ", ".join(parts)
    return delta, ", ".join(parts) + " (the profile's fill order: this host's clusters do " \
                                     "not match the profile's)"


def choose_energy(spec: str, topology: CpuTopology, seconds: float,
                  meter_root: str = "/") -> EnergyModel:
    """Resolve ``--energy`` once for the whole study (idle power measured here; the
    workers read the same meter under ``meter_root``)."""
    from dnntune.profiling.energy import PowerModelMeter, get_meter, measure_idle_power

    choice = get_meter(spec, meter_root)
    meter = choice.meter
    if meter is None:
        return EnergyModel("none", choice.note)
    if isinstance(meter, PowerModelMeter):
        profile = meter.profile
        model = EnergyModel(meter.label, choice.note, profile=profile)
        if len(profile.clusters) > 1 and not topology.heterogeneous:
            model.notes.append(
                f"{profile.name} has {len(profile.clusters)} CPU clusters "
                f"({', '.join(c.name for c in profile.clusters)}) but this machine has "
                f"{topology.describe()}: latencies are this machine's cores, the clusters "
                "only price the energy, busiest-first. An emulated phone (a CPU share of "
                "this host) slows every core alike and cannot represent clusters of "
                "different speeds, so 'big' and 'little' affinities are not offered here")
        return model
    idle = measure_idle_power(meter, seconds).power_mw
    return EnergyModel(meter.label, choice.note, meter_spec=spec if spec != "auto" else
                       meter.name, meter_root=meter_root, idle_power_mw=idle)


class StudyStoppedError(DnntuneError):
    """The study was stopped (its caller cancelled or its deadline passed); the worker that
    was running has been killed."""


class WorkerFailedError(DnntuneError):
    """A configuration's worker process failed: crashed, ran out of memory or time."""


def _worker(request: dict[str, Any], label: str,
            should_stop: Callable[[], bool] | None = None) -> tuple[dict[str, Any], float]:
    """Run one configuration in a fresh worker; ``label`` names it in errors (never a path).

    ``should_stop`` is polled every 0.2 s: when it turns true the worker is killed and
    :class:`StudyStoppedError` raised.
    """
    start = time.perf_counter()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "dnntune.study.worker"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    stdin: str | None = json.dumps(request)
    while True:
        try:
            stdout, stderr = proc.communicate(stdin, timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            stdin = None  # written already
            late = time.perf_counter() - start > WORKER_TIMEOUT_S
            if late or (should_stop is not None and should_stop()):
                proc.kill()
                proc.communicate()
                if late:
                    raise WorkerFailedError(f"study worker for {label} took more than "
                                       f"{WORKER_TIMEOUT_S:.0f} s") from None
                raise StudyStoppedError(f"study stopped during {label}") from None
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise WorkerFailedError(f"study worker for {label} failed "
                           f"(exit {proc.returncode}): {tail}")
    answer = json.loads(lines[-1])
    if "error" in answer:
        raise WorkerFailedError(f"study worker for {label}: {answer['error']}")
    return answer, time.perf_counter() - start


def _prepare(model: str, variants: Sequence[tuple[str, str]], folder: Path,
             load: Callable[[str], LoadedModel] | None = None
             ) -> tuple[str, dict[tuple[str, str], tuple[str, str]]]:
    """Model files per variant (path, note): the zoo's cached .keras, converted .tflite."""
    from dnntune.model.loading import load_model

    loaded = (load or load_model)(model)
    files: dict[tuple[str, str], tuple[str, str]] = {}
    for framework, precision in variants:
        if framework == "tf":
            if loaded.file is None:
                raise DnntuneError(f"{model}: no model file to load in a worker")
            files[(framework, precision)] = (loaded.file, "Keras file")
            continue
        from dnntune.litert.convert import convert_model

        try:
            conversion = convert_model(loaded, precision)
        except DnntuneError as exc:
            files[(framework, precision)] = ("", str(exc))
            continue
        path = folder / f"{loaded.name}_{precision}.tflite"
        path.write_bytes(conversion.tflite)
        files[(framework, precision)] = (str(path), ".tflite")
    return loaded.name, files


def resolve_affinities(affinities: Sequence[str], topology: CpuTopology
                       ) -> dict[str, tuple[int, ...]]:
    """Each affinity's CPUs, all of them existing and allowed to this process.

    Raises:
        DnntuneError: one line naming the affinity (see :meth:`CpuTopology.resolve`), or
            CPUs this process may not run on (a container's cpuset, ``taskset``).
    """
    cpusets = {a: topology.resolve(a) for a in affinities}
    allowed = set(os.sched_getaffinity(0))
    for name, cpus in cpusets.items():
        if not set(cpus) <= allowed:
            raise DnntuneError(f"affinity {name!r}: CPUs {format_cpus(cpus)} are not all "
                               f"allowed to this process (allowed: {format_cpus(allowed)})")
    return cpusets


def run_deployment_study(spec: StudySpec, topology: CpuTopology, energy: EnergyModel,
                         progress: Progress | None = None,
                         load: Callable[[str], LoadedModel] | None = None,
                         should_stop: Callable[[], bool] | None = None
                         ) -> list[DeploymentRow]:
    """Every configuration of every model, each in its own worker; rows with best marks.

    With ``spec.rounds`` > 1 the whole list of a model's configurations is run that many
    times in turn, so load that comes and goes hits every configuration alike; a row pools
    its rounds' timings and says how far its round means spread. ``load`` turns a model
    name into a loaded model (default :func:`load_model`; a device agent gives its own
    store's); ``should_stop`` stops the study (see :func:`_worker`).
    """
    cpusets = resolve_affinities(spec.affinities, topology)
    rows: list[DeploymentRow] = []
    with tempfile.TemporaryDirectory(prefix="dnntune-study-") as tmp:
        for model in spec.models:
            if progress:
                progress("prepare", 0, 1)
            name, files = _prepare(model, spec.variants(), Path(tmp), load)
            configs = [(fw, prec, threads, affinity, cpus, path, what)
                       for (fw, prec), (path, what) in files.items()
                       for threads in spec.threads for affinity, cpus in cpusets.items()]
            answers = _run_configs(spec, energy, name, configs, progress, should_stop)
            model_rows = [
                _row(topology, energy, name, *config, answers[i]) if config[5] else
                _failed(name, *config[:5], config[6])
                for i, config in enumerate(configs)]
            rows.extend(mark_best(model_rows))
    return rows


def _run_configs(spec: StudySpec, energy: EnergyModel, name: str, configs: Sequence[Any],
                 progress: Progress | None, should_stop: Callable[[], bool] | None
                 ) -> list[list[tuple[dict[str, Any], float]]]:
    answers: list[list[tuple[dict[str, Any], float]]] = [[] for _ in configs]
    total = spec.rounds * sum(1 for c in configs if c[5])
    done = 0
    for round_ in range(spec.rounds):
        for i, (fw, prec, threads, affinity, cpus, path, _) in enumerate(configs):
            if not path:
                continue
            label = (f"{fw} {prec} t{threads} {affinity}"
                     + (f" (round {round_ + 1}/{spec.rounds})" if spec.rounds > 1 else ""))
            if should_stop is not None and should_stop():
                raise StudyStoppedError(f"study stopped before {name} {label}")
            if progress:
                progress(label, done, total)
            request = {"framework": fw, "file": path, "threads": threads,
                       "cpus": list(cpus), "warmup": spec.warmup_runs,
                       "runs": spec.num_runs, "meter": energy.meter_spec,
                       "meter_root": energy.meter_root,
                       "energy_seconds": spec.energy_seconds}
            answers[i].append(_worker(request, f"{name} {label}", should_stop))
            done += 1
    return answers


def _failed(model: str, framework: str, precision: str, threads: int, affinity: str,
            cpus: Sequence[int], why: str) -> DeploymentRow:
    nan = float("nan")
    return DeploymentRow(model, framework, precision, threads, affinity, format_cpus(cpus),
                         nan, nan, nan, nan, "none", 0, 0, 0, 0, 0, 0.0, 0.0, note=why)


def _row(topology: CpuTopology, energy: EnergyModel, model: str, framework: str,
         precision: str, threads: int, affinity: str, cpus: Sequence[int], path: str,
         what: str, answers: Sequence[tuple[dict[str, Any], float]]) -> DeploymentRow:
    times = np.concatenate([np.asarray(a["times_ms"]) for a, _ in answers])
    mean_ms = float(times.mean())
    size = Path(path).stat().st_size
    notes = [f"{what} {size:,} B"]
    if len(answers) > 1:
        means = [float(np.mean(a["times_ms"])) for a, _ in answers]
        notes.append(f"{len(answers)} rounds, means {min(means):.3g}-{max(means):.3g} ms")
    if threads > len(cpus):
        notes.append(f"{threads} threads share {len(cpus)} CPU(s)")
    notes += sorted({a["peak_note"] for a, _ in answers if a.get("peak_note")})
    power = float("nan")
    if energy.profile is not None:
        power, how = estimate_power_mw(energy.profile, topology, cpus, threads)
        notes.append(how)
    else:
        active = [a["active_power_mw"] for a, _ in answers if a.get("active_power_mw")]
        if active and energy.idle_power_mw is not None:
            power = float(np.mean(active)) - energy.idle_power_mw
    return DeploymentRow(
        model, framework, precision, threads, affinity, format_cpus(cpus), mean_ms,
        float(np.percentile(times, 90)), mean_ms * power / 1e3, power, energy.label, size,
        max(int(a["load_rss_growth_bytes"]) for a, _ in answers),
        max(int(a["inference_rss_growth_bytes"]) for a, _ in answers),
        max(int(a["peak_rss_bytes"]) - int(a["baseline_rss_bytes"]) for a, _ in answers),
        len(times), float(np.mean([a["ready_s"] for a, _ in answers])),
        float(np.mean([t for _, t in answers])), note="; ".join(notes))


MEMORY_RESOLUTION_BYTES = 1 << 20
"""Peak RSS is compared at 1 MiB: rows that differ by less tie (the first one wins)."""


def _objective(row: DeploymentRow, objective: str) -> float:
    return {"latency": row.mean_ms, "energy": row.energy_mj,
            "memory": (float(round(row.peak_rss_growth_bytes / MEMORY_RESOLUTION_BYTES))
                       if row.runs else float("nan"))}[objective]


def mark_best(rows: Sequence[DeploymentRow]) -> list[DeploymentRow]:
    """Rows of one model with ``best`` naming the objectives each row is best for
    (least mean latency, least energy, least peak RSS growth at 1 MiB; the first on ties;
    an objective nobody measured marks nobody)."""
    from dataclasses import replace

    marks: dict[int, list[str]] = {}
    for objective in OBJECTIVES:
        values = [_objective(r, objective) for r in rows]
        finite = [i for i, v in enumerate(values) if v == v]
        if finite:
            marks.setdefault(min(finite, key=lambda i: values[i]), []).append(objective)
    return [replace(r, best=",".join(marks.get(i, []))) for i, r in enumerate(rows)]


def best_configurations(rows: Sequence[DeploymentRow]) -> dict[str, dict[str, str]]:
    """``{model: {objective: config}}`` from the marks."""
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        for objective in filter(None, r.best.split(",")):
            out.setdefault(r.model, {})[objective] = r.config
    return out


def study_frame(rows: Sequence[DeploymentRow]) -> Any:
    """The rows as a pandas DataFrame (the CSV's columns)."""
    import pandas as pd

    return pd.DataFrame([r.to_dict() for r in rows])


def plot_deployment(rows: Sequence[DeploymentRow], path: str | Path) -> Path:
    """Latency against energy per configuration, one panel per model; best ones starred."""
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r.model for r in rows))
    fig = Figure(figsize=(6 * len(models), 4.5), dpi=100)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models, strict=True):
        part = [r for r in rows if r.model == model and r.runs]
        for r in part:
            ax.scatter(r.mean_ms, r.energy_mj if r.energy_mj == r.energy_mj else 0.0,
                       marker="*" if r.best else "o", s=140 if r.best else 40)
            ax.annotate(r.config + (f" [{r.best}]" if r.best else ""),
                        (r.mean_ms, r.energy_mj if r.energy_mj == r.energy_mj else 0.0),
                        fontsize=7, xytext=(4, 3), textcoords="offset points")
        label = part[0].energy_label if part else "none"
        ax.set_xlabel("mean latency (ms)")
        ax.set_ylabel(f"energy per inference (mJ, {label})")
        ax.set_title(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def study_document(rows: Sequence[DeploymentRow], notes: Sequence[str],
                   topology: str) -> dict[str, Any]:
    """``deployment.json``'s document: the topology's one line, notes, best, rows."""
    return {"topology": topology, "notes": list(notes), "best": best_configurations(rows),
            "rows": [r.to_dict() for r in rows]}


def rows_from_document(doc: Any, where: str) -> list[DeploymentRow]:
    """The rows of a :func:`study_document` (``null`` back to NaN).

    Raises:
        DnntuneError: one line naming ``where`` if a row is not a row of this version.
    """
    names = {f.name for f in fields(DeploymentRow)}
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and set(r) == names
                                             for r in rows):
        raise DnntuneError(f"{where}: not a deployment study of this version (expected "
                           f"rows with the keys {', '.join(sorted(names))})")
    def values(r: dict[str, Any]) -> dict[str, Any]:
        return {k: float("nan") if v is None else v for k, v in r.items()}
    return [DeploymentRow(**values(r)) for r in rows]


def write_deployment_study(rows: Sequence[DeploymentRow], out_dir: str | Path,
                           notes: Sequence[str], topology: str) -> list[Path]:
    """``deployment.json``, ``deployment.csv`` and ``deployment.png`` in ``out_dir``;
    ``topology`` is the studied machine's :meth:`CpuTopology.describe`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = study_document(rows, notes, topology)
    (out / "deployment.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    study_frame(rows).to_csv(out / "deployment.csv", index=False)
    return [out / "deployment.json", out / "deployment.csv",
            plot_deployment(rows, out / "deployment.png")]
