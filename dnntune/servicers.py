"""gRPC servicers: convert protocol messages to dnntune's types and call the core.

Shared by the cloud server (Profiler + Cloud) and the device agent (Profiler + Device).
Every bad request ends in a status with a one-line message, and the server keeps
serving: :func:`rpc_errors` maps dnntune's errors to gRPC status codes.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from dnntune.errors import DnntuneError
from dnntune.models import DEFAULT_SEED
from dnntune.modelstore import ModelKey, ModelStore, NotFoundError, TooLargeError
from dnntune.tensors import TensorAssembler, WireError, encode_tensors

PROFILE_CHUNK_BYTES = 1 << 20


@contextlib.contextmanager
def rpc_errors(context: grpc.ServicerContext) -> Iterator[None]:
    """Abort the call with the right status for dnntune's errors (never a traceback)."""
    try:
        yield
    except NotFoundError as exc:
        context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except TooLargeError as exc:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    except WireError as exc:
        context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
    except DnntuneError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


def key_from_spec(spec: Any) -> ModelKey:
    """A store key from a ``ModelSpec`` message."""
    source = spec.WhichOneof("source")
    if source is None:
        raise DnntuneError("model spec names neither zoo_name nor sha256")
    shape = tuple(int(d) for d in spec.input_shape)
    if any(d <= 0 for d in shape):
        raise DnntuneError(f"model input_shape must be positive, got {list(shape)}")
    if spec.batch_size < 0:
        raise DnntuneError(f"model batch_size must be positive, got {spec.batch_size}")
    return ModelKey(zoo_name=spec.zoo_name, sha256=spec.sha256, input_shape=shape,
                    batch_size=spec.batch_size or 1, seed=spec.seed or DEFAULT_SEED,
                    name=spec.name)


@dataclass
class ServerState:
    """What every servicer of one process shares."""

    pb2: Any
    store: ModelStore
    side: str
    num_threads: int
    max_tensor_bytes: int
    profile_lock: threading.Lock
    emulation: dict[str, Any] | None = None  # set by an emulated device agent


def make_state(side: str, options: Any, upload_dir: str | None) -> tuple[ServerState, Any]:
    """Configure TensorFlow for ``options.num_threads`` and build the shared state;
    returns it with the generated services module."""
    from dnntune.instrument import configure_runtime
    from dnntune.protocol import load_protocol

    options.validate()
    runtime = configure_runtime(options.num_threads)
    pb2, services = load_protocol()
    state = ServerState(pb2=pb2, store=ModelStore(upload_dir), side=side,
                        num_threads=int(runtime["intra_op"]),
                        max_tensor_bytes=options.max_tensor_mb << 20,
                        profile_lock=threading.Lock())
    return state, services


class _Abandoned(Exception):  # noqa: N818 - control flow, never shown to anyone
    """Raised inside a profile whose caller has gone away."""


