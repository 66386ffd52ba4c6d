"""The dnntune cloud server (gRPC): profiles layers and runs model tails for split inference.

Thin wiring only: :func:`create_server` builds the shared servicers from
:mod:`dnntune.rpc.servicers` on a server from :mod:`dnntune.rpc.serving`.

Example:
    >>> # running = create_server(ServerOptions(port=0)); print(running.port)
"""

from __future__ import annotations

from collections.abc import Sequence

from dnntune.rpc.serving import RunningServer, ServerOptions

__all__ = ["RunningServer", "ServerOptions", "create_server"]


def create_server(options: ServerOptions, upload_dir: str | None = None,
                  models: Sequence[tuple[str, Sequence[int]]] = ()) -> RunningServer:
    """Start a cloud server (Profiler + Cloud services, health) and return it running.

    ``models`` are model files the operator serves (``serve --bundle``) with the cuts to
    prepare: stored as if uploaded, by sha256, never evicted, loaded and each cut's tail
    run once before the server listens.
    """
    from dnntune.rpc.servicers import (
        CloudServicer,
        ProfilerServicer,
        add_cloud_servicer,
        make_state,
    )
    from dnntune.rpc.serving import build_server

    state, services = make_state("cloud", options, upload_dir)
    try:
        for path, cuts in models:
            state.store.prepare(state.store.pin(path), cuts)
        if options.bulk_port is not None:
            from dnntune.rpc.bulk import BulkListener

            tls = (options.tls_cert, options.tls_key) if options.tls_cert and options.tls_key \
                else None
            state.bulk = BulkListener(options.host, options.bulk_port,
                                      options.max_concurrent_rpcs,
                                      options.max_message_mb << 20,
                                      state.limits.max_call_bytes, tls)
    except BaseException:
        state.store.close()
        raise

    cloud = CloudServicer(state)
    if state.bulk is not None:
        state.bulk.handler = cloud.bulk_call

    def register(server: object) -> list[str]:
        services.add_ProfilerServicer_to_server(ProfilerServicer(state), server)
        add_cloud_servicer(state.pb2, cloud, server)
        return ["dnntune.v1.Profiler", "dnntune.v1.Cloud"]

    try:
        running = build_server(options, register)
    except BaseException:
        state.store.close()
        if state.bulk is not None:
            state.bulk.close()
        raise
    if state.bulk is not None:  # its calls hold the server's call slots, as gRPC calls do
        state.slots = running.slots
        running.bulk_port = state.bulk.port
        running.on_stop.insert(0, state.bulk.close)
    running.on_stop.append(state.store.close)  # a temporary upload folder goes with it
    return running
