"""N concurrent worst-case requests against a real `dnntune serve` with its memory budget.

Each request is a Describe of ResNet-50 at a shape whose estimate is just under the
server's --max-request-memory-mb, every one at a shape no cache holds (one pixel apart),
so each would build and calibrate a model of several GB. The server's peak resident
memory is sampled every 50 ms and compared with the budget (the baseline: the server's
own limit, in the same run), and a health check is timed every 200 ms throughout.

    .venv/bin/python benchmarks/bench_budget.py [--requests 8] [--budget-mb 0]
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dnntune.model.loading import load_model
from dnntune.model.memory import estimate_memory
from dnntune.rpc.limits import default_request_memory_mb
from dnntune.rpc.protocol import load_protocol


def side_just_under(budget_mb: int) -> int:
    graph = load_model("resnet50", calibrate=False).graph
    side = 224
    while estimate_memory(graph, (side + 8, side + 8, 3)).peak_bytes < budget_mb * 0.97 * 2**20:
        side += 8
    return side


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--budget-mb", type=int, default=0)
    args = parser.parse_args()
    budget_mb = args.budget_mb or default_request_memory_mb()
    side = side_just_under(budget_mb)
    server = subprocess.Popen([sys.executable, "-m", "dnntune", "serve", "--port", "0",
                               "--max-request-memory-mb", str(budget_mb)],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    match = re.search(r"listening on (\S+)", server.stdout.readline())
    assert match, "the server did not start"
    address = match.group(1)
    proc = psutil.Process(server.pid)
    base_mb = proc.memory_info().rss / 2**20
    peak = [base_mb]
    health_ms: list[float] = []
    done = threading.Event()

    def sample() -> None:
        with grpc.insecure_channel(address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            last = 0.0
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
                if time.monotonic() - last > 0.2:
                    t = time.perf_counter()
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    health_ms.append((time.perf_counter() - t) * 1e3)
                    last = time.monotonic()
                time.sleep(0.05)

    pb2, _ = load_protocol()

    def describe(i: int) -> str:
        with grpc.insecure_channel(address) as ch:
            call = ch.unary_unary("/dnntune.v1.Profiler/Describe",
                                  request_serializer=pb2.DescribeRequest.SerializeToString,
                                  response_deserializer=pb2.ModelDescription.FromString)
            spec = pb2.ModelSpec(zoo_name="resnet50", input_shape=[side - i, side - i, 3])
            try:
                call(pb2.DescribeRequest(model=spec), timeout=900)
                return "OK"
            except grpc.RpcError as exc:
                return exc.code().name
    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(args.requests) as pool:
        codes = list(pool.map(describe, range(args.requests)))
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    server.terminate()
    server.wait(60)
    estimate_mb = estimate_memory(load_model("resnet50", calibrate=False).graph,
                                  (side, side, 3)).peak_bytes / 2**20
    print(f"budget {budget_mb:,} MiB; each request: resnet50 at about {side}x{side}x3, "
          f"estimate {estimate_mb:,.0f} MiB; {args.requests} at once, {elapsed:.1f} s")
    print(f"answers: {', '.join(f'{c} x{codes.count(c)}' for c in sorted(set(codes)))}")
    growth = peak[0] - base_mb
    print(f"server RSS: {base_mb:,.0f} MiB idle, peak {peak[0]:,.0f} MiB (+{growth:,.0f}); "
          f"peak growth / budget = {growth / budget_mb:.2f}")
    print(f"health: {len(health_ms)} checks, max {max(health_ms):.1f} ms, "
          f"median {sorted(health_ms)[len(health_ms) // 2]:.1f} ms")
    return 0 if growth <= budget_mb and max(health_ms) < 1000 and not math.isnan(growth) else 1


if __name__ == "__main__":
    sys.exit(main())
