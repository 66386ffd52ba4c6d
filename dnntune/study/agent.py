"""The deployment study on a device agent: ``Device.StudyDeployment``.

The agent runs the same per-configuration fresh-process machinery as
``dnntune study deployment`` does locally (:mod:`dnntune.study.deployment`), on its own
machine and with its own CPU topology. Every request field is checked here, at the edge,
before anything is built; one study or profile runs at a time (the agent's profile lock:
UNAVAILABLE while busy), and a cancelled call or a passed deadline kills the running
worker and frees the lock at once.

Example:
    >>> # state.deployment_study = DeploymentStudyService(state)
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from dnntune.errors import DnntuneError
from dnntune.profiling.topology import SYSFS_CPU, CpuTopology, read_topology
from dnntune.rpc.gate import BusyError
from dnntune.rpc.limits import MAX_NAME_CHARS, quoted
from dnntune.rpc.servicers import ServerState, key_from_spec, rpc_errors, status_code
from dnntune.study.spec import FRAMEWORKS, PRECISIONS, StudySpec

MAX_CONFIGURATIONS = 64   # configurations x rounds per request
MAX_THREADS = 64
MAX_RUNS = 1000
MAX_WARMUP_RUNS = 100
MAX_ROUNDS = 10
MAX_AFFINITY_CHARS = 64
MAX_ENTRIES = {"frameworks": 2, "precisions": 3, "threads": 8, "affinities": 16}
STUDY_CHUNK_BYTES = 1 << 20
FIELD = "DeploymentStudyRequest"
log = logging.getLogger("dnntune.server")
_PATH = re.compile(r"(?<![\w.])/[^\s'\":,;)]+")


def _entries(request: Any, name: str) -> list[Any]:
    values = list(getattr(request, name))
    if len(values) > MAX_ENTRIES[name]:
        raise DnntuneError(f"{FIELD}.{name}: {len(values)} entries, at most "
                           f"{MAX_ENTRIES[name]}")
    if len(set(values)) != len(values):
        raise DnntuneError(f"{FIELD}.{name}: an entry is repeated")
    return values


def _one_of(request: Any, name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = _entries(request, name)
    for v in values:
        if v not in allowed:
            raise DnntuneError(f"{FIELD}.{name}: unknown {name[:-1]} {quoted(v)}, expected "
                               f"{', '.join(allowed)}")
    return tuple(values)


def _in_range(value: int, field: str, low: int, high: int, default: str) -> None:
    if not low <= value <= high:
        raise DnntuneError(f"{FIELD}.{field} must be {default}{low} to {high}, got {value}")


def check_study_request(request: Any, topology: CpuTopology, energy: str) -> StudySpec:
    """The :class:`StudySpec` a request asks for (its model left as ``"model"``), every
    field checked against the limits and this agent's ``topology``.

    Raises:
        DnntuneError: INVALID_ARGUMENT, one line naming the field.
        LimitError: RESOURCE_EXHAUSTED, too many configurations.
    """
    from dnntune.rpc.limits import LimitError
    from dnntune.study.deployment import resolve_affinities

    frameworks = _one_of(request, "frameworks", FRAMEWORKS) or FRAMEWORKS
    precisions = _one_of(request, "precisions", PRECISIONS) or ("fp32", "int8")
    threads = tuple(_entries(request, "threads")) or (1,)
    for t in threads:
        _in_range(t, "threads", 1, MAX_THREADS, "")
    affinities = tuple(_entries(request, "affinities"))
    for a in affinities:
        if len(a) > MAX_AFFINITY_CHARS:
            raise DnntuneError(f"{FIELD}.affinities: an affinity is over "
                               f"{MAX_AFFINITY_CHARS} characters")
    affinities = affinities or topology.default_affinities()
    try:
        resolve_affinities(affinities, topology)
    except DnntuneError as exc:
        raise DnntuneError(f"{FIELD}.affinities: {exc}") from None
    _in_range(request.num_runs, "num_runs", 0, MAX_RUNS, "0 (= 10) or ")
    _in_range(request.warmup_runs, "warmup_runs", 0, MAX_WARMUP_RUNS, "")
    _in_range(request.rounds, "rounds", 0, MAX_ROUNDS, "0 (= 1) or ")
    spec = StudySpec(("model",), frameworks, precisions, threads, affinities,
                     num_runs=request.num_runs or 10, warmup_runs=request.warmup_runs,
                     energy=energy, rounds=request.rounds or 1)
    count = len(spec.variants()) * len(threads) * len(affinities) * spec.rounds
    if count > MAX_CONFIGURATIONS:
        raise LimitError(f"{FIELD}: {count} configurations x rounds, at most "
                         f"{MAX_CONFIGURATIONS} per request; split the study")
    if not spec.variants():
        raise DnntuneError(f"{FIELD}.frameworks: nothing to run")
    return spec


def emulation_notes(state: ServerState) -> list[str]:
    """What an emulated agent's study can and cannot show (nothing if not emulated)."""
    emulation = state.device.emulation.to_dict() if state.device else state.emulation
    if not emulation:
        return []
    preset = emulation.get("preset", "a phone")
    if emulation.get("mechanism") == "dilation":
        how = ("by time dilation, which paces Profile and RunSplit only: the study's "
               "workers are fresh processes on this host's own cores, so its latencies "
               "are this host's, not the phone's")
    else:
        how = ("in a CPU-quota cgroup its workers inherit: each latency is the whole model "
               "at the calibrated share of this host's cores")
    return [f"this agent emulates {preset} {how}. An emulated phone slows every core "
            f"alike and cannot represent clusters of different speeds, so this study "
            f"gives no big/little figures for {preset}; run it on the phone's own Linux "
            "for those"]


