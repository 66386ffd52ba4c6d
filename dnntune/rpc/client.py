"""Clients of the cloud server and the device agent: what the orchestrator and the agent use.

:func:`connect` opens a channel with explicit message-size limits (and TLS and a token
when given) and waits until the server answers, so an unreachable address is one clear
error, not a hang; a TLS mistake (plaintext against TLS, TLS against plaintext, a
certificate the server's is not signed by) is named as such (:mod:`dnntune.rpc.tls_probe`).
Channels send keepalive pings during calls, so a peer that goes silent is detected, and
every call carries a deadline derived from the work it asks for.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from dnntune.errors import DnntuneError
from dnntune.model.loading import MODEL_SUFFIXES
from dnntune.profiling.profile import Profile
from dnntune.rpc.bulk import ECHO, RUN_TAIL, BulkConnection, FrameError
from dnntune.rpc.protocol import load_protocol
from dnntune.rpc.tensors import (
    DEFAULT_CHUNK_BYTES,
    MESSAGE_OVERHEAD_BYTES,
    ChunkView,
    TensorAssembler,
    TensorPart,
    WireError,
    chunk_bytes_for,
    encode_bulk,
    encode_tensors,
    read_parsed,
    read_unary,
    unary_serializer,
    unary_wire,
    wire_serializer,
    with_bulk_data,
)
from dnntune.rpc.tls_probe import diagnose_unreachable, read_certificate

DEFAULT_MAX_MESSAGE_MB = 16
SHORT_CALL_S = 60.0            # HasModel, Describe, and the base of every deadline
SLOWEST_LINK_BYTES_PER_S = 30_000  # 0.24 Mbit/s: the slowest link a deadline allows for
PROFILE_S_PER_RUN = 10.0       # per warm-up or timed run, on the slowest device expected
LITERT_HEAD_S = 120.0          # converting one LiteRT head (a profile with framework litert)
ENERGY_S = 120.0               # an energy measurement on top of the runs
SERVER_BUSY = ("profiling in progress", "server is shutting down",  # UNAVAILABLE, retry
               "a profile or deployment study is in progress",
               "a deployment study is in progress")
TAIL_REQUEST_TENSOR = 2  # the field number of TailRequest.tensor
TAIL_REPLY_TENSOR = 1  # and of TailReply.tensor
UNARY_CHUNK = 1 << 62  # in a unary call each tensor is one chunk
# Answers to a unary call after which the same call goes as a stream: a server before
# RunTailUnary/EchoUnary, or a call (or its reply) over a message limit.
BULK_RETRY_S = 30.0  # after the bulk channel could not be reached, gRPC this long
STREAM_INSTEAD = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def transfer_deadline_s(nbytes: int) -> float:
    """Deadline of a call that moves ``nbytes`` over the slowest link expected."""
    return SHORT_CALL_S + nbytes / SLOWEST_LINK_BYTES_PER_S


def profile_deadline_s(num_runs: int, warmup_runs: int, energy: str) -> float:
    """Deadline of a Profile: building, every run, and an energy measurement if asked."""
    measured = ENERGY_S if energy not in ("", "none") else 0.0
    return 2 * SHORT_CALL_S + PROFILE_S_PER_RUN * (num_runs + warmup_runs) + measured


@dataclass(frozen=True)
class Endpoint:
    """Where a server is and how to talk to it."""

    address: str
    token: str | None = None
    tls_cert: str | None = None  # PEM of the server's certificate (or its CA)
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB
    connect_timeout_s: float = 5.0
    keepalive_s: float = 10.0  # ping after this long without data; dead after 2× this
    # The name the server's certificate carries, when ``address`` is not it (a proxy).
    tls_server_name: str | None = None
    # Carry tensor bytes on the server's bulk channel when it offers one (serve
    # --bulk-port; dnntune.rpc.bulk). It is a second TCP connection to the same host:
    # turn it off when only the gRPC port is reachable or must carry all traffic.
    bulk: bool = True

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
    keepalive_ms = int(endpoint.keepalive_s * 1000)
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", keepalive_ms), ("grpc.keepalive_timeout_ms", keepalive_ms),
        # grpcio 1.85 times pings out by this one, not keepalive_timeout_ms
        ("grpc.http2.ping_timeout_ms", keepalive_ms),
        ("grpc.http2.max_pings_without_data", 0)]
    if endpoint.tls_cert:
        pem = read_certificate(endpoint.tls_cert)
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
        raise diagnose_unreachable(endpoint.address, endpoint.tls_cert,
                                   endpoint.connect_timeout_s,
                                   endpoint.tls_server_name) from None
    return channel


def describe_rpc_error(exc: grpc.RpcError, address: str) -> DnntuneError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE and detail and detail.startswith(SERVER_BUSY):
        return DnntuneError(f"{address}: UNAVAILABLE: {detail}")
    if code == grpc.StatusCode.UNAVAILABLE and _stalled(detail):
        return DnntuneError(f"{address}: the connection stalled: keepalive pings went "
                            f"unanswered, so the network (or the server's host) stopped "
                            f"passing data ({detail})")
    if code == grpc.StatusCode.UNAVAILABLE:
        return DnntuneError(f"{address}: server unavailable or died during the call ({detail})")
    name = code.name if code is not None else "ERROR"
    return DnntuneError(f"{address}: {name}: {detail}")


def _stalled(detail: str | None) -> bool:
    """gRPC's words for a transport closed by its keepalive watchdog."""
    text = (detail or "").lower()
    return "keepalive" in text or "ping timeout" in text


