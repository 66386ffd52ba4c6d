"""gRPC servicers: convert protocol messages to dnntune's types and call the core.

Shared by the cloud server (Profiler + Cloud) and the device agent (Profiler + Device).
Every request field is checked at the edge (:mod:`dnntune.rpc.limits`) before anything
is opened, built or allocated; every bad request ends in a status with a one-line
message that names no server path, and the server keeps serving: :func:`rpc_errors`
maps dnntune's errors to gRPC status codes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from dnntune.errors import ConfigError, DnntuneError
from dnntune.model.loading import DEFAULT_SEED
from dnntune.rpc.budget import MemoryBudget
from dnntune.rpc.gate import BusyError, ComputeGate
from dnntune.rpc.graphs import GraphReading
from dnntune.rpc.limits import (
    MAX_NAME_CHARS,
    LimitError,
    LiteRTAsk,
    RequestLimits,
    check_identity,
    check_runs,
    check_sha256,
    check_spec,
    litert_ask,
    quoted,
)
from dnntune.rpc.modelstore import ModelEntry, ModelIdentity, ModelKey, ModelStore, NotFoundError
from dnntune.rpc.tensors import (
    GRPC_DEFAULT_MESSAGE_BYTES,
    TensorAssembler,
    TensorPart,
    WireError,
    bulk_sizes,
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

PROFILE_CHUNK_BYTES = 1 << 20
CLOUD_SERVICE = "dnntune.v1.Cloud"
TAIL_REQUEST_TENSOR = 2  # field numbers of TailRequest.tensor and TailReply.tensor
TAIL_REPLY_TENSOR = 1
# A unary reply carries each tensor in one chunk: the message limit bounds the whole.
UNARY_CHUNK = 1 << 62
log = logging.getLogger("dnntune.server")


class HeadMismatchError(DnntuneError):
    """RunTail's crossing tensors come from another model than the tail's."""


_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (LimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (BusyError, grpc.StatusCode.UNAVAILABLE),
    (HeadMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (DnntuneError, grpc.StatusCode.INVALID_ARGUMENT),
)


@contextlib.contextmanager
def rpc_errors(context: grpc.ServicerContext, method: str = "a call") -> Iterator[None]:
    """Abort the call with the right status for dnntune's errors (never a traceback).

    Anything else is a bug of ours: logged here, INTERNAL for the caller, with no detail
    (a server path or a stack must not reach a client). Never call ``context.abort``
    inside this block.
    """
    peer = context.peer()  # while the call is alive
    try:
        yield
    except grpc.RpcError:
        # gRPC ended the request stream itself: a message over --max-message-mb (the
        # client was told RESOURCE_EXHAUSTED), a cancellation or a broken connection.
        # One line, no traceback; re-raised as is, which gRPC takes as already handled.
        log.warning("%s from %s: the request stream was ended by gRPC (a message over the "
                    "message limit, a cancellation or a lost connection)",
                    method, peer)
        raise
    except WireError as exc:
        context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
    except DnntuneError as exc:
        context.abort(status_code(exc), str(exc))
    except Exception:  # the server must answer and keep serving
        log.exception("internal error in a dnntune call")
        context.abort(grpc.StatusCode.INTERNAL, "internal server error (see the server's log)")


def status_code(exc: DnntuneError) -> grpc.StatusCode:
    """The gRPC status for one of dnntune's errors."""
    return next(c for kind, c in _CODES if isinstance(exc, kind))


def key_from_spec(spec: Any, limits: RequestLimits) -> ModelKey:
    """A store key from a ``ModelSpec`` message, every field checked."""
    check_spec(spec, limits)
    return ModelKey(zoo_name=spec.zoo_name, sha256=spec.sha256,
                    input_shape=tuple(int(d) for d in spec.input_shape),
                    batch_size=spec.batch_size or 1, seed=spec.seed or DEFAULT_SEED,
                    name=spec.name, graph=GraphReading.of(spec, "ModelSpec"))