class DeploymentStudyService:
    """``Device.StudyDeployment``: set as ``ServerState.deployment_study`` by the agent."""

    def __init__(self, state: ServerState, sysfs: str = SYSFS_CPU) -> None:
        self.s = state
        self.sysfs = sysfs

    def __call__(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with rpc_errors(context, "StudyDeployment"):
            spec, key, topology = self._check(request)
            if not self.s.profile_lock.acquire(blocking=False):
                raise BusyError("a profile or deployment study is in progress on this "
                                "agent; retry when it ends")
        gone = threading.Event()  # the caller cancelled or its deadline passed
        context.add_callback(gone.set)
        for item in self._events(spec, key, topology, gone):
            if isinstance(item, DnntuneError):
                context.abort(*_status(item))
            yield item

    def _check(self, request: Any) -> tuple[StudySpec, Any, CpuTopology]:
        from dnntune.profiling.energy import check_served_energy

        if len(request.energy) > MAX_NAME_CHARS:
            raise DnntuneError(f"{FIELD}.energy is over {MAX_NAME_CHARS} characters")
        own = self.s.power_profile
        aliases: set[str] = {own, str((self.s.emulation or {}).get("preset", own))
                             } if own else set()
        energy = check_served_energy(request.energy, f"{FIELD}.energy", aliases)
        if own and energy.partition(":")[2] in aliases:
            energy = f"model:{own}"
        if request.model.batch_size > 1:
            raise DnntuneError(f"{FIELD}.model.batch_size must be 0 or 1: the study runs "
                               "one input")
        if request.model.sha256 and request.model.input_shape:
            raise DnntuneError(f"{FIELD}.model.input_shape: an uploaded file runs at its own "
                               "input shape; leave it empty")
        topology = read_topology(self.sysfs)
        spec = check_study_request(request, topology, energy)
        key = key_from_spec(request.model, self.s.limits)
        if key.sha256:
            self.s.store.uploaded_file(key.sha256)  # never uploaded: NOT_FOUND now
        return spec, key, topology

    def _events(self, spec: StudySpec, key: Any, topology: CpuTopology,
                gone: threading.Event) -> Iterator[Any]:
        """Progress events then the study's JSON chunks (or a DnntuneError); the profile
        lock, already held, is released when the study ends."""
        pb2 = self.s.pb2
        events: queue.Queue[Any] = queue.Queue()
        done = object()

        def progress(stage: str, n: int, total: int) -> None:
            events.put(pb2.DeploymentStudyEvent(progress=pb2.Progress(
                stage=stage, done=n, total=total)))

        def work() -> None:
            try:
                with self.s.gate.profiling(gone) as alone:
                    doc = self._run(spec, key, topology, progress, gone) if alone else None
                    if doc is not None:
                        events.put(doc)
            except DnntuneError as exc:
                events.put(exc)
            except Exception:  # report; never let the worker die silently
                log.exception("internal error in a deployment study")
                events.put(DnntuneError("internal server error in the deployment study"))
            finally:
                self.s.studying.clear()
                self.s.profile_lock.release()
                events.put(done)

        self.s.studying.set()
        try:
            threading.Thread(target=work, name="dnntune-study", daemon=True).start()
        except BaseException:
            self.s.studying.clear()
            self.s.profile_lock.release()
            raise
        while (item := events.get()) is not done:
            if isinstance(item, bytes):
                for start in range(0, len(item), STUDY_CHUNK_BYTES):
                    yield pb2.DeploymentStudyEvent(
                        study_json_chunk=item[start:start + STUDY_CHUNK_BYTES])
            else:
                yield item

    def _run(self, spec: StudySpec, key: Any, topology: CpuTopology, progress: Any,
             gone: threading.Event) -> bytes | None:
        from dnntune.study.deployment import (
            StudyStoppedError,
            choose_energy,
            run_deployment_study,
            study_document,
        )

        with self.s.use_model(key, "StudyDeployment") as entry:
            notes = [f"CPU topology: {topology.describe()}"]
            if not topology.heterogeneous:
                notes.append("no big.LITTLE clusters here, so affinities are core counts")
            energy = choose_energy(spec.energy, topology, spec.energy_seconds)
            notes += [f"energy: {energy.label} ({energy.note})", *energy.notes,
                      *emulation_notes(self.s)]
            try:
                rows = run_deployment_study(spec, topology, energy, progress,
                                            load=lambda _: entry.loaded,
                                            should_stop=gone.is_set)
            except StudyStoppedError:
                return None  # nobody is listening
        doc = study_document(rows, [_no_paths(n) for n in notes], topology.describe())
        return json.dumps(doc, allow_nan=False).encode()


def _no_paths(text: str) -> str:
    """``text`` with every absolute path cut to its file name (no server path leaves)."""
    return _PATH.sub(lambda m: m.group().rstrip("/").rsplit("/", 1)[-1] or "<path>", text)


def _status(exc: DnntuneError) -> tuple[grpc.StatusCode, str]:
    """A worker's failure is INTERNAL (with its reason, paths removed); the rest as usual."""
    from dnntune.study.deployment import WorkerFailedError

    if isinstance(exc, WorkerFailedError):
        return grpc.StatusCode.INTERNAL, _no_paths(str(exc))
    return status_code(exc), _no_paths(str(exc))