def model_spec(pb2: Any, model: str, input_shape: tuple[int, ...] | None = None,
               batch_size: int = 1, seed: int = 0, name: str | None = None) -> Any:
    """A ``ModelSpec`` for a zoo name or a local model file (by its sha256).

    ``name`` is the display name recorded for a file (default: its stem). A frozen
    graph is ``FILE.pb?input=..&output=..&depth=..&fold=..``
    (:mod:`dnntune.model.tf_graph`): how to read it goes into ``ModelSpec.graph_*``.
    """
    shape = list(input_shape or ())
    if model.split("?", 1)[0].endswith(".pb"):
        from dnntune.model.tf_graph import DEFAULT_DEPTH, parse_graph_spec

        parsed = parse_graph_spec(model)
        digest = hashlib.sha256(parsed.path.read_bytes()).hexdigest()
        return pb2.ModelSpec(sha256=digest, input_shape=shape, batch_size=batch_size,
                             seed=seed, name=name or parsed.path.stem,
                             graph_inputs=list(parsed.inputs),
                             graph_outputs=list(parsed.outputs),
                             graph_depth=0 if parsed.depth == DEFAULT_DEPTH else parsed.depth,
                             graph_fold=parsed.fold)
    if model.endswith(MODEL_SUFFIXES):
        digest = hashlib.sha256(Path(model).read_bytes()).hexdigest()
        return pb2.ModelSpec(sha256=digest, input_shape=shape, batch_size=batch_size,
                             seed=seed, name=name or Path(model).stem)
    return pb2.ModelSpec(zoo_name=model, input_shape=shape, batch_size=batch_size, seed=seed)


def head_identity(pb2: Any, spec: Any) -> Any:
    """The ``ModelIdentity`` of the model a ``ModelSpec`` names (for ``TailHeader.head``)."""
    if spec.WhichOneof("source") == "sha256":
        return pb2.ModelIdentity(sha256=spec.sha256, graph_inputs=list(spec.graph_inputs),
                                 graph_outputs=list(spec.graph_outputs),
                                 graph_depth=spec.graph_depth, graph_fold=spec.graph_fold)
    return pb2.ModelIdentity(zoo_name=spec.zoo_name, seed=spec.seed,
                             input_shape=list(spec.input_shape))


