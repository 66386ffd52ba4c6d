"""What both servers share: limits, token auth, TLS, health, reflection, graceful stop.

Shutdown is bounded whatever gRPC does: on SIGTERM health turns NOT_SERVING and keeps
answering while the calls in flight finish (up to ``grace_s``); new calls get
UNAVAILABLE; then gRPC stops, and :meth:`RunningServer.stop` returns at most
:data:`STOP_BOUND_S` later, saying whether calls had to be abandoned.
"""

from __future__ import annotations

import hmac
import signal
import ssl
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dnntune.allocator import keep_transfer_buffers
from dnntune.errors import DnntuneError
from dnntune.rpc.decoding import RequestDecoding
from dnntune.rpc.gate import MAX_HEALTH_WATCHES, CallSlots, wrap_handler
from dnntune.rpc.limits import RequestLimits, default_request_memory_mb

OPEN_METHODS = ("/grpc.health.v1.Health/",)
STOP_BOUND_S = 5.0  # after the grace period, how long gRPC may take to stop
ABANDONED_EXIT_CODE = 3  # `serve`/`agent` exit code when shutdown had to abandon calls
# Clients ping every 10 s during calls to detect a dead link (client.py); allow it.
SERVER_KEEPALIVE = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000),
                    ("grpc.http2.ping_timeout_ms", 10_000),
                    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
                    ("grpc.http2.max_ping_strikes", 0)]


@dataclass(frozen=True)
class ServerOptions:
    """How a dnntune server listens and what it allows.

    Attributes:
        host: Interface to bind; loopback unless you mean to expose it.
        port: 0 picks a free port (read it back from :class:`RunningServer`).
        num_threads: TensorFlow intra-op threads for profiling and execution.
        token: When set, every call but health checks needs ``authorization: Bearer <token>``.
        tls_cert, tls_key: PEM files; both or neither.
        max_message_mb: Largest gRPC message either way; bigger payloads are chunked.
        max_concurrent_rpcs: Calls beyond this get RESOURCE_EXHAUSTED (health excluded).
        max_tensor_mb: Largest tensor accepted (MiB).
        max_call_mb: Largest total of the tensors of one call (MiB).
        max_input_elements: Largest model input (elements × batch) a request may ask for.
        max_model_mb: Largest uploaded model file (MiB).
        max_models: Models kept built (least recently used go first).
        max_request_memory_mb: Estimated peak memory one request's model may take, and
            all calls in progress together (0 = 40 % of this machine's memory).
        reflection: Serve gRPC reflection (off by default; needs the token if one is set).
        grace_s: How long in-flight calls may finish after SIGTERM.
        keep_transfer_buffers: Have glibc keep freed multi-MB buffers for the next call
            (:func:`dnntune.allocator.keep_transfer_buffers`: no page faults per tensor
            transfer, for up to 128 MiB of free memory kept resident per arena).
        bulk_port: The bulk channel's TCP port (:mod:`dnntune.rpc.bulk`; 0 = any free
            port), on ``host``; ``None``: no bulk channel. Cloud servers only.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    num_threads: int = 1
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_mb: int = 16
    max_concurrent_rpcs: int = 16
    max_tensor_mb: int = 256
    max_call_mb: int = 256
    max_input_elements: int = 1 << 21
    max_model_mb: int = 1024
    max_models: int = 4
    max_request_memory_mb: int = 0
    reflection: bool = False
    grace_s: float = 30.0
    keep_transfer_buffers: bool = True
    bulk_port: int | None = None

    def validate(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise DnntuneError("--tls-cert and --tls-key go together")
        for name, value in (("--max-message-mb", self.max_message_mb),
                            ("--max-concurrent-rpcs", self.max_concurrent_rpcs),
                            ("--num_threads", self.num_threads),
                            ("--max-tensor-mb", self.max_tensor_mb),
                            ("--max-call-mb", self.max_call_mb),
                            ("--max-input-elements", self.max_input_elements),
                            ("--max-model-mb", self.max_model_mb),
                            ("--max-models", self.max_models),
                            ("--max-request-memory-mb", self.max_request_memory_mb or 1)):
            if value < 1:
                raise DnntuneError(f"{name} must be at least 1, got {value}")
        if not 0 <= self.port < 65536:
            raise DnntuneError(f"--port must be 0 to 65535, got {self.port}")
        if self.bulk_port is not None and not 0 <= self.bulk_port < 65536:
            raise DnntuneError(f"--bulk-port must be 0 to 65535, got {self.bulk_port}")
        if not 0 <= self.grace_s <= 3600:
            raise DnntuneError(f"--grace-s must be 0 to 3600 seconds, got {self.grace_s:g}")

    def limits(self) -> RequestLimits:
        return RequestLimits(max_tensor_bytes=self.max_tensor_mb << 20,
                             max_call_bytes=self.max_call_mb << 20,
                             max_input_elements=self.max_input_elements,
                             max_model_bytes=self.max_model_mb << 20,
                             max_request_bytes=(self.max_request_memory_mb
                                                or default_request_memory_mb()) << 20)


def read_token(path: str | None) -> str | None:
    """The token in a file (first line, stripped), or ``None``."""
    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise DnntuneError(f"{path}: cannot read token file ({exc.strerror})") from None
    if not token:
        raise DnntuneError(f"{path}: token file is empty")
    return token


def check_tls_files(cert: str, key: str) -> None:
    """Refuse a certificate/key pair that is unreadable, not PEM, or not a pair."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise DnntuneError(f"{exc.filename}: no such TLS file") from None
    except OSError as exc:  # ssl.SSLError is an OSError
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise DnntuneError(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and "
                           f"its matching private key ({reason})") from None