def identity_message(pb2: Any, identity: ModelIdentity) -> Any:
    return pb2.ModelIdentity(sha256=identity.sha256, zoo_name=identity.zoo_name,
                             seed=identity.seed, input_shape=list(identity.input_shape),
                             **identity.graph.fields())


@dataclass
class ServerState:
    """What every servicer of one process shares."""

    pb2: Any
    store: ModelStore
    side: str
    num_threads: int
    limits: RequestLimits
    profile_lock: threading.Lock
    gate: ComputeGate
    budget: MemoryBudget
    # Data bytes per TensorChunk the server sends: at most 1 MiB (the .proto's promise),
    # within its own message limit and gRPC's default 4 MiB, which any client accepts.
    reply_chunk_bytes: int = chunk_bytes_for(GRPC_DEFAULT_MESSAGE_BYTES)
    emulation: dict[str, Any] | None = None  # set by an emulated device agent
    power_profile: str | None = None  # its operator's --emulate preset (a name or a file)
    device: Any = None  # a dnntune.profiling.dilation.DilatedDevice: the agent's phone
    # (key, entry, split) -> the split with its head in LiteRT, converted before any run:
    # set by the device agent (dnntune.litert is not this layer's to import)
    litert_heads: Callable[[ModelKey, ModelEntry, Any], Any] | None = None
    # (request, context) -> DeploymentStudyEvents: the device agent's deployment study,
    # set by the agent (dnntune.study is not this layer's to import); None = UNIMPLEMENTED
    deployment_study: Callable[[Any, grpc.ServicerContext], Iterator[Any]] | None = None
    # Set while a deployment study holds profile_lock: a Profile is then refused at once.
    studying: threading.Event = dataclasses.field(default_factory=threading.Event)
    # (loaded model, ProfileSettings, LiteRTAsk, progress) -> its LiteRT per-cut profile,
    # on an emulated phone dilated as its LiteRT split runs are held: set by the agent
    litert_profile: Callable[[Any, Any, LiteRTAsk, Any], Any] | None = None
    bulk: Any = None  # a dnntune.rpc.bulk.BulkListener: the server's --bulk-port
    slots: Any = None  # the server's CallSlots, for calls on the bulk channel

    @contextlib.contextmanager
    def use_model(self, key: ModelKey, method: str) -> Iterator[ModelEntry]:
        """The model ``key`` names, its estimated memory held for the whole block: refused
        (RESOURCE_EXHAUSTED) before it is built if it does not fit the budget."""
        what = (f"{method} of {key.zoo_name or 'uploaded model ' + key.sha256[:12]} with "
                f"input {list(key.input_shape) or 'its own'} x batch {key.batch_size}")
        with self.budget.reserve(self.store.estimate(key), what):
            yield self.store.get(key)


def make_state(side: str, options: Any, upload_dir: str | None) -> tuple[ServerState, Any]:
    """Configure TensorFlow for ``options.num_threads`` and build the shared state;
    returns it with the generated services module."""
    from dnntune.profiling.instrument import configure_runtime
    from dnntune.rpc.protocol import load_protocol

    options.validate()
    runtime = configure_runtime(options.num_threads)
    pb2, services = load_protocol()
    limits = options.limits()
    state = ServerState(pb2=pb2, store=ModelStore(upload_dir, options.max_models, limits),
                        side=side, num_threads=int(runtime["intra_op"]), limits=limits,
                        profile_lock=threading.Lock(), gate=ComputeGate(),
                        budget=MemoryBudget(limits.max_request_bytes),
                        reply_chunk_bytes=chunk_bytes_for(min(
                            options.max_message_mb << 20, GRPC_DEFAULT_MESSAGE_BYTES)))
    return state, services


class _Abandoned(Exception):  # noqa: N818 - control flow, never shown to anyone
    """Raised inside a profile whose caller has gone away."""


