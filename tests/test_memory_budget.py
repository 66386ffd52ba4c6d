"""Every request's memory is bounded before work starts (issues 26 and 27): a real
`dnntune serve` refuses a model it could not hold before building it, and the calls in
progress together stay within the budget."""

from __future__ import annotations

import math
import time

import grpc
import psutil
import pytest

from dnntune.model.loading import load_model
from dnntune.model.memory import MemoryEstimate, estimate_memory
from dnntune.rpc.budget import MemoryBudget
from dnntune.rpc.limits import LimitError
from tests.proto_stubs import Protocol
from tests.test_protocol import serve, status


@pytest.fixture(scope="module")
def proto(tmp_path_factory):
    return Protocol(tmp_path_factory.mktemp("proto"))


@pytest.fixture(scope="module")
def default_server(tmp_path_factory, proto):
    """A server with its default budget (40 % of this machine's memory)."""
    with serve(tmp_path_factory.mktemp("server")) as (proc, address), \
            grpc.insecure_channel(address) as channel:
        yield proc, proto.stub(channel, "Profiler"), proto.stub(channel, "Cloud")


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def test_a_run_tail_header_at_a_huge_uncached_shape_is_refused_before_building(
        default_server, proto):
    proc, _, cloud = default_server
    before = rss_mb(proc.pid)
    started = time.monotonic()
    # ~100 bytes that asked for 10.8 GB before: MobileNetV2 at 832x832, inside
    # --max-input-elements, at a shape no cache holds.
    header = proto.TailHeader(model=proto.ModelSpec(zoo_name="mobilenet_v2",
                                                    input_shape=[832, 832, 3]), cut_index=3)
    # With no tensor after it, the header is refused before anything is estimated.
    code, details = status(cloud.RunTail, iter([proto.TailRequest(header=header)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "no crossing tensors followed the header" in details
    # With its first crossing tensor's header chunk, the memory budget refuses it.
    chunk = proto.TensorChunk(name="Conv1:0", dtype="float32", shape=[1, 416, 416, 32],
                              total_bytes=416 * 416 * 32 * 4)
    code, details = status(cloud.RunTail, iter([proto.TailRequest(header=header),
                                                proto.TailRequest(tensor=chunk)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "--max-request-memory-mb" in details and "MiB" in details, details
    assert time.monotonic() - started < 60
    # Only the layer graph at MobileNetV2's own shape was built to estimate it.
    assert rss_mb(proc.pid) - before < 1500, (before, rss_mb(proc.pid))


def test_vgg16_described_at_448_is_refused_before_building(default_server, proto):
    proc, profiler, _ = default_server
    before = rss_mb(proc.pid)
    spec = proto.ModelSpec(zoo_name="vgg16", input_shape=[448, 448, 3])
    for call, request in ((profiler.Describe, proto.DescribeRequest(model=spec)),
                          (profiler.Profile, proto.ProfileRequest(model=spec, num_runs=1))):
        code, details = status(call, request)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert "vgg16" in details and "weights" in details, details
    assert rss_mb(proc.pid) - before < 3000, (before, rss_mb(proc.pid))
    assert proc.poll() is None


def test_a_request_just_under_the_budget_succeeds_and_just_over_is_refused(
        tmp_path, proto):
    need_mb = estimate_memory(load_model("tiny_mlp", calibrate=False).graph).peak_bytes / 2**20
    spec = proto.ModelSpec(zoo_name="tiny_mlp")
    for budget_mb, ok in ((math.ceil(need_mb) + 1, True), (math.floor(need_mb) - 1, False)):
        with serve(tmp_path, "--max-request-memory-mb", str(budget_mb)) as (_, address), \
                grpc.insecure_channel(address) as channel:
            code, details = status(proto.stub(channel, "Profiler").Describe,
                                   proto.DescribeRequest(model=spec))
        assert (code == grpc.StatusCode.OK) == ok, (budget_mb, need_mb, code, details)
        if not ok:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"{budget_mb:,} MiB (--max-request-memory-mb)" in details, details


def test_the_calls_in_progress_together_stay_within_the_budget():
    budget = MemoryBudget(100 << 20)
    sixty = MemoryEstimate(0, 0, 60 << 20)
    with budget.reserve(sixty, "first"):
        assert budget.held_bytes == 60 << 20
        with pytest.raises(LimitError, match="calls in progress hold 60 MiB"), \
                budget.reserve(sixty, "second"):
            pass
        with budget.reserve(MemoryEstimate(0, 0, 40 << 20), "third"):
            assert budget.held_bytes == 100 << 20
    assert budget.held_bytes == 0
    with budget.reserve(sixty, "second, later"):
        pass
    with pytest.raises(LimitError, match="limit is 100 MiB"), \
            budget.reserve(MemoryEstimate(0, 0, 101 << 20), "alone too big"):
        pass
    assert budget.held_bytes == 0
