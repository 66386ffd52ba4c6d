"""TensorFlow graphs through the servers (issue 24): a frozen ``.pb`` and a SavedModel
uploaded to a real cloud server on loopback, described, profiled and split there; the
refusals of bad uploads and bad names; ``dnntune validate`` on a graph end to end.

The graphs are made here from a tiny Keras model by TensorFlow's own freezing
(``convert_variables_to_constants_v2``) and ``tf.saved_model.save``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from cloud_server import create_server
from dnntune.errors import DnntuneError
from dnntune.rpc.client import Endpoint, ProfilerClient, model_spec
from dnntune.rpc.serving import ServerOptions
from tests.conftest import assert_one_line_error, run_cli
from tests.test_tf_graph import graphs  # noqa: F401 - the module-scoped graph fixture


@pytest.fixture(scope="module")
def server():
    running = create_server(ServerOptions(port=0))
    client = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}"))
    yield running, client
    client.close()
    running.stop(0)


def _status(fn) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def _upload_pb(client, pb, query: str = ""):
    client.upload_file(pb)
    return model_spec(client.pb2, str(pb) + query)


def test_remote_graph_is_the_local_graph_and_its_profile_lists_the_same_layers(server, graphs):  # noqa: F811
    from dnntune.model.cuts import enumerate_cuts
    from dnntune.model.loading import load_model

    _, client = server
    _, pb, _ = graphs
    spec = _upload_pb(client, pb, "?input=image&depth=2")
    assert spec.graph_inputs == ["image"] and spec.graph_depth == 0  # 0 = the default 2
    local = load_model(str(pb) + "?input=image")
    described = client.describe(spec)
    assert [layer.name for layer in described.layers] == list(local.graph.layer_names)
    assert [c.bytes_up for c in described.cuts] == [c.bytes_up
                                                   for c in enumerate_cuts(local.graph)]
    assert list(described.identity.graph_inputs) == ["image"]
    remote = client.profile(spec, num_runs=3, warmup_runs=1, energy="none")
    assert list(remote.layer_names) == list(local.graph.layer_names)
    assert remote.meta.model_hash == local.model.fingerprint()
    assert all(layer.latency.mean_ms >= 0 for layer in remote.layers)


@pytest.mark.parametrize("cut", [1, 4, 8])
def test_remote_tails_finish_the_local_heads_exactly(server, graphs, cut):  # noqa: F811
    from dnntune.model.loading import load_model
    from dnntune.model.split import Splitter

    _, client = server
    _, pb, _ = graphs
    spec = _upload_pb(client, pb)
    local = load_model(str(pb))
    split = Splitter(local.model, local.graph).split(cut)
    x = local.example_inputs()
    held = split.run_head(x)
    outputs, timing = client.run_tail(spec, cut, [(n, held[n]) for n in split.tail_inputs])
    expected = local.model(x)[0]
    np.testing.assert_allclose(outputs[split.tail_outputs[0]], expected, rtol=1e-5, atol=1e-6)
    assert timing.compute_ms > 0


def test_a_saved_model_is_frozen_once_and_is_the_same_model_on_both_sides(
        server, graphs, tmp_path, monkeypatch):  # noqa: F811
    from dnntune.model.graph_files import upload_spec
    from dnntune.model.loading import load_model

    monkeypatch.setenv("DNNTUNE_CACHE_DIR", str(tmp_path / "cache"))
    _, client = server
    _, _, saved = graphs
    text, name = upload_spec(str(saved))
    frozen = Path(text.split("?")[0])
    first = (frozen.read_bytes(), frozen.stat().st_mtime_ns)
    again, _ = upload_spec(str(saved))  # the cached file: not frozen (or written) again
    assert text == again and name == "tiny_block_saved" and ".pb?input=" in text
    assert (frozen.read_bytes(), frozen.stat().st_mtime_ns) == first
    # Names the spec gives win over the signature's, from the cache as when frozen.
    named, _ = upload_spec(f"{saved}?output=Identity")
    assert named.startswith(f"{frozen}?input=") and named.endswith("&output=Identity")
    local = load_model(str(saved))  # read from the folder itself, frozen in memory
    client.upload_file(text)
    spec = model_spec(client.pb2, text, name=name)
    described = client.describe(spec)
    assert [layer.name for layer in described.layers] == list(local.graph.layer_names)
    remote = client.profile(spec, num_runs=2, warmup_runs=0, energy="none")
    assert remote.meta.model_hash == local.model.fingerprint()
    assert remote.meta.model_name == "tiny_block_saved"


def test_bad_uploads_and_names_are_refused_and_the_server_keeps_serving(server, graphs):  # noqa: F811
    _, client = server
    _, pb, _ = graphs
    pb2 = client.pb2
    junk = b"\xff\xfe not a graph \x00" * 10
    digest = hashlib.sha256(junk).hexdigest()
    code, detail = _status(lambda: client.profiler.UploadModel(iter([pb2.ModelChunk(
        sha256=digest, suffix=".pb", total_bytes=len(junk), data=junk)]), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "GraphDef" in detail, detail
    assert not client.profiler.HasModel(pb2.ModelRef(sha256=digest), timeout=10).cached
    spec = _upload_pb(client, pb)
    for field in ("graph_inputs", "graph_outputs"):
        bad = pb2.ModelSpec()
        bad.CopyFrom(spec)
        getattr(bad, field).append("no_such_op")
        code, detail = _status(lambda b=bad: client.profiler.Describe(
            pb2.DescribeRequest(model=b), timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, detail)
        assert f"ModelSpec.{field}" in detail and "no_such_op" in detail, detail
        assert "/" not in detail.split("no_such_op")[1], detail  # no server path
    zoo = pb2.ModelSpec(zoo_name="tiny_mlp", graph_depth=3)
    code, detail = _status(lambda: client.profiler.Describe(pb2.DescribeRequest(model=zoo),
                                                            timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "graph_depth" in detail, detail
    # A tail read at another depth is another model: its head's tensors do not fit.
    head = pb2.ModelIdentity(sha256=spec.sha256, graph_depth=1)
    with pytest.raises(DnntuneError, match="FAILED_PRECONDITION|come from"):
        client.run_tail(spec, 1, [("image:0", np.zeros((1, 8, 8, 3), np.float32))],
                        head=head)
    assert len(client.describe(spec).layers) == 9  # still serving


def test_validate_a_frozen_graph_at_three_cuts(graphs, tmp_path):  # noqa: F811
    _, pb, _ = graphs
    result = run_cli(["validate", "--model", f"{pb}?input=image", "--links", "wifi",
                      "--cuts", "0,4,9", "--num_runs", "2", "--profile-runs", "3",
                      "--emulate", "none", "--format", "json"])
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert doc["model"] == "tiny_block"
    cuts = doc["links"][0]["cuts"]
    assert [c["index"] for c in cuts] == [0, 4, 9]
    assert max(c["max_abs_error"] for c in cuts) < 1e-5  # the split equals the whole graph
    assert all(c["measured_ms"] > 0 for c in cuts)


def test_cli_profiles_a_saved_model_on_a_server_and_refuses_bad_names_first(
        server, graphs):  # noqa: F811
    from dnntune.model.loading import load_model

    running, _ = server
    _, pb, saved = graphs
    result = run_cli(["profile", "--model", str(saved), "--side", "cloud", "--cloud",
                      f"127.0.0.1:{running.port}", "--num_runs", "2", "--energy", "none",
                      "--no-store", "--format", "json"])
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    local = load_model(str(saved))
    assert [layer["name"] for layer in doc["layers"]] == list(local.graph.layer_names)
    assert doc["meta"]["model_hash"] == local.model.fingerprint()
    assert_one_line_error(run_cli(["validate", "--model", f"{pb}?input=nope",
                                   "--links", "wifi"]), "input=nope", "no op 'nope'")


def test_upload_spec_checks_the_dtype_and_keeps_how_to_read_the_graph(graphs, tmp_path):  # noqa: F811
    from dnntune.model.graph_files import upload_spec

    _, pb, saved = graphs
    corrupt = tmp_path / "corrupt.pb"
    corrupt.write_bytes(b"\xff" * 64)
    with pytest.raises(DnntuneError, match="not a TensorFlow GraphDef"):
        upload_spec(str(corrupt))
    with pytest.raises(DnntuneError, match="is float32, not dtype=int32"):
        upload_spec(f"{pb}?dtype=int32")
    with pytest.raises(DnntuneError, match="is float32, not dtype=int8"):
        upload_spec(f"{saved}?dtype=int8")  # a SavedModel: checked on its frozen graph
    text, name = upload_spec(f"{pb}?input=image&dtype=float32&depth=3&fold=1")
    assert text == f"{pb}?input=image&depth=3&fold=1" and name == "tiny_block"


def test_analyze_profiles_a_graph_on_servers(server, graphs, tmp_path):  # noqa: F811
    """Both sides profiled through a server (the default config's wire encodings fall
    back to float32 for a graph, with a note); fold=1 travels in ModelSpec.graph_fold."""
    from dnntune.model.loading import load_model
    from dnntune.profiling.profile import load_profile

    running, _ = server
    _, pb, _ = graphs
    out = tmp_path / "run"
    address = f"127.0.0.1:{running.port}"  # the cloud server profiles for either side
    result = run_cli(["analyze", "--model", f"{pb}?input=image&fold=1", "--links", "wifi",
                      "--device", address, "--cloud", address, "--num_runs", "3",
                      "--allow-side-mismatch", "--no-store", "--no-plots", "--out",
                      str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Keras models only" in result.stderr  # the wire note
    folded = load_model(f"{pb}?input=image&fold=1")
    for side in ("device", "cloud"):
        profile = load_profile(out / f"{side}.json")
        assert list(profile.layer_names) == list(folded.graph.layer_names)
        assert profile.meta.model_name == "tiny_block"
    assert len(folded.graph.layer_names) < 9  # folded: fewer layers than the 9 scopes
    assert (out / "analysis.json").is_file()
