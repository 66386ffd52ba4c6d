"""What the gRPC tensor path itself costs, for the cost model's RPC terms.

:func:`dnntune.rpc.client.calibrate_rpc` times the Echo RPC of a given server. Against
a device agent confined to an emulated phone's CPU share, that measures the harness
stretched by the phone's factor, which no phone pays. :func:`measure_loopback_rpc`
measures the same path (the same encoder, assembler and servicer as RunTail) in this
process, unconfined: a Cloud service on a loopback port of its own, for as long as the
measurement takes. It configures no TensorFlow and builds no model.
"""

from __future__ import annotations

import threading
from typing import Any


def measure_loopback_rpc(repeats: int = 7) -> tuple[float, float]:
    """``(rpc_ms, rpc_ms_per_mb)`` of the gRPC tensor path on loopback, in this process.

    The fixed cost of one call (tensors there and back) and the cost of each MB sent or
    received: what ``CostOptions.rpc_ms`` and ``rpc_ms_per_mb`` mean.

    Example:
        >>> rpc_ms, rpc_ms_per_mb = measure_loopback_rpc()  # doctest: +SKIP
    """
    from dnntune.rpc.client import Endpoint, ProfilerClient, calibrate_rpc
    from dnntune.rpc.servicers import CloudServicer, add_cloud_servicer
    from dnntune.rpc.serving import ServerOptions, build_server

    options = ServerOptions(host="127.0.0.1", port=0, grace_s=0)
    state = loopback_state(options)

    def register(server: Any) -> list[str]:
        add_cloud_servicer(state.pb2, CloudServicer(state), server)
        return ["dnntune.v1.Cloud"]

    try:
        running = build_server(options, register)
        try:
            client = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}",
                                             max_message_mb=options.max_message_mb))
            try:
                return calibrate_rpc(client, repeats=repeats)
            finally:
                client.close()
        finally:
            running.stop(0)
    finally:
        state.store.close()


def loopback_state(options: Any = None) -> Any:
    """A cloud servicer's state that builds no model and configures no TensorFlow
    (a ``ServerState``; close its ``store`` when done)."""
    from dnntune.rpc.budget import MemoryBudget
    from dnntune.rpc.gate import ComputeGate
    from dnntune.rpc.modelstore import ModelStore
    from dnntune.rpc.protocol import load_protocol
    from dnntune.rpc.servicers import ServerState
    from dnntune.rpc.serving import ServerOptions

    limits = (options or ServerOptions(port=0)).limits()
    pb2, _ = load_protocol()
    return ServerState(pb2=pb2, store=ModelStore(None, 1, limits), side="cloud",
                       num_threads=1, limits=limits, profile_lock=threading.Lock(),
                       gate=ComputeGate(), budget=MemoryBudget(limits.max_request_bytes))
