"""What a request may ask of a server: ids, sizes and counts, checked at the edge.

Every field of a request that names a model or controls a size passes through here
before anything is opened, built or allocated. Limits are documented in the .proto
(``LIMITS``) and set from the server's flags through :class:`RequestLimits`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from math import prod
from typing import Any

from dnntune.errors import DnntuneError

MAX_RANK = 8
MAX_TENSORS_PER_CALL = 64
MAX_BATCH_SIZE = 1024
MAX_RUNS = 10_000
MAX_WARMUP_RUNS = 1_000
MAX_NAME_CHARS = 256
MAX_PROFILE_CUTS = 1024  # ProfileRequest.cuts entries
LITERT_PRECISIONS = ("fp32", "fp16", "int8")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class LimitError(DnntuneError):
    """A request over one of the server's size limits (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class RequestLimits:
    """Sizes a request may ask for.

    Attributes:
        max_tensor_bytes: Bytes of one tensor (elements × dtype size).
        max_call_bytes: Bytes of all tensors of one call.
        max_tensors: Tensors in one call.
        max_input_elements: Model input elements × batch size of a ModelSpec.
        max_model_bytes: Size of an uploaded model file.
        max_request_bytes: Estimated peak memory of one request's model
            (:mod:`dnntune.model.memory`), and of all calls in progress together.
    """

    max_tensor_bytes: int = 256 << 20
    max_call_bytes: int = 256 << 20
    max_tensors: int = MAX_TENSORS_PER_CALL
    max_input_elements: int = 1 << 21
    max_model_bytes: int = 1 << 30
    max_request_bytes: int = field(default_factory=lambda: default_request_memory_mb() << 20)


def default_request_memory_mb() -> int:
    """40 % of this machine's memory: two requests at the limit still leave the rest."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        total = 8 << 30
    return max(256, int(total * 0.4) >> 20)


def quoted(value: str, limit: int = 72) -> str:
    """``repr`` of a client-sent string, shortened so a message stays one short line."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"… ({len(value)} chars)"


def check_sha256(value: str, field: str) -> str:
    """``value`` if it is 64 lowercase hex digits, else INVALID_ARGUMENT naming ``field``."""
    if not _SHA256.fullmatch(value):
        raise DnntuneError(f"{field} must be 64 lowercase hex digits, got {quoted(value)}")
    return value


def check_zoo_name(name: str, field: str) -> str:
    """``name`` if it is a model of the zoo's registry, else INVALID_ARGUMENT.

    The name is only ever looked up in the registry, never opened as a path, so the
    answer is the same whether or not a file of that name exists on the server.
    """
    from dnntune.model.zoo import ZOO

    if name not in ZOO:
        raise DnntuneError(f"{field}: {quoted(name)} is not a zoo model; this server builds "
                           f"{', '.join(sorted(ZOO))} (any other model: upload it and name it "
                           "by sha256)")
    return name


def check_shape(shape: Any, what: str, min_dim: int = 0) -> tuple[int, ...]:
    """A shape of at most :data:`MAX_RANK` dimensions, each at least ``min_dim``."""
    if len(shape) > MAX_RANK:
        raise DnntuneError(f"{what}: {len(shape)} dimensions, at most {MAX_RANK} allowed")
    dims = tuple(int(d) for d in shape)
    if any(d < min_dim for d in dims):
        raise DnntuneError(f"{what}: every dimension must be at least {min_dim}, got "
                           f"{list(dims)}")
    return dims


def check_runs(num_runs: int, warmup_runs: int) -> None:
    """``num_runs`` 0 (the default) or 1..MAX_RUNS; ``warmup_runs`` 0..MAX_WARMUP_RUNS."""
    if not 0 <= num_runs <= MAX_RUNS:
        raise DnntuneError(f"num_runs must be 0 (default) to {MAX_RUNS}, got {num_runs}")
    if not 0 <= warmup_runs <= MAX_WARMUP_RUNS:
        raise DnntuneError(f"warmup_runs must be 0 to {MAX_WARMUP_RUNS}, got {warmup_runs}")


