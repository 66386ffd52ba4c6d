"""Tensor transfer over gRPC on loopback against a raw TCP socket, in the same run.

For 0.1, 1 and 5 MB payloads: the round-trip time of the cloud server's Echo RPC
(chunked TensorChunk stream there and back) and of a raw-socket echo server that
sends the same bytes back; throughput counts the payload once each way.

    python benchmarks/bench_transfer.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time

import numpy as np


def raw_echo_server() -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while True:
                    header = conn.recv(8, socket.MSG_WAITALL)
                    if len(header) < 8:
                        break
                    size = int.from_bytes(header, "little")
                    data = bytearray()
                    while len(data) < size:
                        data += conn.recv(min(1 << 20, size - len(data)))
                    conn.sendall(header + data)
    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def raw_round_trip(port: int, payload: bytes, repeats: int) -> list[float]:
    times = []
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(repeats + 2):
            t0 = time.perf_counter()
            conn.sendall(len(payload).to_bytes(8, "little") + payload)
            got = conn.recv(8, socket.MSG_WAITALL)
            size = int.from_bytes(got, "little")
            received = 0
            while received < size:
                received += len(conn.recv(min(1 << 20, size - received)))
            times.append(time.perf_counter() - t0)
    return times[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    from cloud_server import create_server
    from dnntune.rpc.client import Endpoint, ProfilerClient
    from dnntune.rpc.serving import ServerOptions

    running = create_server(ServerOptions(port=0))
    client = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}"))
    listener, raw_port = raw_echo_server()
    print(f"{'payload':>8}{'gRPC RTT ms':>13}{'raw RTT ms':>12}{'ratio':>8}"
          f"{'gRPC MB/s':>11}{'raw MB/s':>10}")
    for mb in (0.1, 1.0, 5.0):
        size = int(mb * 1e6)
        tensor = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
        for _ in range(2):
            client.echo([("x", tensor)])
        grpc_times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            client.echo([("x", tensor)])
            grpc_times.append(time.perf_counter() - t0)
        raw_times = raw_round_trip(raw_port, tensor.tobytes(), args.repeats)
        g, r = statistics.median(grpc_times), statistics.median(raw_times)
        print(f"{mb:>6.1f}MB{g * 1e3:>13.2f}{r * 1e3:>12.2f}{g / r:>8.1f}"
              f"{2 * size / g / 1e6:>11.0f}{2 * size / r / 1e6:>10.0f}")
    listener.close()
    client.close()
    running.stop(0)


if __name__ == "__main__":
    main()