class ProfilerServicer:
    """Model transfer and profiling on this process's side."""

    def __init__(self, state: ServerState) -> None:
        self.s = state

    def HasModel(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        path = self.s.store.file_for(request.sha256)
        return self.s.pb2.ModelStatus(sha256=request.sha256, cached=path is not None,
                                      total_bytes=path.stat().st_size if path else 0)

    def UploadModel(self, request_iterator: Iterator[Any],  # noqa: N802
                    context: grpc.ServicerContext) -> Any:
        with rpc_errors(context):
            first = next(request_iterator, None)
            if first is None:
                raise DnntuneError("model upload: no chunks")

            def parts() -> Iterator[bytes]:
                yield first.data
                for chunk in request_iterator:
                    yield chunk.data
            path = self.s.store.save_upload(first.sha256, first.suffix, first.total_bytes,
                                            parts())
            return self.s.pb2.ModelStatus(sha256=first.sha256, cached=True,
                                          total_bytes=path.stat().st_size)

    def Profile(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        from dnntune.profiler import ProfileSettings, profile_model

        pb2 = self.s.pb2
        with rpc_errors(context):
            settings = ProfileSettings(side=self.s.side, num_runs=request.num_runs or 50,
                                       warmup_runs=request.warmup_runs,
                                       num_threads=self.s.num_threads,
                                       energy=request.energy or "none",
                                       emulation=self.s.emulation)
            settings.validate()
            entry = self.s.store.get(key_from_spec(request.model))
        events: queue.Queue[Any] = queue.Queue()
        done = object()
        gone = threading.Event()  # the caller cancelled or its deadline passed
        context.add_callback(gone.set)

        def progress(stage: str, n: int, total: int) -> None:
            if gone.is_set():
                raise _Abandoned
            events.put(("progress", stage, n, total))

        def work() -> None:
            try:
                with self.s.profile_lock:  # one profile at a time: timings must not overlap
                    if not gone.is_set():
                        events.put(("profile", profile_model(entry.loaded, settings,
                                                             progress=progress)))
            except DnntuneError as exc:
                events.put(("error", exc))
            except _Abandoned:
                pass  # nobody is listening; free the lock for the next caller at once
            finally:
                events.put(done)

        threading.Thread(target=work, name="dnntune-profile", daemon=True).start()
        while (item := events.get()) is not done:
            if item[0] == "progress":
                yield pb2.ProfileEvent(progress=pb2.Progress(stage=item[1], done=item[2],
                                                             total=item[3]))
            elif item[0] == "error":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(item[1]))
            else:
                doc = json.dumps(item[1].to_dict()).encode()
                for start in range(0, len(doc), PROFILE_CHUNK_BYTES):
                    yield pb2.ProfileEvent(profile_json_chunk=doc[start:start +
                                                                   PROFILE_CHUNK_BYTES])


class CloudServicer:
    """Runs model tails on crossing tensors; echoes tensors for link measurements."""

    def __init__(self, state: ServerState) -> None:
        self.s = state

    def RunTail(self, request_iterator: Iterator[Any],  # noqa: N802
                context: grpc.ServicerContext) -> Iterator[Any]:
        pb2 = self.s.pb2
        with rpc_errors(context):
            t0 = time.perf_counter()
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "header":
                raise DnntuneError("RunTail: the first message must be a header (model, "
                                   "cut_index)")
            entry = self.s.store.get(key_from_spec(first.header.model))
            split = entry.split(first.header.cut_index)
            assembler = TensorAssembler(self.s.max_tensor_bytes)
            for request in request_iterator:
                if request.WhichOneof("part") != "tensor":
                    raise DnntuneError("RunTail: only tensors may follow the header")
                assembler.add(request.tensor)
            tensors = assembler.finish()
            check_crossing(entry.loaded.graph, split.tail_inputs, tensors)
            t1 = time.perf_counter()
            outputs = split.run_tail([tensors[n] for n in split.tail_inputs])
            t2 = time.perf_counter()
        yield from (pb2.TailReply(tensor=c) for c in
                    encode_tensors(pb2, zip(split.tail_outputs, outputs, strict=True)))
        yield pb2.TailReply(timing=pb2.TailTiming(receive_ms=(t1 - t0) * 1e3,
                                                  compute_ms=(t2 - t1) * 1e3))

    def Echo(self, request_iterator: Iterator[Any],  # noqa: N802
             context: grpc.ServicerContext) -> Iterator[Any]:
        with rpc_errors(context):
            assembler = TensorAssembler(self.s.max_tensor_bytes)
            for chunk in request_iterator:
                assembler.add(chunk)
            tensors = assembler.finish()
        yield from encode_tensors(self.s.pb2, tensors.items())


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
        self._cloud = cloud  # returns a dnntune.client.CloudClient, connected lazily

    def RunSplit(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        from dnntune.splitrun import run_split

        pb2 = self.s.pb2
        with rpc_errors(context):
            if request.num_runs < 0 or request.warmup_runs < 0:
                raise DnntuneError("num_runs and warmup_runs must be 0 or more")
            entry = self.s.store.get(key_from_spec(request.model))
            split = entry.split(request.cut_index)
            cloud = self._cloud()
            cloud.ensure_model(request.model, self.s.store)
            result = run_split(entry.loaded, split, cloud, request.model,
                               request.num_runs or 10, request.warmup_runs)
        return pb2.SplitReply(
            runs=[pb2.SplitRun(total_ms=r.total_ms, head_ms=r.head_ms,
                               transfer_ms=r.transfer_ms, tail_ms=r.tail_ms)
                  for r in result.runs],
            max_abs_error=result.max_abs_error, bytes_up=result.bytes_up,
            bytes_down=result.bytes_down)