def check_spec(spec: Any, limits: RequestLimits) -> None:
    """Every field of a ``ModelSpec``: the model's id, its shape, batch and input size."""
    source = spec.WhichOneof("source")
    if source is None:
        raise DnntuneError("model spec names neither zoo_name nor sha256")
    if source == "sha256":
        check_sha256(spec.sha256, "ModelSpec.sha256")
    else:
        check_zoo_name(spec.zoo_name, "ModelSpec.zoo_name")
    if len(spec.name) > MAX_NAME_CHARS:
        raise DnntuneError(f"ModelSpec.name is over {MAX_NAME_CHARS} characters")
    shape = check_shape(spec.input_shape, "ModelSpec.input_shape", min_dim=1)
    if not 0 <= spec.batch_size <= MAX_BATCH_SIZE:
        raise DnntuneError(f"ModelSpec.batch_size must be 0 (= 1) to {MAX_BATCH_SIZE}, got "
                           f"{spec.batch_size}")
    if shape:
        check_input_elements(shape, spec.batch_size or 1, limits)
    _check_graph_fields(spec, source, "ModelSpec")


def _check_graph_fields(message: Any, source: str | None, where: str) -> None:
    """``graph_*`` fields are well formed, and set only for an uploaded file."""
    from dnntune.rpc.graphs import GraphReading

    if not GraphReading.of(message, where).is_default and source != "sha256":
        raise DnntuneError(f"{where}.graph_inputs/graph_outputs/graph_depth/graph_fold are "
                           "for an uploaded .pb graph, not a zoo model")


def check_input_elements(shape: tuple[int, ...], batch_size: int, limits: RequestLimits
                         ) -> None:
    """Input elements × batch within ``limits`` (RESOURCE_EXHAUSTED otherwise)."""
    elements = prod(shape) * batch_size
    if elements > limits.max_input_elements:
        raise LimitError(f"model input {list(shape)} × batch {batch_size} is {elements} "
                         f"elements; this server's limit is {limits.max_input_elements} "
                         "(--max-input-elements)")


def check_identity(identity: Any) -> None:
    """A ``ModelIdentity`` message: its id fields are well formed."""
    if identity.sha256:
        check_sha256(identity.sha256, "ModelIdentity.sha256")
    elif not identity.zoo_name:
        raise DnntuneError("TailHeader.head (ModelIdentity) is required: set sha256 or "
                           "zoo_name (Describe returns it)")
    check_shape(identity.input_shape, "ModelIdentity.input_shape", min_dim=1)
    _check_graph_fields(identity, "sha256" if identity.sha256 else "zoo_name",
                        "ModelIdentity")


@dataclass(frozen=True)
class LiteRTAsk:
    """A Profile request's LiteRT fields, checked: the cuts to time (empty = the
    default spread) and the precision."""

    cuts: tuple[int, ...]
    precision: str


def litert_ask(request: Any, serves_litert: bool) -> LiteRTAsk | None:
    """``ProfileRequest.framework``, ``cuts`` and ``precision`` checked at the edge;
    ``None`` for a TensorFlow profile. Each refusal names its field and why."""
    framework = request.framework or "tf"
    if framework not in ("tf", "litert"):
        raise DnntuneError(f"ProfileRequest.framework must be tf or litert (or empty), got "
                           f"{quoted(framework)}")
    if len(request.cuts) > MAX_PROFILE_CUTS:
        raise DnntuneError(f"ProfileRequest.cuts has {len(request.cuts)} entries, at most "
                           f"{MAX_PROFILE_CUTS}")
    if framework == "tf":
        if request.cuts or request.precision:
            raise DnntuneError("ProfileRequest.cuts and ProfileRequest.precision go with "
                               "framework litert (a TensorFlow profile times every layer)")
        return None
    if request.precision and request.precision not in LITERT_PRECISIONS:
        raise DnntuneError(f"ProfileRequest.precision must be {', '.join(LITERT_PRECISIONS)} "
                           f"(or empty), got {quoted(request.precision)}")
    negative = [c for c in request.cuts if c < 0]
    if negative:
        raise DnntuneError(f"ProfileRequest.cuts: cut {negative[0]} is negative (a cut counts "
                           "the layers on the device, 0..L)")
    if not serves_litert:
        raise DnntuneError("ProfileRequest.framework litert: this server profiles no LiteRT "
                           "heads (a device agent does)")
    return LiteRTAsk(tuple(sorted(set(request.cuts))), request.precision or "fp32")