class ProfilerClient:
    """Model transfer and remote profiling against either process."""

    def __init__(self, endpoint: Endpoint, channel: grpc.Channel | None = None) -> None:
        self.endpoint = endpoint
        self.pb2, services = load_protocol()
        self.channel = channel or connect(endpoint)
        self.profiler = services.ProfilerStub(self.channel)
        self.cloud = services.CloudStub(self.channel)
        self.device = services.DeviceStub(self.channel)
        # Tensors go out as encode_tensors wrote them (one copy of the data), in chunks
        # of 1 MiB or what this client's message limit allows.
        pb2 = self.pb2
        self._run_tail = self.channel.stream_stream(
            "/dnntune.v1.Cloud/RunTail", request_serializer=wire_serializer(pb2.TailRequest),
            response_deserializer=pb2.TailReply.FromString, _registered_method=True)
        self._echo = self.channel.stream_stream(
            "/dnntune.v1.Cloud/Echo", request_serializer=wire_serializer(pb2.TensorChunk),
            response_deserializer=pb2.TensorChunk.FromString, _registered_method=True)
        # A call that fits one message goes as one message each way (raw wire bytes,
        # tensors read as views of the reply): on loopback a fraction of a stream's cost.
        self._run_tail_unary = self.channel.unary_unary(
            "/dnntune.v1.Cloud/RunTailUnary", request_serializer=unary_serializer,
            _registered_method=True)
        self._echo_unary = self.channel.unary_unary(
            "/dnntune.v1.Cloud/EchoUnary", request_serializer=unary_serializer,
            _registered_method=True)
        self.unary = True  # False once the server answered UNIMPLEMENTED (before v1.x)
        self.chunk_bytes = chunk_bytes_for(endpoint.max_message_mb << 20)
        self._open_bulk = self.channel.unary_unary(
            "/dnntune.v1.Cloud/OpenBulk", request_serializer=pb2.BulkRequest.SerializeToString,
            response_deserializer=pb2.BulkTicket.FromString, _registered_method=True)
        self.bulk = endpoint.bulk  # False once the server has no bulk channel for us
        self.bulk_problem = ""  # why this client stopped trying the bulk channel
        self._bulk_connection: BulkConnection | None = None
        self._bulk_lock = threading.Lock()  # one thread opens the connection
        self._bulk_retry_at = 0.0  # after failing to reach the channel: not before this

    def close(self) -> None:
        if self._bulk_connection is not None:
            self._bulk_connection.close()
        self.channel.close()

    def call(self, fn: Callable[..., Any], request: Any, timeout_s: float = SHORT_CALL_S,
             **kwargs: Any) -> Any:
        """``fn(request)`` with the token and a deadline; gRPC errors become one line."""
        try:
            return fn(request, metadata=self.endpoint.metadata, timeout=timeout_s, **kwargs)
        except grpc.RpcError as exc:
            raise describe_rpc_error(exc, self.endpoint.address) from None

    def describe(self, spec: Any) -> Any:
        """The server's ``ModelDescription`` of ``spec``: layers, cuts, crossing tensors."""
        return self.call(self.profiler.Describe, self.pb2.DescribeRequest(model=spec))

    def upload_file(self, path: str | Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
        """Send a model file unless the server has it already; returns its sha256.

        A graph's spec (``FILE.pb?input=..``) sends ``FILE.pb``."""
        path = str(path).split("?", 1)[0]
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if self.call(self.profiler.HasModel, self.pb2.ModelRef(sha256=digest)).cached:
            return digest

        def chunks() -> Iterator[Any]:
            for start in range(0, max(len(data), 1), chunk_bytes):
                yield self.pb2.ModelChunk(sha256=digest, suffix=Path(path).suffix,
                                          total_bytes=len(data),
                                          data=data[start:start + chunk_bytes])
        self.call(self.profiler.UploadModel, chunks(),
                  timeout_s=transfer_deadline_s(len(data)))
        return digest

    def ensure_model(self, spec: Any, store: Any) -> None:
        """Give the server an uploaded model this process's ``store`` holds, if needed."""
        if spec.WhichOneof("source") == "sha256":
            path = store.file_for(spec.sha256)
            if path is None:
                raise DnntuneError(f"model {spec.sha256} is not held here")
            self.upload_file(path)

    def run_split(self, spec: Any, cut_index: int, num_runs: int, warmup_runs: int,
                  timeout_s: float | None = None) -> Any:
        """Ask a device agent to run a split (deadline: a short call's worth per run)."""
        request = self.pb2.SplitRequest(model=spec, cut_index=cut_index, num_runs=num_runs,
                                        warmup_runs=warmup_runs)
        if timeout_s is None:
            timeout_s = SHORT_CALL_S * (2 + num_runs + warmup_runs)
        return self.call(self.device.RunSplit, request, timeout_s=timeout_s)

    def profile(self, spec: Any, num_runs: int, warmup_runs: int, energy: str,
                progress: Callable[[str, int, int], None] | None = None,
                timeout_s: float | None = None, framework: str = "",
                cuts: Sequence[int] = (), precision: str = "") -> Profile:
        """Profile ``spec`` on the server (deadline: :func:`profile_deadline_s` by default).

        ``framework`` ``litert`` (a device agent): the head latency at ``cuts`` (empty:
        8 spread over the cuts LiteRT keeps) at ``precision``, each head converted first.
        """
        request = self.pb2.ProfileRequest(model=spec, num_runs=num_runs,
                                          warmup_runs=warmup_runs, energy=energy,
                                          framework=framework, cuts=list(cuts),
                                          precision=precision)
        if timeout_s is None:
            timeout_s = profile_deadline_s(num_runs, warmup_runs, energy)
            if framework == "litert":  # every head converted and timed on its own
                heads = len(cuts) + 3 if cuts else 11
                timeout_s += heads * (LITERT_HEAD_S + PROFILE_S_PER_RUN * (num_runs
                                                                           + warmup_runs))
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
                 timeout_s: float | None = None, head: Any = None,
                 encoded: Sequence[Any] = ()) -> tuple[dict[str, np.ndarray], Any]:
        """Send crossing tensors; returns the tail's outputs by name and the cloud's timing.

        ``head`` is the ``ModelIdentity`` of the model the tensors came from; by default,
        the one ``spec`` names (the caller ran its head from the same spec). ``encoded``:
        ``TailRequest`` messages of encoded crossing tensors, sent after ``tensors``
        (:meth:`dnntune.rpc.encoded.WireSender.encode`).
        """
        pb2 = self.pb2
        if head is None:
            head = head_identity(pb2, spec)
        header = pb2.TailRequest(header=pb2.TailHeader(model=spec, cut_index=cut_index,
                                                       head=head))

        def requests() -> Iterator[Any]:
            yield header
            yield from encode_tensors(pb2, tensors, self.chunk_bytes, field=TAIL_REQUEST_TENSOR)
            yield from encoded
        if timeout_s is None:
            timeout_s = transfer_deadline_s(2 * sum(np.asarray(t).nbytes for _, t in tensors)
                                            + sum(m.ByteSize() for m in encoded))
        if not encoded and self.bulk:
            result = self._bulk_call(RUN_TAIL, [header], tensors, TAIL_REQUEST_TENSOR,
                                     pb2.TailResult, timeout_s)
            if result is not None:
                assembler, timing = TensorAssembler(), None
                for part in result:
                    if isinstance(part, TensorPart):
                        assembler.add(part.tensor)
                    else:
                        timing = part.timing
                return self._finish(assembler), timing
        if not encoded and self._fits_one_message(tensors):  # encoded parts: the stream
            message = unary_wire([header, *encode_tensors(pb2, tensors, UNARY_CHUNK,
                                                          field=TAIL_REQUEST_TENSOR)])
            reply = self._unary(self._run_tail_unary, message, timeout_s)
            if reply is not None:
                assembler, timing = TensorAssembler(), None
                for part in self._read(reply, pb2.TailReply, TAIL_REPLY_TENSOR):
                    if part.WhichOneof("part") == "tensor":
                        assembler.add(part.tensor)
                    else:
                        timing = part.timing
                return self._finish(assembler), timing
        assembler = TensorAssembler()
        timing = None
        try:
            for reply in self._run_tail(requests(), metadata=self.endpoint.metadata,
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
        if timeout_s is None:
            timeout_s = transfer_deadline_s(2 * sum(np.asarray(t).nbytes for _, t in tensors))
        if self.bulk:
            result = self._bulk_call(ECHO, [], tensors, None, self.pb2.TensorList, timeout_s)
            if result is not None:
                assembler = TensorAssembler()
                for chunk in result:
                    assembler.add(chunk)
                return self._finish(assembler)
        if self._fits_one_message(tensors):
            reply = self._unary(self._echo_unary,
                                unary_wire(encode_tensors(self.pb2, tensors, UNARY_CHUNK)),
                                timeout_s)
            if reply is not None:
                assembler = TensorAssembler()
                for chunk in self._read(reply, None, 0):
                    assembler.add(chunk)
                return self._finish(assembler)
        assembler = TensorAssembler()
        try:
            for chunk in self._echo(encode_tensors(self.pb2, tensors, self.chunk_bytes),
                                    metadata=self.endpoint.metadata, timeout=timeout_s):
                assembler.add(chunk)
        except grpc.RpcError as exc:
            raise describe_rpc_error(exc, self.endpoint.address) from None
        return assembler.finish()


    def _bulk_call(self, method: int, head: list[Any], tensors: list[tuple[str, np.ndarray]],
                   tensor_field: int | None, reply: Any, timeout_s: float
                   ) -> list[Any] | None:
        """A unary call on the bulk channel (:mod:`dnntune.rpc.bulk`): the parts of its
        ``reply`` message type (``TailResult``: TailReply parts, tensors as
        :class:`TensorPart`; ``TensorList``: :class:`ChunkView` chunks) with every bulk
        tensor's data a view of the received bytes; ``None`` when this server offers no bulk
        channel (then the call goes by gRPC). ``head``: parts sent before the tensors
        (RunTail's header). A connection found closed before the call (the server closes
        idle ones) is reopened once."""
        headers, raws = encode_bulk(self.pb2, tensors, tensor_field)
        message = unary_wire([*head, *headers])
        until = time.monotonic() + timeout_s
        for attempt in (0, 1):
            connection = self._bulk_open(max(until - time.monotonic(), 0.001))
            if connection is None:
                return None
            if not connection.lock.acquire(timeout=max(until - time.monotonic(), 0.001)):
                return None  # other calls hold it past this call's deadline: go by gRPC
            try:
                if connection.broken:  # failed in another thread's call meanwhile
                    self._drop_bulk(connection)
                    continue
                status, answer, data = connection.call(
                    method, message, raws, max(until - time.monotonic(), 0.001),
                    max_message=self.endpoint.max_message_mb << 20)
                break
            except (OSError, FrameError) as exc:
                self._drop_bulk(connection)
                if attempt == 0 and isinstance(exc, ConnectionError):
                    continue  # closed while idle: once more on a new connection
                raise DnntuneError(f"{self.endpoint.address}: the bulk connection failed "
                                   f"({exc})") from None
            finally:
                connection.lock.release()
        else:
            return None
        if status != 0:
            self._drop_bulk(connection)  # closed by the server after a refusal
            text = answer.decode("utf-8", "replace")
            name = next((c.name for c in grpc.StatusCode if c.value[0] == status),
                        f"STATUS {status}")
            raise DnntuneError(f"{self.endpoint.address}: {name}: {text}")
        try:
            parts = read_parsed(self.pb2, answer, reply,
                                None if reply is self.pb2.TensorList else "tensor")
        except WireError as exc:
            raise DnntuneError(f"{self.endpoint.address}: a malformed reply ({exc})") from None
        return self._fill_bulk(parts, data)

    def _fill_bulk(self, parts: list[Any], data: np.ndarray) -> list[Any]:
        """``parts`` with each bulk tensor's data a view of ``data``, in order."""
        views, start = [], 0
        raw = memoryview(data.data)
        chunks = [p.tensor if isinstance(p, TensorPart) else p for p in parts
                  if isinstance(p, (TensorPart, ChunkView))]
        for chunk in chunks:
            if chunk.bulk:
                views.append(raw[start:start + max(int(chunk.total_bytes), 0)])
                start += max(int(chunk.total_bytes), 0)
        if start != len(raw):
            raise DnntuneError(f"{self.endpoint.address}: a malformed reply (its bulk frame "
                               f"holds {len(raw)} bytes, its tensors declare {start})")
        try:
            filled = iter(with_bulk_data(chunks, views))
        except WireError as exc:
            raise DnntuneError(f"{self.endpoint.address}: a malformed reply ({exc})") from None
        return [TensorPart(next(filled)) if isinstance(p, TensorPart)
                else next(filled) if isinstance(p, ChunkView) else p for p in parts]

    def _drop_bulk(self, connection: BulkConnection) -> None:
        """Forget ``connection`` (closed) unless another thread has replaced it."""
        connection.close()
        with self._bulk_lock:
            if self._bulk_connection is connection:
                self._bulk_connection = None

    def _bulk_open(self, timeout_s: float) -> BulkConnection | None:
        """This client's bulk connection, opened on first use; ``None`` if the server
        offers none, or when it could not be reached lately (then the reason is in
        ``bulk_problem``, and it is tried again after :data:`BULK_RETRY_S`)."""
        with self._bulk_lock:
            if self._bulk_connection is not None and not self._bulk_connection.broken:
                return self._bulk_connection
            if time.monotonic() < self._bulk_retry_at:
                return None
            return self._bulk_open_locked(timeout_s)

    def _bulk_open_locked(self, timeout_s: float) -> BulkConnection | None:
        try:
            ticket = self._open_bulk(self.pb2.BulkRequest(), metadata=self.endpoint.metadata,
                                     timeout=min(SHORT_CALL_S, timeout_s))
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return None  # the server's connections are all taken: this call goes by gRPC
            if code not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION):
                raise describe_rpc_error(exc, self.endpoint.address) from None
            self.bulk, self.bulk_problem = False, "the server offers no bulk channel"
            return None
        host = self.endpoint.address.rpartition(":")[0].strip("[]")
        tls_cert = self.endpoint.tls_cert
        pem = read_certificate(tls_cert) if ticket.tls and tls_cert else None
        if ticket.tls and pem is None:
            self.bulk = False
            self.bulk_problem = "the bulk channel is TLS, and this client has no certificate"
            return None
        try:
            self._bulk_connection = BulkConnection.open(
                host, ticket.port, ticket.ticket, min(self.endpoint.connect_timeout_s,
                                                      timeout_s),
                pem, self.endpoint.tls_server_name)
        except (OSError, ConnectionError) as exc:
            # e.g. only the gRPC port is reachable, or the server's handshakes are all
            # taken: gRPC until it is tried again
            self._bulk_retry_at = time.monotonic() + BULK_RETRY_S
            self.bulk_problem = (f"cannot reach the bulk channel at {host}:{ticket.port} "
                                 f"({exc}); gRPC meanwhile")
            return None
        self.bulk_problem = ""
        return self._bulk_connection

    def _fits_one_message(self, tensors: list[tuple[str, np.ndarray]]) -> bool:
        """Whether a call with ``tensors`` fits this client's message limit (and the
        server's, unless it set a smaller one than the default: then it says so)."""
        size = sum(np.asarray(t).nbytes for _, t in tensors)
        room = (self.endpoint.max_message_mb << 20) - MESSAGE_OVERHEAD_BYTES * (len(tensors) + 1)
        return self.unary and size <= room

    def _unary(self, method: Any, message: bytes, timeout_s: float) -> bytes | None:
        """The reply of a unary call, or ``None`` when it must go as a stream instead."""
        try:
            reply: bytes = method(message, metadata=self.endpoint.metadata, timeout=timeout_s)
            return reply
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code not in STREAM_INSTEAD:
                raise describe_rpc_error(exc, self.endpoint.address) from None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                self.unary = False  # a server from before the unary calls: stream from now on
            return None

    def _read(self, reply: bytes, part_type: Any, tensor_field: int) -> Iterator[Any]:
        try:
            yield from read_unary(self.pb2, reply, part_type, tensor_field)
        except WireError as exc:
            raise DnntuneError(f"{self.endpoint.address}: a malformed reply ({exc})") from None

    def _finish(self, assembler: TensorAssembler) -> dict[str, np.ndarray]:
        try:
            return assembler.finish()
        except WireError as exc:
            raise DnntuneError(f"{self.endpoint.address}: a malformed reply ({exc})") from None


def calibrate_rpc(client: ProfilerClient, small_bytes: int = 1_000,
                  large_bytes: int = 4_000_000, repeats: int = 7) -> tuple[float, float]:
    """Framework cost of a remote call on this path: ``(fixed ms, ms per MB each way)``.

    Times the Echo RPC (tensors there and back) at two sizes, medians of ``repeats``,
    and fits ``t = fixed + 2 · per_mb · MB``. On loopback this is gRPC's own cost; the
    analyzer adds it to the link's transfer time (``CostOptions.rpc_ms``, ``rpc_ms_per_mb``).
    """
    import statistics

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
