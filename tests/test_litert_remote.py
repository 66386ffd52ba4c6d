"""LiteRT profiles through the device agent: ProfileRequest.framework litert on a real
agent on loopback, its refusals, and validate --framework litert predicting from it."""

from __future__ import annotations

import json

import grpc
import pytest

from cloud_server import create_server as create_cloud
from device_agent import create_server as create_agent
from dnntune.errors import DnntuneError
from dnntune.rpc.client import Endpoint, ProfilerClient, model_spec
from dnntune.rpc.serving import ServerOptions
from tests.conftest import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A cloud server and a device agent on loopback, tiny_resnet held by both, and the
    model's layer map as `dnntune convert` builds it."""
    from dnntune.litert.heads import layer_map_of
    from dnntune.model.loading import load_model

    path = tmp_path_factory.mktemp("model") / "tiny_resnet.keras"
    load_model("tiny_resnet").model.save(path)
    loaded = load_model(str(path))
    cloud = create_cloud(ServerOptions(port=0))
    agent = create_agent(ServerOptions(port=0), Endpoint(f"127.0.0.1:{cloud.port}"))
    client = ProfilerClient(Endpoint(f"127.0.0.1:{agent.port}"))
    cloud_client = ProfilerClient(Endpoint(f"127.0.0.1:{cloud.port}"))
    client.upload_file(path)
    cloud_client.upload_file(path)
    client.model_path = str(path)  # for the command-line test
    yield client, cloud_client, model_spec(client.pb2, str(path)), loaded, layer_map_of(loaded)
    client.close()
    cloud_client.close()
    agent.stop(0)
    cloud.stop(0)


def test_remote_litert_profile_has_the_local_format_at_the_requested_cuts(servers):
    from dnntune.litert.profile import LiteRTSettings, profile_litert

    client, _, spec, loaded, layer_map = servers
    last = len(loaded.graph.layers)
    inner = [c for c in layer_map.surviving if 1 < c < last]
    wanted = [inner[0], inner[len(inner) // 2]]
    stages = []
    remote = client.profile(spec, 3, 1, "none", framework="litert", cuts=wanted,
                            progress=lambda stage, done, total: stages.append(stage))
    local = profile_litert(loaded, LiteRTSettings(cuts=",".join(map(str, wanted)),
                                                  num_runs=3, warmup_runs=1, energy="none"))
    assert remote.measured_cuts is not None and local.measured_cuts is not None
    assert remote.measured_cuts.indices == local.measured_cuts.indices == (0, 1, *wanted, last)
    assert set(remote.to_dict()) == set(local.to_dict())  # the same document, schema v2
    for r, m in zip(remote.measured_cuts.cuts, local.measured_cuts.cuts, strict=True):
        assert (r.index, r.after, r.bytes_up) == (m.index, m.after, m.bytes_up)
        assert (r.head.n > 0) == (r.index > 1)  # heads ran where layers run
    assert remote.measured_cuts.framework == local.measured_cuts.framework
    assert remote.meta.emulation is None  # an agent without --emulate measures as it is
    assert "heads" in stages


@pytest.mark.parametrize(("fields", "needle"), [
    ({"framework": "onnx"}, "ProfileRequest.framework must be tf or litert"),
    ({"framework": "litert", "cuts": [9999]}, "ProfileRequest.cuts: cut 9999 out of range"),
    ({"framework": "litert", "cuts": [-1]}, "ProfileRequest.cuts: cut -1 is negative"),
    ({"framework": "litert", "precision": "int4"}, "ProfileRequest.precision must be"),
    ({"cuts": [3]}, "go with framework litert"),
    ({"framework": "litert", "cuts": list(range(2000))}, "at most 1024"),
])
def test_bad_litert_fields_are_invalid_argument_and_the_agent_keeps_serving(
        servers, fields, needle):
    client, _, spec, _, _ = servers
    request = client.pb2.ProfileRequest(model=spec, num_runs=2, **fields)
    with pytest.raises(grpc.RpcError) as err:
        list(client.profiler.Profile(request, timeout=300))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details() and "\n" not in err.value.details()
    assert client.describe(spec).cuts  # still serving


def test_a_cut_litert_fuses_away_is_refused_naming_the_field_and_why(servers):
    client, _, spec, _, layer_map = servers
    gone = layer_map.fused_away[0]
    with pytest.raises(DnntuneError) as err:
        client.profile(spec, 2, 0, "none", framework="litert", cuts=[gone.index])
    text = str(err.value)
    assert "INVALID_ARGUMENT" in text and "ProfileRequest.cuts" in text
    assert f"cut {gone.index}" in text and "does not exist in LiteRT" in text
    # and the agent profiles LiteRT heads after it (the default spread of cuts)
    assert client.profile(spec, 2, 0, "none", framework="litert").measured_cuts


def test_a_cloud_server_profiles_no_litert(servers):
    _, cloud_client, spec, _, _ = servers
    with pytest.raises(DnntuneError, match="INVALID_ARGUMENT.*profiles no LiteRT"):
        cloud_client.profile(spec, 2, 0, "none", framework="litert")
    assert cloud_client.profile(spec, 2, 0, "none").layers  # still serving


def test_validate_litert_predicts_from_the_litert_profile(tmp_path):
    """validate --framework litert: the device profiled in LiteRT at the validated cuts,
    the predictions from that profile (mobile-only Tm = its whole-model head), and the
    report says which profile predicted."""
    out = tmp_path / "val"
    result = run_cli(["validate", "--model", "tiny_resnet", "--links", "wifi", "--cuts",
                      "spread:4", "--framework", "litert", "--emulate", "none",
                      "--num_runs", "1", "--profile-runs", "3", "--out", str(out),
                      "--format", "json"])
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert doc["predicted_from"] == "litert"
    assert "LiteRT profile" in doc["predicted_note"]
    profile = json.loads((out / "device-litert.json").read_text())
    heads = {c["index"]: c["head"]["mean_ms"] for c in profile["measured_cuts"]["cuts"]}
    cuts = doc["links"][0]["cuts"]
    assert [c["index"] for c in cuts] == sorted(heads)  # every profiled cut ran
    last = max(heads)
    mobile_only = next(c for c in cuts if c["index"] == last)
    assert mobile_only["predicted_tm_ms"] == pytest.approx(heads[last], rel=1e-9)
    assert mobile_only["predicted_tt_ms"] == 0.0
    for c in cuts:
        assert c["predicted_tm_ms"] == pytest.approx(heads[c["index"]], rel=1e-9)
        assert c["max_abs_error"] < 1e-4  # LiteRT heads, TensorFlow tails


def test_cli_profile_litert_on_a_device_agent(servers):
    """`dnntune profile --framework litert --device HOST:PORT`: the agent's profile, the
    local command's format; a fused-away cut is one line naming --cuts, exit 2."""
    client, _, _, _, layer_map = servers
    cut = layer_map.surviving[len(layer_map.surviving) // 2]
    base = ["profile", "--model", client.model_path, "--framework", "litert", "--device",
            client.endpoint.address, "--num_runs", "2", "--warmup_runs", "0",
            "--energy", "none"]
    result = run_cli([*base, "--cuts", str(cut), "--format", "json"])
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert cut in [c["index"] for c in doc["measured_cuts"]["cuts"]]
    assert doc["measured_cuts"]["framework"].startswith("ai-edge-litert")
    assert_one_line_error(run_cli([*base, "--cuts", str(layer_map.fused_away[0].index)]),
                          "--cuts", "does not exist in LiteRT")
