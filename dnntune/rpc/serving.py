"""What both servers share: limits, token auth, TLS, health, reflection, graceful stop."""

from __future__ import annotations

import hmac
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dnntune.errors import DnntuneError

OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


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
        max_concurrent_rpcs: Calls beyond this get RESOURCE_EXHAUSTED.
        max_tensor_mb: Largest tensor or model accepted.
        reflection: Serve gRPC reflection (off by default).
        grace_s: How long in-flight calls may finish after SIGTERM.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    num_threads: int = 1
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_mb: int = 16
    max_concurrent_rpcs: int = 16
    max_tensor_mb: int = 1024
    reflection: bool = False
    grace_s: float = 30.0

    def validate(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise DnntuneError("--tls-cert and --tls-key go together")
        for name, value in (("--max-message-mb", self.max_message_mb),
                            ("--max-concurrent-rpcs", self.max_concurrent_rpcs),
                            ("--num_threads", self.num_threads)):
            if value < 1:
                raise DnntuneError(f"{name} must be at least 1, got {value}")
        if not 0 <= self.port < 65536:
            raise DnntuneError(f"--port must be 0 to 65535, got {self.port}")


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


class TokenAuth(grpc.ServerInterceptor):
    """Refuses calls without the bearer token with UNAUTHENTICATED (health stays open)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHODS):
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return handler
        return _refusing_handler(handler)


def _refusing_handler(handler: Any) -> Any:
    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "missing or wrong token: send metadata 'authorization: Bearer <token>'")

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler,
             (True, True): grpc.stream_stream_rpc_method_handler}
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    options: ServerOptions

    @property
    def address(self) -> str:
        return f"{self.options.host}:{self.port}"

    def stop(self, grace_s: float | None = None) -> None:
        """Health goes NOT_SERVING, new calls are refused, in-flight ones may finish."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.options.grace_s if grace_s is None else grace_s).wait()

    def wait_for_signal(self) -> None:
        """Block until SIGTERM or SIGINT, then stop gracefully."""
        stopping = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            stopping.set()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stopping.wait(0.5):
            pass
        self.stop()


def build_server(options: ServerOptions, register: Callable[[grpc.Server], list[str]]
                 ) -> RunningServer:
    """Create, configure and start a server; ``register`` adds services, returns their names."""
    options.validate()
    limit = options.max_message_mb * (1 << 20)
    interceptors = [TokenAuth(options.token)] if options.token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_concurrent_rpcs + 2,
                                   thread_name_prefix="dnntune-rpc"),
        interceptors=interceptors,
        options=[("grpc.max_send_message_length", limit),
                 ("grpc.max_receive_message_length", limit),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=options.max_concurrent_rpcs)
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
    return RunningServer(server, port, health_servicer, options)
