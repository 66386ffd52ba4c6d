"""The dnntune cloud server (gRPC): profiles layers and runs model tails for split inference.

Thin wiring only: :func:`create_server` builds the shared servicers from
:mod:`dnntune.servicers` on a server from :mod:`dnntune.serving`.

Example:
    >>> # running = create_server(ServerOptions(port=0)); print(running.port)
"""

from __future__ import annotations

import threading

from dnntune.serving import RunningServer, ServerOptions

__all__ = ["RunningServer", "ServerOptions", "create_server"]


def create_server(options: ServerOptions, upload_dir: str | None = None) -> RunningServer:
    """Start a cloud server (Profiler + Cloud services, health) and return it running."""
    from dnntune.instrument import configure_runtime
    from dnntune.modelstore import ModelStore
    from dnntune.protocol import load_protocol
    from dnntune.servicers import CloudServicer, ProfilerServicer, ServerState

    options.validate()
    runtime = configure_runtime(options.num_threads)
    pb2, services = load_protocol()
    state = ServerState(pb2=pb2, store=ModelStore(upload_dir), side="cloud",
                        num_threads=int(runtime["intra_op"]),
                        max_tensor_bytes=options.max_tensor_mb << 20,
                        profile_lock=threading.Lock())

    def register(server: object) -> list[str]:
        services.add_ProfilerServicer_to_server(ProfilerServicer(state), server)
        services.add_CloudServicer_to_server(CloudServicer(state), server)
        return ["dnntune.v1.Profiler", "dnntune.v1.Cloud"]

    from dnntune.serving import build_server

    return build_server(options, register)
