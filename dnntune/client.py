"""Clients of the cloud server and the device agent: what the orchestrator and the agent use.

:func:`connect` opens a channel with explicit message-size limits (and TLS and a token
when given) and waits until the server answers, so an unreachable address is one clear
error, not a hang.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from dnntune.errors import DnntuneError
from dnntune.models import MODEL_SUFFIXES
from dnntune.profile import Profile
from dnntune.protocol import load_protocol
from dnntune.tensors import DEFAULT_CHUNK_BYTES, TensorAssembler, encode_tensors

DEFAULT_MAX_MESSAGE_MB = 16


@dataclass(frozen=True)
class Endpoint:
    """Where a server is and how to talk to it."""

    address: str
    token: str | None = None
    tls_cert: str | None = None  # PEM of the server's certificate (or its CA)
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB
    connect_timeout_s: float = 5.0
    # The name the server's certificate carries, when ``address`` is not it (a proxy).
    tls_server_name: str | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def parse_address(text: str, flag: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DnntuneError(f"{flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    return text


def connect(endpoint: Endpoint) -> grpc.Channel:
    """A ready channel to ``endpoint``, or a :class:`DnntuneError` saying why not."""
    limit = endpoint.max_message_mb * (1 << 20)
    options: list[tuple[str, Any]] = [("grpc.max_send_message_length", limit),
                                      ("grpc.max_receive_message_length", limit)]
    if endpoint.tls_cert:
        try:
            pem = Path(endpoint.tls_cert).read_bytes()
        except OSError as exc:
            raise DnntuneError(f"{endpoint.tls_cert}: cannot read TLS certificate "
                               f"({exc.strerror})") from None
        if endpoint.tls_server_name:
            options.append(("grpc.ssl_target_name_override", endpoint.tls_server_name))
        channel = grpc.secure_channel(endpoint.address, grpc.ssl_channel_credentials(pem),
                                      options)
    else:
        channel = grpc.insecure_channel(endpoint.address, options)
    try:
        grpc.channel_ready_future(channel).result(timeout=endpoint.connect_timeout_s)
    except grpc.FutureTimeoutError:
        channel.close()
        raise DnntuneError(f"cannot reach {endpoint.address}: no gRPC server answered within "
                           f"{endpoint.connect_timeout_s:g} s") from None
    return channel


def describe_rpc_error(exc: grpc.RpcError, address: str) -> DnntuneError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return DnntuneError(f"{address}: server unavailable or died during the call ({detail})")
    name = code.name if code is not None else "ERROR"
    return DnntuneError(f"{address}: {name}: {detail}")


def model_spec(pb2: Any, model: str, input_shape: tuple[int, ...] | None = None,
               batch_size: int = 1, seed: int = 0, name: str | None = None) -> Any:
    """A ``ModelSpec`` for a zoo name or a local model file (by its sha256).

    ``name`` is the display name recorded for a file (default: its stem).
    """
    shape = list(input_shape or ())
    if model.endswith(MODEL_SUFFIXES):
        digest = hashlib.sha256(Path(model).read_bytes()).hexdigest()
        return pb2.ModelSpec(sha256=digest, input_shape=shape, batch_size=batch_size,
                             seed=seed, name=name or Path(model).stem)
    return pb2.ModelSpec(zoo_name=model, input_shape=shape, batch_size=batch_size, seed=seed)


class ProfilerClient:
    """Model transfer and remote profiling against either process."""

    def __init__(self, endpoint: Endpoint, channel: grpc.Channel | None = None) -> None:
        self.endpoint = endpoint
        self.pb2, services = load_protocol()
        self.channel = channel or connect(endpoint)
        self.profiler = services.ProfilerStub(self.channel)
        self.cloud = services.CloudStub(self.channel)
        self.device = services.DeviceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def call(self, fn: Callable[..., Any], request: Any, **kwargs: Any) -> Any:
        try:
            return fn(request, metadata=self.endpoint.metadata, **kwargs)
        except grpc.RpcError as exc:
            raise describe_rpc_error(exc, self.endpoint.address) from None

    def upload_file(self, path: str | Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
        """Send a model file unless the server has it already; returns its sha256."""
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if self.call(self.profiler.HasModel, self.pb2.ModelRef(sha256=digest)).cached:
            return digest

        def chunks() -> Iterator[Any]:
            for start in range(0, max(len(data), 1), chunk_bytes):
                yield self.pb2.ModelChunk(sha256=digest, suffix=Path(path).suffix,
                                          total_bytes=len(data),
                                          data=data[start:start + chunk_bytes])
        self.call(self.profiler.UploadModel, chunks())
        return digest

    def ensure_model(self, spec: Any, store: Any) -> None:
        """Give the server an uploaded model this process's ``store`` holds, if needed."""
        if spec.WhichOneof("source") == "sha256":
            path = store.file_for(spec.sha256)
            if path is None:
                raise DnntuneError(f"model {spec.sha256} is not held here")
            self.upload_file(path)

    def profile(self, spec: Any, num_runs: int, warmup_runs: int, energy: str,
                progress: Callable[[str, int, int], None] | None = None,
                timeout_s: float | None = None) -> Profile:
        request = self.pb2.ProfileRequest(model=spec, num_runs=num_runs,
                                          warmup_runs=warmup_runs, energy=energy)
        parts: list[bytes] = []
        try:
            for event in self.profiler.Profile(request, metadata=self.endpoint.metadata,
                                               timeout=timeout_s):
                if event.WhichOneof("event") == "progress" and progress is not None:
                    progress(event.progress.stage, event.progress.done, event.progress.total)
                elif event.WhichOneof("event") == "profile_json_chunk":
                    parts.append(event.profile_json_chunk)
        except grpc.RpcError as exc:
            raise describe_rpc_error(exc, self.endpoint.address) from None
        return Profile.from_dict(json.loads(b"".join(parts)),
                                 f"profile from {self.endpoint.address}")

    def run_tail(self, spec: Any, cut_index: int, tensors: list[tuple[str, np.ndarray]],
                 timeout_s: float | None = None) -> tuple[dict[str, np.ndarray], Any]:
        """Send crossing tensors; returns the tail's outputs by name and the cloud's timing."""
        pb2 = self.pb2

        def requests() -> Iterator[Any]:
            yield pb2.TailRequest(header=pb2.TailHeader(model=spec, cut_index=cut_index))
            for chunk in encode_tensors(pb2, tensors):
                yield pb2.TailRequest(tensor=chunk)
        assembler = TensorAssembler()
        timing = None
        try:
            for reply in self.cloud.RunTail(requests(), metadata=self.endpoint.metadata,
                                            timeout=timeout_s):
                if reply.WhichOneof("part") == "tensor":
                    assembler.add(reply.tensor)
                else:
                    timing = reply.timing
        except grpc.RpcError as exc:
            raise describe_rpc_error(exc, self.endpoint.address) from None
        return assembler.finish(), timing

    def echo(self, tensors: list[tuple[str, np.ndarray]], timeout_s: float | None = None
             ) -> dict[str, np.ndarray]:
        assembler = TensorAssembler()
        try:
            for chunk in self.cloud.Echo(encode_tensors(self.pb2, tensors),
                                         metadata=self.endpoint.metadata, timeout=timeout_s):
                assembler.add(chunk)
        except grpc.RpcError as exc:
            raise describe_rpc_error(exc, self.endpoint.address) from None
        return assembler.finish()


def calibrate_rpc(client: ProfilerClient, small_bytes: int = 1_000,
                  large_bytes: int = 4_000_000, repeats: int = 7) -> tuple[float, float]:
    """Framework cost of a remote call on this path: ``(fixed ms, ms per MB each way)``.

    Times the Echo RPC (tensors there and back) at two sizes, medians of ``repeats``,
    and fits ``t = fixed + 2 · per_mb · MB``. On loopback this is gRPC's own cost; the
    analyzer adds it to the link's transfer time (``CostOptions.rpc_ms``, ``rpc_ms_per_mb``).
    """
    import statistics
    import time

    def median_ms(nbytes: int) -> float:
        payload = [("calibration", np.zeros(nbytes, np.uint8))]
        client.echo(payload)  # warm
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            client.echo(payload)
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    small, large = median_ms(small_bytes), median_ms(large_bytes)
    per_mb = max(large - small, 0.0) / (2 * (large_bytes - small_bytes) / 1e6)
    return max(small - 2 * per_mb * small_bytes / 1e6, 0.0), per_mb
