"""The deployment study through a device agent: the client of ``Device.StudyDeployment``.

The agent runs the study on its own machine (:mod:`dnntune.study.agent`); this side sends
the spec, one request per model (a model file is uploaded first and named by sha256),
follows the progress events and reads back the same document ``--out`` writes locally.

Example:
    >>> # rows, notes, topology = study_on_agent(Endpoint("phone:50052"), spec, progress)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc

from dnntune.errors import DnntuneError
from dnntune.rpc.client import SHORT_CALL_S, Endpoint, ProfilerClient, describe_rpc_error
from dnntune.study.deployment import DeploymentRow, rows_from_document
from dnntune.study.spec import StudySpec

PREPARE_S = 600.0           # loading and converting the model on the slowest agent expected
CONFIGURATION_S = 120.0     # starting a worker: importing TensorFlow and loading the model
RUN_S = 10.0                # per warm-up or timed run
DEFAULT_AFFINITIES = 8      # what an empty affinity list may become on the agent


def study_deadline_s(spec: StudySpec) -> float:
    """Deadline of one model's study: preparing it, then every configuration's worker."""
    affinities = len(spec.affinities) or DEFAULT_AFFINITIES
    configurations = len(spec.variants()) * len(spec.threads) * affinities * spec.rounds
    per = CONFIGURATION_S + RUN_S * (spec.num_runs + spec.warmup_runs) + \
        2 * spec.energy_seconds
    return 2 * SHORT_CALL_S + PREPARE_S + configurations * per


def study_request(client: ProfilerClient, model: str, spec: StudySpec) -> Any:
    """A ``DeploymentStudyRequest`` for ``model`` (a zoo name, or a file uploaded now)."""
    from dnntune.rpc.client import model_spec

    pb2 = client.pb2
    target = model_spec(pb2, model, batch_size=0)
    if target.sha256:
        client.upload_file(model)
    return pb2.DeploymentStudyRequest(
        model=target, frameworks=list(spec.frameworks), precisions=list(spec.precisions),
        threads=list(spec.threads), affinities=list(spec.affinities),
        num_runs=spec.num_runs, warmup_runs=spec.warmup_runs, energy=spec.energy,
        rounds=spec.rounds)


def study_on_agent(endpoint: Endpoint, spec: StudySpec,
                   progress: Callable[[str, int, int], None] | None = None,
                   client: ProfilerClient | None = None
                   ) -> tuple[list[DeploymentRow], list[str], str]:
    """Every model of ``spec`` studied on the agent at ``endpoint``: the rows (best marks
    per model, as the agent set them), the notes (each once) and the agent's topology.

    ``spec.affinities`` empty = the agent's default. Raises :class:`DnntuneError` in one
    line for any refusal (the status and the agent's message).
    """
    own = client is None
    client = client or ProfilerClient(endpoint)
    rows: list[DeploymentRow] = []
    notes: list[str] = []
    topology = ""
    try:
        for model in spec.models:
            doc = _study_one(client, study_request(client, model, spec), spec, progress)
            rows += rows_from_document(doc, f"study from {endpoint.address}")
            notes += [n for n in doc.get("notes", []) if n not in notes]
            topology = str(doc.get("topology", ""))
    finally:
        if own:
            client.close()
    return rows, notes, topology


def _study_one(client: ProfilerClient, request: Any, spec: StudySpec,
               progress: Callable[[str, int, int], None] | None) -> Any:
    parts: list[bytes] = []
    address = client.endpoint.address
    try:
        for event in client.device.StudyDeployment(
                request, metadata=client.endpoint.metadata, timeout=study_deadline_s(spec)):
            if event.WhichOneof("event") == "progress" and progress is not None:
                progress(event.progress.stage, event.progress.done, event.progress.total)
            elif event.WhichOneof("event") == "study_json_chunk":
                parts.append(event.study_json_chunk)
    except grpc.RpcError as exc:
        raise describe_rpc_error(exc, address) from None
    try:
        return json.loads(b"".join(parts))
    except ValueError:
        raise DnntuneError(f"{address}: the study's answer is not JSON") from None