class ProfilerServicer:
    """Model transfer, description and profiling on this process's side."""

    def __init__(self, state: ServerState) -> None:
        self.s = state

    def HasModel(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with rpc_errors(context, "HasModel"):
            path = self.s.store.file_for(check_sha256(request.sha256, "ModelRef.sha256"))
            size = path.stat().st_size if path else 0
        return self.s.pb2.ModelStatus(sha256=request.sha256, cached=path is not None,
                                      total_bytes=size)

    def UploadModel(self, request_iterator: Iterator[Any],  # noqa: N802
                    context: grpc.ServicerContext) -> Any:
        with rpc_errors(context, "UploadModel"):
            first = next(request_iterator, None)
            if first is None:
                raise DnntuneError("model upload: no chunks")
            check_sha256(first.sha256, "ModelChunk.sha256")

            def parts() -> Iterator[bytes]:
                yield first.data
                for chunk in request_iterator:
                    if ((chunk.sha256 and chunk.sha256 != first.sha256)
                            or (chunk.suffix and chunk.suffix != first.suffix)
                            or (chunk.total_bytes and chunk.total_bytes != first.total_bytes)):
                        raise DnntuneError("model upload: a following chunk names another "
                                           "file than the first (sha256, suffix, total_bytes)")
                    yield chunk.data
            path = self.s.store.save_upload(first.sha256, first.suffix, first.total_bytes,
                                            parts())
            size = path.stat().st_size
        return self.s.pb2.ModelStatus(sha256=first.sha256, cached=True, total_bytes=size)

    def Describe(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        from dnntune.model.cuts import enumerate_cuts

        with rpc_errors(context, "Describe"), self.s.gate.compute():
            key = key_from_spec(request.model, self.s.limits)
            with self.s.use_model(key, "Describe") as entry:
                graph = entry.loaded.graph
            cuts = enumerate_cuts(graph)
        return describe_message(self.s.pb2, entry.identity, graph, cuts)

    def Profile(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        from dnntune.profiling.energy import check_served_energy
        from dnntune.profiling.profiler import ProfileSettings

        with rpc_errors(context, "Profile"):
            if self.s.studying.is_set():
                raise BusyError("a deployment study is in progress on this agent; retry "
                                "when it ends")
            check_runs(request.num_runs, request.warmup_runs)
            if len(request.energy) > MAX_NAME_CHARS:
                raise DnntuneError(f"ProfileRequest.energy is over {MAX_NAME_CHARS} characters")
            own = self.s.power_profile  # the operator's --emulate, by its text or name
            aliases: set[str] = {own, str((self.s.emulation or {}).get("preset", own))
                                 } if own else set()
            energy = check_served_energy(request.energy, "ProfileRequest.energy", aliases)
            if energy.partition(":")[2] in aliases:
                energy = f"model:{own}"
            settings = ProfileSettings(side=self.s.side, num_runs=request.num_runs or 50,
                                       warmup_runs=request.warmup_runs,
                                       num_threads=self.s.num_threads, energy=energy,
                                       emulation=(self.s.device.emulation.to_dict()
                                                  if self.s.device else self.s.emulation),
                                       shipped_power_profiles_only=energy != f"model:{own}")
            settings.validate()
            ask = litert_ask(request, self.s.litert_profile is not None)
            key = key_from_spec(request.model, self.s.limits)
        gone = threading.Event()  # the caller cancelled or its deadline passed
        context.add_callback(gone.set)
        for item in self._profile_events(key, settings, gone, ask):
            if isinstance(item, DnntuneError):
                context.abort(status_code(item), str(item))
            yield item

    def _profile_events(self, key: ModelKey, settings: Any, gone: threading.Event,
                        ask: LiteRTAsk | None = None) -> Iterator[Any]:
        """Progress events then the profile's JSON chunks (or a DnntuneError)."""
        pb2 = self.s.pb2
        events: queue.Queue[Any] = queue.Queue()
        done = object()

        def progress(stage: str, n: int, total: int) -> None:
            if gone.is_set():
                raise _Abandoned
            events.put(pb2.ProfileEvent(progress=pb2.Progress(stage=stage, done=n,
                                                              total=total)))

        def work() -> None:
            try:
                # One profile at a time, and no other compute beside it: timings must
                # not overlap with anything this server runs.
                # Building the model happens there too: it is compute like any other.
                with self.s.profile_lock, self.s.gate.profiling(gone) as alone:
                    if alone:
                        with self.s.use_model(key, "Profile") as entry:
                            events.put(self._profile(entry.loaded, settings, progress, ask))
            except DnntuneError as exc:
                events.put(exc)
            except _Abandoned:
                pass  # nobody is listening; free the lock for the next caller at once
            except Exception:  # report; never let the worker die silently
                log.exception("internal error while profiling")
                events.put(DnntuneError("internal server error while profiling"))
            finally:
                events.put(done)

        threading.Thread(target=work, name="dnntune-profile", daemon=True).start()
        while (item := events.get()) is not done:
            if hasattr(item, "to_dict"):
                doc = json.dumps(item.to_dict()).encode()
                for start in range(0, len(doc), PROFILE_CHUNK_BYTES):
                    yield pb2.ProfileEvent(profile_json_chunk=doc[start:start +
                                                                   PROFILE_CHUNK_BYTES])
            else:
                yield item


    def _profile(self, loaded: Any, settings: Any, progress: Any,
                 ask: LiteRTAsk | None = None) -> Any:
        """Profile here; on a dilated device natively, paced by its reference, dilated
        (LiteRT heads: paced by the reference in LiteRT)."""
        from dnntune.profiling.profiler import profile_model

        if ask is not None and self.s.litert_profile is not None:
            return self.s.litert_profile(loaded, settings, ask, progress)
        device = self.s.device
        if device is None:
            return profile_model(loaded, settings, progress=progress)
        return device.profile(lambda emulation, pace: profile_model(
            loaded, dataclasses.replace(settings, emulation=emulation.to_dict()),
            progress=progress, pace=pace))


def describe_message(pb2: Any, identity: ModelIdentity, graph: Any, cuts: Any) -> Any:
    """A ``ModelDescription`` of a layer graph and its cuts."""
    def spec(t: Any) -> Any:
        return pb2.TensorSpec(name=t.name, dtype=t.dtype, shape=list(t.shape), bytes=t.bytes)

    return pb2.ModelDescription(
        identity=identity_message(pb2, identity),
        layers=[pb2.Layer(name=node.name, type=node.type, inputs=list(node.inputs),
                          outputs=[spec(t) for t in node.outputs]) for node in graph.layers],
        cuts=[pb2.Cut(index=c.index, after=c.after or "", tensors=[spec(t) for t in c.tensors],
                      bytes_up=c.bytes_up, bytes_down=c.bytes_down) for c in cuts],
        model_inputs=[spec(graph.tensor(n)) for n in graph.model_inputs],
        model_outputs=[spec(graph.tensor(n)) for n in graph.model_outputs])


class CloudServicer:
    """Runs model tails on crossing tensors; echoes tensors for link measurements."""

    def __init__(self, state: ServerState) -> None:
        self.s = state

    def RunTail(self, request_iterator: Iterator[Any],  # noqa: N802
                context: grpc.ServicerContext, reply_chunk_bytes: int | None = None,
                method: str = "RunTail", reply_bulk: list[memoryview] | None = None
                ) -> Iterator[Any]:
        pb2 = self.s.pb2
        with rpc_errors(context, method), self.s.gate.compute(), \
                contextlib.ExitStack() as held:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "header":
                raise DnntuneError("RunTail: the first message must be a header (model, "
                                   "cut_index, head)")
            key = self._tail_key(first.header)
            if key.sha256:
                self.s.store.uploaded_file(key.sha256)  # NOT_FOUND before anything else
            # What the call must carry is checked before anything it names is built: a
            # header with no tensor after it costs no model build.
            second = next(request_iterator, None)
            if second is None:
                raise DnntuneError("RunTail: no crossing tensors followed the header "
                                   "(Describe lists them: cuts[cut_index].tensors)")
            t_load = time.perf_counter()
            entry = held.enter_context(self.s.use_model(key, "RunTail"))
            split = entry.split(first.header.cut_index)
            t0 = time.perf_counter()
            graph = entry.loaded.graph
            expected = {n: (graph.tensor(n).dtype, graph.tensor(n).shape)
                        for n in split.tail_inputs}
            tensors, decode_ms = receive_crossing(itertools.chain([second], request_iterator),
                                                  self.s.limits, expected)
            check_crossing(graph, split.tail_inputs, tensors)
            t1 = time.perf_counter()
            outputs = split.run_tail([tensors[n] for n in split.tail_inputs])
            t2 = time.perf_counter()
            if reply_bulk is not None:  # the outputs' bytes go after the reply message
                headers, raws = encode_bulk(pb2, zip(split.tail_outputs, outputs, strict=True),
                                            field=TAIL_REPLY_TENSOR)
                reply_bulk.extend(raws)
        if reply_bulk is None:
            yield from encode_tensors(pb2, zip(split.tail_outputs, outputs, strict=True),
                                      reply_chunk_bytes or self.s.reply_chunk_bytes,
                                      field=TAIL_REPLY_TENSOR)
        else:
            yield from headers
        yield pb2.TailReply(timing=pb2.TailTiming(receive_ms=(t1 - t0) * 1e3,
                                                  compute_ms=(t2 - t1) * 1e3,
                                                  load_ms=(t0 - t_load) * 1e3,
                                                  decode_ms=decode_ms))

    def _tail_key(self, header: Any) -> ModelKey:
        """The store key a TailHeader names, every field and the head identity checked."""
        key = key_from_spec(header.model, self.s.limits)
        tail = ModelIdentity.of(key.sha256, key.zoo_name, key.seed, key.input_shape,
                                key.graph)
        # A header without `head` is what every client before the field sent: it means the
        # tail's own model (the compatibility rule in the .proto's header comment).
        if header.HasField("head"):
            check_identity(header.head)
            head = ModelIdentity.of(header.head.sha256, header.head.zoo_name,
                                    header.head.seed, header.head.input_shape,
                                    GraphReading.of(header.head, "ModelIdentity"))
        else:
            head = tail
        if head != tail:
            raise HeadMismatchError(f"RunTail: the crossing tensors come from {head.describe()}"
                                    f", but the tail is {tail.describe()}; run both halves "
                                    "of the same model")
        return key

    def Echo(self, request_iterator: Iterator[Any],  # noqa: N802
             context: grpc.ServicerContext) -> Iterator[Any]:
        with rpc_errors(context, "Echo"), self.s.gate.compute():
            assembler = TensorAssembler(self.s.limits)
            for chunk in request_iterator:
                assembler.add(chunk)
            tensors = assembler.finish()
        yield from encode_tensors(self.s.pb2, tensors.items(), self.s.reply_chunk_bytes)

    def RunTailUnary(self, request: bytes, context: grpc.ServicerContext) -> bytes:  # noqa: N802
        """RunTail with its request and reply each in one message (``TailCall``,
        ``TailResult``): the same parts, checked by the same code; each output in one
        chunk, a view of the reply's bytes on the client."""
        with rpc_errors(context, "RunTailUnary"):
            parts = list(read_unary(self.s.pb2, request, self.s.pb2.TailRequest,
                                    TAIL_REQUEST_TENSOR))
        return unary_wire(self.RunTail(iter(parts), context, reply_chunk_bytes=UNARY_CHUNK,
                                       method="RunTailUnary"))

    def EchoUnary(self, request: bytes, context: grpc.ServicerContext) -> bytes:  # noqa: N802
        """Echo in one message each way (``TensorList``), each tensor in one chunk."""
        with rpc_errors(context, "EchoUnary"), self.s.gate.compute():
            assembler = TensorAssembler(self.s.limits)
            for chunk in read_unary(self.s.pb2, request, None, 0):
                assembler.add(chunk)
            tensors = assembler.finish()
        return unary_wire(encode_tensors(self.s.pb2, tensors.items(), UNARY_CHUNK))

    def OpenBulk(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with rpc_errors(context, "OpenBulk"):
            if self.s.bulk is None:
                raise WireError("OpenBulk: this server has no bulk channel (start it with "
                                "--bulk-port)", code="FAILED_PRECONDITION")
            try:
                ticket, expires_s = self.s.bulk.issue()
            except DnntuneError as exc:
                raise WireError(str(exc), code="RESOURCE_EXHAUSTED") from None
            return self.s.pb2.BulkTicket(port=self.s.bulk.port, ticket=ticket,
                                         expires_s=expires_s, tls=self.s.bulk.tls)
        raise AssertionError("unreachable")  # rpc_errors aborts the call

    def bulk_call(self, frame: Any) -> tuple[int, bytes, list[memoryview]]:
        """One EchoUnary or RunTailUnary that came on the bulk channel
        (:class:`dnntune.rpc.bulk.BulkRequestFrame`): the same checks, code and statuses
        as over gRPC, a call slot held as a gRPC call holds one. Returns the status
        number, the reply message (or the status's message) and the reply's tensor bytes.
        """
        from dnntune.rpc import bulk

        context = _BulkContext(frame.peer, frame.timeout_s)
        method = bulk.METHOD_NAMES[frame.method]
        if self.s.slots is None:  # the gRPC server is not serving yet
            return (grpc.StatusCode.UNAVAILABLE.value[0],
                    b"the server is starting; retry", [])
        held: Any = self.s.slots.held(method)
        try:
            with held as refusal:
                if refusal is not None:
                    return refusal[0].value[0], refusal[1].encode(), []
                raws: list[memoryview] = []
                run = self._bulk_echo if frame.method == bulk.ECHO else self._bulk_run_tail
                return 0, run(frame, context, raws), raws
        except _BulkAbort as exc:
            return exc.code.value[0], exc.details.encode(), []

    def _bulk_echo(self, frame: Any, context: Any, raws: list[memoryview]) -> bytes:
        with rpc_errors(context, "EchoUnary (bulk)"):
            # the request is read before the compute gate is entered, as over gRPC
            chunks = read_parsed(self.s.pb2, frame.message, self.s.pb2.TensorList, None)
            chunks = with_bulk_data(chunks, frame.data(bulk_sizes(chunks, self.s.limits)))
        with rpc_errors(context, "EchoUnary (bulk)"), self.s.gate.compute():
            assembler = TensorAssembler(self.s.limits)
            for chunk in chunks:
                assembler.add(chunk)
            headers, out = encode_bulk(self.s.pb2, assembler.finish().items())
            raws.extend(out)
            return unary_wire(headers)
        raise AssertionError("unreachable")  # rpc_errors aborts the call

    def _bulk_run_tail(self, frame: Any, context: Any, raws: list[memoryview]) -> bytes:
        pb2 = self.s.pb2
        with rpc_errors(context, "RunTailUnary (bulk)"):
            parts = read_parsed(pb2, frame.message, pb2.TailCall, "tensor")
            chunks = [p.tensor for p in parts if isinstance(p, TensorPart)]
            filled = iter(with_bulk_data(chunks, frame.data(bulk_sizes(chunks,
                                                                       self.s.limits))))
            parts = [TensorPart(next(filled)) if isinstance(p, TensorPart) else p
                     for p in parts]
        # RunTail answers for itself (its own rpc_errors, which raise _BulkAbort here)
        return unary_wire(self.RunTail(iter(parts), context, reply_chunk_bytes=UNARY_CHUNK,
                                       method="RunTailUnary (bulk)", reply_bulk=raws))


class _BulkAbort(Exception):  # noqa: N818 - a status, as context.abort raises one
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _BulkContext:
    """What the servicers use of a ``grpc.ServicerContext``, for a bulk channel call."""

    def __init__(self, peer: str, timeout_s: float) -> None:
        self._peer = peer
        self._until = time.monotonic() + timeout_s

    def peer(self) -> str:
        return self._peer

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _BulkAbort(code, details)

    def is_active(self) -> bool:
        return time.monotonic() < self._until

    def time_remaining(self) -> float:
        return max(self._until - time.monotonic(), 0.0)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


def add_cloud_servicer(pb2: Any, servicer: CloudServicer, server: Any) -> None:
    """Register the Cloud service (as ``add_CloudServicer_to_server`` does) with reply
    serializers that send chunks encoded by :func:`encode_tensors` as they are."""
    handlers = {
        "RunTail": grpc.stream_stream_rpc_method_handler(
            servicer.RunTail, request_deserializer=pb2.TailRequest.FromString,
            response_serializer=wire_serializer(pb2.TailReply)),
        "Echo": grpc.stream_stream_rpc_method_handler(
            servicer.Echo, request_deserializer=pb2.TensorChunk.FromString,
            response_serializer=wire_serializer(pb2.TensorChunk)),
        # The unary calls take and give wire bytes: read_unary and unary_wire parse and
        # build them with tensors as views, and a malformed one is INVALID_ARGUMENT.
        "RunTailUnary": grpc.unary_unary_rpc_method_handler(
            servicer.RunTailUnary, response_serializer=unary_serializer),
        "EchoUnary": grpc.unary_unary_rpc_method_handler(
            servicer.EchoUnary, response_serializer=unary_serializer),
        "OpenBulk": grpc.unary_unary_rpc_method_handler(
            servicer.OpenBulk, request_deserializer=pb2.BulkRequest.FromString,
            response_serializer=pb2.BulkTicket.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(CLOUD_SERVICE,
                                                                          handlers),))
    server.add_registered_method_handlers(CLOUD_SERVICE, handlers)


def receive_crossing(requests: Iterator[Any], limits: RequestLimits,
                     expected: dict[str, tuple[str, Any]]
                     ) -> tuple[dict[str, np.ndarray], float]:
    """RunTail's crossing tensors, plain (``tensor``) or encoded (``encoded``, decoded
    here), by name; and the milliseconds spent decoding."""
    from dnntune.rpc.encoded import EncodedAssembler

    plain = TensorAssembler(limits, expected=expected)
    encoded = EncodedAssembler(limits, expected)
    for request in requests:
        part = request.WhichOneof("part")
        if part == "tensor":
            plain.add(request.tensor)
        elif part == "encoded":
            encoded.add(request.encoded)
        else:
            raise DnntuneError("RunTail: only tensors may follow the header")
    tensors = plain.finish()
    decoded = encoded.finish()
    both = sorted(set(tensors) & set(decoded))
    if both:
        raise DnntuneError(f"RunTail: tensor(s) {both} sent both plain and encoded")
    return {**tensors, **decoded}, encoded.decode_ms


def check_crossing(graph: Any, expected: tuple[str, ...], tensors: dict[str, np.ndarray]
                   ) -> None:
    """The tensors must be exactly the cut's crossing tensors, with their shapes and dtypes."""
    if set(tensors) != set(expected):
        raise DnntuneError(f"RunTail: expected tensors {list(expected)}, got {list(tensors)}")
    for name in expected:
        spec = graph.tensor(name)
        got = tensors[name]
        if tuple(got.shape) != spec.shape or got.dtype.name != spec.dtype:
            raise DnntuneError(f"RunTail: tensor {name!r} must be {spec.dtype}{list(spec.shape)}"
                               f", got {got.dtype.name}{list(got.shape)}")


class DeviceServicer:
    """Runs a split: the head here, the tail on the cloud server this agent points at."""

    def __init__(self, state: ServerState, cloud: Callable[[], Any]) -> None:
        self.s = state
        self._cloud = cloud  # returns a dnntune.rpc.client.CloudClient, connected lazily
        self._wire_cache: dict[Any, Any] = {}  # --wire: the photograph and its reference

    def RunSplit(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        from dnntune.rpc.splitrun import run_split

        pb2 = self.s.pb2
        with rpc_errors(context, "RunSplit"), self.s.gate.compute(), \
                contextlib.ExitStack() as held:
            check_runs(request.num_runs, request.warmup_runs)
            framework = request.framework or "tf"
            if framework not in ("tf", "litert"):
                raise DnntuneError(f"SplitRequest.framework must be tf or litert (or empty), "
                                   f"got {quoted(framework)}")
            if framework == "litert" and self.s.litert_heads is None:
                raise DnntuneError("SplitRequest.framework litert: this agent runs no "
                                   "LiteRT heads")
            if framework == "litert" and request.wire:
                raise DnntuneError("SplitRequest.wire with framework litert is not supported "
                                   "yet: LiteRT heads send their own tensors")
            key = key_from_spec(request.model, self.s.limits)
            entry = held.enter_context(self.s.use_model(key, "RunSplit"))
            split = entry.split(request.cut_index)
            wire, reference = self._wire(request.wire, entry, split)
            cloud = self._cloud()
            cloud.ensure_model(request.model, self.s.store)
            if self.s.device is not None:
                self.s.device.refresh()  # the phone's speed, as this host runs now
            if framework == "litert" and self.s.litert_heads is not None:
                # Converted (once per model and cut) here, before any run of this call.
                split = self.s.litert_heads(key, entry, split)
            result = run_split(entry.loaded, split, cloud, request.model,
                               request.num_runs or 10, request.warmup_runs,
                               reference=reference,
                               hold=getattr(split, "hold", None) or (
                                   self.s.device.hold if self.s.device else None),
                               pace=getattr(split, "pace", None) or (
                                   self.s.device.pace_split if self.s.device else None),
                               wire=wire,
                               dilate=self.s.device.dilate if self.s.device else None)
        return pb2.SplitReply(
            runs=[pb2.SplitRun(total_ms=r.total_ms, head_ms=r.head_ms,
                               transfer_ms=r.transfer_ms, tail_ms=r.tail_ms,
                               encode_ms=r.encode_ms, decode_ms=r.decode_ms)
                  for r in result.runs],
            max_abs_error=result.max_abs_error, bytes_up=result.bytes_up,
            bytes_down=result.bytes_down, wire=request.wire)

    def StudyDeployment(self, request: Any,  # noqa: N802
                        context: grpc.ServicerContext) -> Iterator[Any]:
        """The deployment study on this device (:mod:`dnntune.study.agent`)."""
        if self.s.deployment_study is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this agent runs no deployment study")
        assert self.s.deployment_study is not None
        yield from self.s.deployment_study(request, context)

    def _wire(self, name: str, entry: ModelEntry, split: Any) -> tuple[Any, Any]:
        """``SplitRequest.wire``: a :class:`~dnntune.rpc.encoded.WireSender` (``None``
        for plain tensors) and the unsplit model's outputs on the inputs it runs on."""
        if not name:
            return None, entry.reference_outputs()
        from dnntune.model.loading import compile_model
        from dnntune.rpc.encoded import WireSender
        from dnntune.wire.codecs import parse_encoding
        from dnntune.wire.samples import load_samples

        if len(name) > MAX_NAME_CHARS:
            raise DnntuneError(f"SplitRequest.wire is over {MAX_NAME_CHARS} characters")
        try:
            encoding = parse_encoding(name)
        except ConfigError as exc:
            raise DnntuneError(f"SplitRequest.wire: {exc.problem}") from None
        graph = entry.loaded.graph
        if len(graph.model_inputs) != 1 or entry.loaded.batch_size != 1:
            raise DnntuneError("SplitRequest.wire: encodings run on models with one input, "
                               "at batch 1")
        (input_name,) = graph.model_inputs
        if encoding.for_input and set(split.tail_inputs) != {input_name}:
            raise DnntuneError(f"SplitRequest.wire: {encoding.name} sends the input image, "
                               f"but activations cross cut {split.cut.index}")
        key = (entry.identity, entry.loaded.name)
        cached = self._wire_cache.get(key)
        if cached is None:
            shape = graph.tensor(input_name).shape[1:]
            samples = load_samples(shape, entry.loaded.name)
            inputs = [samples.inputs[:1]]
            pixels = None if samples.pixels is None else samples.pixels[:1]
            cached = (inputs, pixels, samples.preprocessing,
                      compile_model(entry.loaded.model)(inputs))
            self._wire_cache = {key: cached}  # one model's photograph at a time
        inputs, pixels, mode, reference = cached
        if encoding.for_input and pixels is None:
            raise DnntuneError(f"SplitRequest.wire: {encoding.name} needs an image input")
        return WireSender(encoding, inputs, pixels, mode), reference
