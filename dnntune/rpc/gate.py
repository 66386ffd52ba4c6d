"""Who may run when: call slots that never starve health, and profiles that run alone.

:class:`CallSlots` is a server interceptor that counts dnntune's calls in flight and
refuses those past ``--max-concurrent-rpcs`` with RESOURCE_EXHAUSTED, leaving health
checks out of the count, so health always answers. It also drains the server on
shutdown: new calls get UNAVAILABLE while the ones in flight finish.

:class:`ComputeGate` keeps a profile's timings clean: a profile starts measuring only
when no other compute call is running, and compute calls that arrive while it
measures are refused with UNAVAILABLE (gRPC's code for "retry later").
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from dnntune.errors import DnntuneError

HEALTH_PREFIX = "/grpc.health.v1.Health/"
WATCH_METHOD = "/grpc.health.v1.Health/Watch"
MAX_HEALTH_WATCHES = 4  # each Watch stream holds a server thread until the client leaves


class BusyError(DnntuneError):
    """This server is profiling; the call may be retried when the profile ends."""


class _Release:
    """Calls ``release`` once, when the call ends or its response stream is dropped."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


class _Counted:
    """A response iterator that frees its slot when exhausted, closed or collected."""

    def __init__(self, inner: Iterator[Any], release: _Release) -> None:
        self._inner, self._release = inner, release

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._inner)
        except BaseException:
            self._release()
            raise

    def __del__(self) -> None:
        self._release()


class CallSlots(grpc.ServerInterceptor):
    """Bounds dnntune calls in flight (health excluded) and drains them on shutdown."""

    def __init__(self, max_calls: int) -> None:
        self.max_calls = max_calls
        self._cond = threading.Condition()
        self._calls = 0
        self._watches = 0
        self._draining = False

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._calls

    def drain(self) -> None:
        """From now on, new calls (health checks aside) get UNAVAILABLE."""
        with self._cond:
            self._draining = True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in flight; ``False`` if ``timeout_s`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._calls == 0, timeout=max(timeout_s, 0))

    def _enter(self, method: str) -> tuple[grpc.StatusCode, str] | None:
        with self._cond:
            if method == WATCH_METHOD:
                if self._watches >= MAX_HEALTH_WATCHES:
                    return (grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"at most {MAX_HEALTH_WATCHES} health Watch streams; use Check")
                self._watches += 1
                return None
            if self._draining:
                return grpc.StatusCode.UNAVAILABLE, "server is shutting down"
            if self._calls >= self.max_calls:
                return (grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"server busy: {self.max_calls} calls in progress "
                        "(--max-concurrent-rpcs); retry later")
            self._calls += 1
            return None

    def _leave(self, method: str) -> None:
        with self._cond:
            if method == WATCH_METHOD:
                self._watches -= 1
            else:
                self._calls -= 1
            self._cond.notify_all()

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or (method.startswith(HEALTH_PREFIX) and method != WATCH_METHOD):
            return handler
        return wrap_handler(handler, lambda behavior: self._counted(method, behavior))

    @contextlib.contextmanager
    def held(self, method: str) -> Iterator[tuple[grpc.StatusCode, str] | None]:
        """A call slot for a call that does not come through gRPC (the bulk channel,
        :mod:`dnntune.rpc.bulk`): yields ``None`` while it holds one, or the refusal
        (status, message) a gRPC call would get."""
        refusal = self._enter(method)
        try:
            yield refusal
        finally:
            if refusal is None:
                self._leave(method)

    def _counted(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            refusal = self._enter(method)
            if refusal is not None:
                context.abort(*refusal)
            release = _Release(lambda: self._leave(method))
            # Also when the call ends on the wire (cancelled, deadline, a request that
            # failed to deserialize): gRPC then stops pulling the response stream.
            context.add_callback(release)
            try:
                result = behavior(request, context)
            except BaseException:
                release()
                raise
            if hasattr(result, "__next__"):  # a response stream: counted until it ends
                return _Counted(result, release)
            release()
            return result
        return run


def wrap_handler(handler: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
                 request_deserializer: Callable[[bytes], Any] | None = None) -> Any:
    """The same RPC method handler with its behaviour passed through ``wrap`` (and its
    request deserializer replaced, if one is given)."""
    kinds = {(False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
             (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
             (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
             (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler)}
    attr, make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(wrap(getattr(handler, attr)),
                request_deserializer=request_deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer)


class ComputeGate:
    """Profiles run alone: no other compute call runs beside a profile's measurements."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._profiles = 0  # waiting for the running calls to end, or measuring

    @contextlib.contextmanager
    def compute(self) -> Iterator[None]:
        """Hold for a compute call; :class:`BusyError` while a profile waits or measures."""
        with self._cond:
            if self._profiles:
                raise BusyError("profiling in progress on this server; retry when it ends "
                                "(timings would be distorted by running beside it)")
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def profiling(self, gone: threading.Event, poll_s: float = 0.2) -> Iterator[bool]:
        """Hold while a profile measures; yields ``False`` if its caller left while it
        waited for the compute calls in flight to finish."""
        with self._cond:
            self._profiles += 1
        try:
            with self._cond:
                while self._running and not gone.is_set():
                    self._cond.wait(poll_s)
            yield not gone.is_set()
        finally:
            with self._cond:
                self._profiles -= 1
                self._cond.notify_all()

