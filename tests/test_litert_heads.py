"""Heads in the phone's runtime: RunSplit with framework litert runs the head as a LiteRT
model of the cut on a real agent, the tail on a real cloud server; held on an emulated
phone for what its profile says."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from cloud_server import create_server as create_cloud
from device_agent import create_server as create_agent
from dnntune.errors import DnntuneError
from dnntune.rpc.client import Endpoint, ProfilerClient, model_spec
from dnntune.rpc.serving import ServerOptions
from tests.conftest import REPO


@pytest.fixture(scope="module")
def agent_and_model(tmp_path_factory):
    """A cloud server and a device agent on loopback, and a tiny model both hold."""
    from dnntune.litert.heads import layer_map_of
    from dnntune.model.loading import load_model

    loaded = load_model("tiny_resnet")
    path = tmp_path_factory.mktemp("model") / "tiny_resnet.keras"
    loaded.model.save(path)
    layer_map = layer_map_of(load_model(str(path)))
    cloud = create_cloud(ServerOptions(port=0))
    agent = create_agent(ServerOptions(port=0), Endpoint(f"127.0.0.1:{cloud.port}"))
    client = ProfilerClient(Endpoint(f"127.0.0.1:{agent.port}"))
    client.upload_file(path)
    yield client, model_spec(client.pb2, str(path)), layer_map
    client.close()
    agent.stop(0)
    cloud.stop(0)


def split_request(client, spec, cut, framework="litert"):
    return client.pb2.SplitRequest(model=spec, cut_index=cut, num_runs=3, warmup_runs=1,
                                   framework=framework)


def test_litert_head_and_tf_tail_equal_the_unsplit_model(agent_and_model):
    client, spec, layer_map = agent_and_model
    inner = [c for c in layer_map.surviving if 1 < c < len(layer_map.cuts) - 1]
    assert inner, layer_map.to_dict()["cuts"]
    for cut in (inner[len(inner) // 2], len(layer_map.cuts) - 1):  # a split, mobile-only
        reply = client.call(client.device.RunSplit, split_request(client, spec, cut),
                            timeout_s=300)
        assert len(reply.runs) == 3 and all(r.head_ms > 0 for r in reply.runs)
        # LiteRT's kernels (XNNPACK) are not TensorFlow's: equal within float tolerance
        assert reply.max_abs_error < 1e-4, (cut, reply.max_abs_error)
    tf = client.call(client.device.RunSplit, split_request(client, spec, inner[0], ""))
    assert tf.max_abs_error < 1e-4


def test_a_cut_litert_fuses_away_and_a_bad_framework_are_one_line(agent_and_model):
    client, spec, layer_map = agent_and_model
    gone = layer_map.fused_away
    assert gone, "tiny_resnet has BatchNorm folded into its convolutions"
    with pytest.raises(DnntuneError) as err:
        client.call(client.device.RunSplit, split_request(client, spec, gone[0].index),
                    timeout_s=300)
    text = str(err.value)
    assert "INVALID_ARGUMENT" in text and "does not exist in LiteRT" in text
    assert "\n" not in text
    with pytest.raises(DnntuneError, match="SplitRequest.framework must be tf or litert"):
        client.call(client.device.RunSplit, split_request(client, spec, 1, "onnx"))
    assert client.call(client.device.RunSplit, split_request(client, spec, 1)).runs


HELD_LITERT_HEAD = """
import json
import numpy as np
from dnntune.profiling.dilation import DilatedDevice, raise_priority
raise_priority()
from dnntune.profiling.instrument import configure_runtime
configure_runtime(1)
from dnntune.litert.heads import LiteRTPhone, layer_map_of, prepare_litert_split
from dnntune.litert.profile import time_litert
from dnntune.model.loading import load_model
from dnntune.model.split import Splitter
from dnntune.rpc.splitrun import run_split

phone = LiteRTPhone(DilatedDevice("dnntune_phone"), threads=1)
loaded = load_model("mobilenet_v2", [(128, 128, 3)])
layer_map = layer_map_of(loaded)
cut = len(layer_map.cuts) - 1  # the whole model as the head: mobile-only, no cloud
lite = prepare_litert_split(loaded, Splitter(loaded.model, loaded.graph).split(cut),
                            layer_map, threads=1)
phone.prepare()
phone.refresh()  # as the agent does before a batch of split runs
# the head's profile on the phone, as `dnntune profile --framework litert --device` times
# a head on an emulated agent (warm-up, then invoke() runs, the reference after each;
# runs a neighbour slowed dropped), dilated by the reference's LiteRT time
stats = phone.time_head(lite.head.it, loaded.example_inputs(), 5, 30)
predicted = stats.mean_ms
held = run_split(loaded, lite, None, None, num_runs=15, warmup_runs=2, hold=phone.hold,
                 pace=phone.pace)
print(json.dumps({"cut": cut, "factor": phone.factor, "predicted": predicted,
                  "held": sorted(r.head_ms for r in held.runs),
                  "native": float(np.median(time_litert(lite.head.it, loaded.example_inputs(),
                                                        2, 10)))}))
"""


def test_held_litert_head_takes_what_its_dilated_profile_says():
    """A LiteRT head of a small model (MobileNetV2 at 128x128, as the TensorFlow head's
    test: a few ms natively; mobile-only, as that test), in a process of its own as an
    agent runs it: its held time against its LiteRT profile dilated to the phone (the
    reference in LiteRT = the preset's latency), within the ±10 % band."""
    tries = []
    for _ in range(2):  # a second, fresh measurement when a busy host spoiled the first
        done = subprocess.run([sys.executable, "-c", HELD_LITERT_HEAD], capture_output=True,
                              text=True, cwd=REPO, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        measured = result["held"][len(result["held"]) // 2]
        tries.append((measured / result["predicted"], result))
        if abs(tries[-1][0] - 1.0) <= 0.10:
            break
    ratio, result = min(tries, key=lambda t: abs(t[0] - 1.0))
    assert ratio == pytest.approx(1.0, abs=0.10), tries
    assert result["native"] < result["held"][len(result["held"]) // 2] / 1.2  # held


def test_validate_refuses_litert_heads_in_process(tmp_path):
    from tests.conftest import assert_one_line_error, run_cli

    assert_one_line_error(run_cli(["validate", "--model", "tiny_mlp", "--shaper", "tbf",
                                   "--emulate", "none", "--framework", "litert"],
                                  cwd=tmp_path), "--framework litert", "--shaper proxy")


def test_grpc_status_of_a_litert_refusal_is_invalid_argument(agent_and_model):
    client, spec, layer_map = agent_and_model
    with pytest.raises(grpc.RpcError) as err:
        client.device.RunSplit(split_request(client, spec, layer_map.fused_away[0].index),
                               timeout=300)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