class TokenAuth(grpc.ServerInterceptor):
    """Refuses calls without the bearer token with UNAUTHENTICATED (only health is open).

    The scheme name is matched case-insensitively (RFC 6750), the token exactly.
    """

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHODS):
            return handler
        given = str(dict(handler_call_details.invocation_metadata or ())
                    .get("authorization", ""))
        scheme, _, token = given.strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                               self._expected):
            return handler
        return wrap_handler(handler, lambda _behavior: _refuse)


def _refuse(_request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED,
                  "missing or wrong token: send metadata 'authorization: Bearer <token>'")


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    options: ServerOptions
    slots: CallSlots
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    stop_problem: str = ""  # why stop() returned False, for the exit line
    bulk_port: int | None = None  # the bulk channel's port, if the server has one

    @property
    def address(self) -> str:
        return f"{self.options.host}:{self.port}"

    def stop(self, grace_s: float | None = None) -> bool:
        """Stop within ``grace_s`` + :data:`STOP_BOUND_S`; ``False`` if calls were abandoned.

        Health answers NOT_SERVING and new calls get UNAVAILABLE while the calls in flight
        finish; then gRPC stops (cancelling what is left) and the cleanups run.
        """
        grace = self.options.grace_s if grace_s is None else grace_s
        self.health.enter_graceful_shutdown()
        self.slots.drain()
        finished = self.slots.wait_idle(grace)
        left = self.slots.in_flight
        stopped = self.server.stop(0.5 if finished else 0).wait(STOP_BOUND_S)
        for cleanup in self.on_stop:
            cleanup()
        if not finished:
            self.stop_problem = (f"{left} call(s) still running after --grace-s {grace:g} "
                                 "were abandoned")
        elif not stopped:
            self.stop_problem = (f"no call was running, but gRPC's own threads did not stop "
                                 f"within {STOP_BOUND_S:g} s and were abandoned")
        return finished and stopped

    def wait_for_signal(self) -> bool:
        """Block until SIGTERM or SIGINT, then stop; ``False`` if calls were abandoned."""
        stopping = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            stopping.set()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stopping.wait(0.5):
            pass
        return self.stop()


def build_server(options: ServerOptions, register: Callable[[grpc.Server], list[str]]
                 ) -> RunningServer:
    """Create, configure and start a server; ``register`` adds services, returns their names."""
    options.validate()
    if options.keep_transfer_buffers:
        keep_transfer_buffers()
    if options.tls_cert and options.tls_key:
        check_tls_files(options.tls_cert, options.tls_key)
    limit = options.max_message_mb * (1 << 20)
    slots = CallSlots(options.max_concurrent_rpcs)
    interceptors: list[grpc.ServerInterceptor] = [TokenAuth(options.token)] if options.token \
        else []
    interceptors += [slots, RequestDecoding()]
    # Threads for every counted call, every health Watch, and spares so that a health
    # Check (never counted) always finds one. gRPC's own cap only bounds a flood.
    workers = options.max_concurrent_rpcs + MAX_HEALTH_WATCHES + 4
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dnntune-rpc"),
        interceptors=interceptors,
        options=[("grpc.max_send_message_length", limit),
                 ("grpc.max_receive_message_length", limit),
                 ("grpc.so_reuseport", 0), *SERVER_KEEPALIVE],
        maximum_concurrent_rpcs=4 * workers)
    names = register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in [*names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if options.reflection:
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection([*names, health.SERVICE_NAME,
                                             reflection.SERVICE_NAME], server)
    address = f"{options.host}:{options.port}"
    try:
        if options.tls_cert and options.tls_key:
            creds = grpc.ssl_server_credentials([(Path(options.tls_key).read_bytes(),
                                                  Path(options.tls_cert).read_bytes())])
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except OSError as exc:
        raise DnntuneError(f"cannot read TLS files ({exc})") from None
    except RuntimeError as exc:
        raise DnntuneError(f"cannot listen on {address} ({exc})") from None
    if port == 0:
        raise DnntuneError(f"cannot listen on {address} (in use or not a local address)")
    server.start()
    return RunningServer(server, port, health_servicer, options, slots)
