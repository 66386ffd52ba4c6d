"""Issue 23: ``dnntune export`` bundles, the run-time policy, ``serve --bundle`` and the
runner (``dnntune run`` / :class:`dnntune.runtime.SplitRunner`) against real servers."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dnntune.deploy.bundle import load_bundle, sha256_file
from dnntune.deploy.policy import CutChooser, Policy, PolicyError
from dnntune.errors import DnntuneError
from dnntune.profiling.profile import save_profile
from tests.analyzer_fixtures import make_profiles
from tests.conftest import REPO, assert_one_line_error, run_cli

MODEL = "tiny_resnet"  # 21 layers; cut 20 (after pool) carries 64 bytes


@pytest.fixture(scope="module")
def loaded():
    from dnntune.model.loading import load_model

    return load_model(MODEL)


def slow_fc_profiles(loaded):
    """The real graph and hash; a phone whose last layer (fc) is very slow, so the policy
    must choose among cloud-only, the cut after pool (64 B) and never mobile-only."""
    from dnntune.model.loading import model_hash

    n = len(loaded.graph.layers)
    device_ms = [2.5] * (n - 1) + [1000.0]
    cloud_ms = [0.05] * n
    device, cloud = make_profiles(loaded.graph, device_ms, cloud_ms,
                                  device_mj=[t * 2.0 for t in device_ms], idle_power_mw=500)
    digest = model_hash(loaded.model)
    fix = {"model_hash": digest, "model_name": MODEL, "input_shapes": ((32, 32, 3),),
           "seed": loaded.seed}
    return (dataclasses.replace(device, meta=dataclasses.replace(device.meta, **fix)),
            dataclasses.replace(cloud, meta=dataclasses.replace(cloud.meta, **fix)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, loaded):
    root = tmp_path_factory.mktemp("run")
    device, cloud = slow_fc_profiles(loaded)
    save_profile(device, root / "device.json")
    save_profile(cloud, root / "cloud.json")
    (root / "analysis.json").write_text(json.dumps({
        "objective": "latency-first", "links": [{"name": "4g"}, {"name": "wifi"}],
        "options": {"radio": "warm", "idle_wait": False}}))
    return root


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, run_dir):
    out = tmp_path_factory.mktemp("bundles") / "b"
    result = run_cli(["export", str(run_dir), "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recommended latency-first on 4g" in result.stdout
    return out


def test_export_writes_a_checked_bundle(bundle_dir, loaded):
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    indices = [c.index for c in m.cuts]
    assert 0 in indices and 20 in indices and 21 in indices  # cloud-only, after pool, whole
    assert m.cut(20).crossing[0].name == "pool/Mean:0" or m.cut(20).crossing
    assert sum(t.shape[-1] * 4 for t in m.cut(20).crossing) == 64
    for name, digest in m.files.items():
        assert sha256_file(bundle_dir / name) == digest
    assert m.model_sha256 == sha256_file(bundle_dir / m.model_file)
    assert m.model["model_hash"]
    assert set(m.cut(20).predicted) == {"4g", "wifi"}
    assert m.recommended["index"] in indices
    # The policy chooses from what the bundle ships, and is small enough to embed.
    assert set(bundle.policy.cuts) <= set(indices)
    assert (bundle_dir / "policy.json").stat().st_size < 16_000
    assert (bundle_dir / "policy.png").stat().st_size > 0
    assert m.versions["ai-edge-litert"] != "not installed"


def test_exported_halves_compose_to_the_model(bundle_dir, loaded):
    """LiteRT head + Keras tail (as the server runs it) == the unsplit model."""
    from dnntune.litert.convert import interpreter
    from dnntune.litert.profile import run_litert
    from dnntune.model.split import Splitter

    bundle = load_bundle(bundle_dir)
    splitter = Splitter(loaded.model, loaded.graph)
    x = loaded.example_inputs(seed=7)
    reference = splitter.split(0).run(x)[0]
    for cut in bundle.manifest.cuts:
        assert cut.max_abs_error < 1e-4, cut
        if cut.head is None:
            continue
        outs = dict(zip(cut.head_outputs,
                        run_litert(interpreter(bundle.read(cut.head)), x), strict=True))
        split = splitter.split(cut.index)
        if split.tail is not None:
            outs.update(zip(split.tail_outputs,
                            split.run_tail([outs[t.name] for t in cut.crossing]), strict=True))
        got = outs[loaded.graph.model_outputs[0]]
        np.testing.assert_allclose(got, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("precision", "bound"), [("fp16", 2e-2), ("int8", 0.25)])
def test_reduced_precision_heads_stay_within_their_bound(tmp_path, loaded, precision, bound):
    from dnntune.analysis.costs import CostOptions
    from dnntune.analysis.links import preset_links
    from dnntune.analysis.partition import Objective
    from dnntune.deploy.export import export_bundle

    device, cloud = slow_fc_profiles(loaded)
    link = preset_links()["4g"]
    manifest = export_bundle(loaded, device, cloud, tmp_path / "b", precision=precision,
                             policy_link=link, links=[link], objective=Objective(),
                             options=CostOptions(), rtt_ms=(20.0, 100.0))
    reference = loaded.model(loaded.example_inputs()[0]).numpy()
    scale = float(np.max(np.abs(reference)))
    assert manifest.precision == precision
    for cut in manifest.cuts:
        assert cut.max_abs_error <= bound * max(scale, 1.0), (cut.index, cut.max_abs_error)


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle_dir, target)
    return target


def _rehash(bundle: Path, name: str) -> None:
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["files"][name] = sha256_file(bundle / name)
    (bundle / "manifest.json").write_text(json.dumps(doc))


def test_a_tampered_head_is_refused_in_one_line(bundle_dir, tmp_path):
    b = _copy(bundle_dir, tmp_path)
    head = b / "device" / "head_0020.tflite"
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0xFF
    head.write_bytes(bytes(data))
    assert_one_line_error(run_cli(["run", "--bundle", str(b), "--generated", "1"]),
                          "device/head_0020.tflite", "sha256")
    assert_one_line_error(run_cli(["serve", "--bundle", str(b), "--port", "0"]),
                          "device/head_0020.tflite", "changed or damaged")


def test_a_missing_file_is_refused_in_one_line(bundle_dir, tmp_path):
    b = _copy(bundle_dir, tmp_path)
    (b / "device" / "model.tflite").unlink()
    assert_one_line_error(run_cli(["run", "--bundle", str(b), "--generated", "1"]),
                          "device/model.tflite", "missing")


def test_a_policy_with_a_hole_is_refused_in_one_line(bundle_dir, tmp_path):
    b = _copy(bundle_dir, tmp_path)
    doc = json.loads((b / "policy.json").read_text())
    doc["metrics"]["latency"]["cut"][2].pop()
    (b / "policy.json").write_text(json.dumps(doc))
    _rehash(b, "policy.json")
    assert_one_line_error(run_cli(["run", "--bundle", str(b), "--generated", "1"]),
                          "policy.json", "metrics.latency.cut[2]", "hole")


def test_a_cut_outside_the_model_is_refused_in_one_line(bundle_dir, tmp_path):
    b = _copy(bundle_dir, tmp_path)
    doc = json.loads((b / "manifest.json").read_text())
    doc["cuts"][1]["index"] = 999
    (b / "manifest.json").write_text(json.dumps(doc))
    assert_one_line_error(run_cli(["run", "--bundle", str(b), "--generated", "1"]),
                          "cuts[1]", "0 to 21", "999")


def test_export_refuses_another_model_and_a_bad_folder(run_dir, tmp_path):
    assert_one_line_error(run_cli(["export", str(tmp_path), "--out", str(tmp_path / "x")]),
                          "device.json")
    other = REPO / "tests" / "data"
    models = sorted(other.glob("*.keras"))
    if models:  # a user's model file that is not the profiled one
        assert_one_line_error(run_cli(["export", str(run_dir), "--out", str(tmp_path / "y"),
                                       "--model", str(models[0])]), "not the one")


# --- the policy (pure) --------------------------------------------------------------------

def test_policy_round_trips_and_looks_up_conservatively(bundle_dir):
    bundle = load_bundle(bundle_dir)
    policy = bundle.policy
    again = Policy.from_dict(json.loads(json.dumps(policy.to_dict())))
    assert again.choice == policy.choice and again.cuts == policy.cuts
    # Slow uplinks keep the 64-byte cut; very fast ones send the input (cloud-only);
    # the slow fc makes mobile-only never the best.
    assert policy.best("latency", 0.1, 50.0) == 20
    assert policy.best("latency", 1000.0, 5.0) == 0
    assert 21 not in {c for row in policy.choice["latency"] for c in row}
    # Below the grid: its first column; a bandwidth between columns: the lower one.
    assert policy.cell(0.01, 50.0)[1] == 0
    _row, col = policy.cell(policy.up_mbps[3] * 1.01, 50.0)
    assert col == 3
    with pytest.raises(DnntuneError):
        policy.cell(-1.0, 50.0)


def test_hysteresis_holds_near_a_boundary_and_follows_a_real_change(bundle_dir):
    policy = load_bundle(bundle_dir).policy
    rtt = 50.0
    row = policy.choice["latency"][policy.cell(1.0, rtt)[0]]
    k = next(i for i in range(1, len(row)) if row[i] != row[i - 1])
    boundary = policy.up_mbps[k]
    chooser = CutChooser(policy, "latency-first")
    first = chooser.choose(boundary * 0.9, rtt)  # just below the boundary
    flips = [chooser.choose(boundary * f, rtt) for f in (1.05, 0.95, 1.1, 0.92, 1.02)]
    assert set(flips) == {first} and chooser.switches == 0  # noise: no flip
    assert chooser.choose(boundary * 3.0, rtt) == row[min(k + 5, len(row) - 1)] or \
        chooser.choose(boundary * 3.0, rtt) != first
    assert chooser.switches == 1


def test_policy_documents_with_holes_or_foreign_cuts_are_refused(bundle_dir):
    doc = load_bundle(bundle_dir).policy.to_dict()
    for mutate, needle in [
        (lambda d: d["metrics"]["energy"]["cut"].pop(), "expected 10 rows"),
        (lambda d: d["metrics"]["latency"]["cut"][0].__setitem__(0, 5), "a cut of 'cuts'"),
        (lambda d: d["metrics"]["latency"]["latency_ms"][0].__setitem__(0, None), "finite"),
        (lambda d: d.__setitem__("up_mbps", [1, 1, 2]), "increasing"),
        (lambda d: d.__setitem__("schema", 9), "schema"),
    ]:
        broken = json.loads(json.dumps(doc))
        mutate(broken)
        with pytest.raises(PolicyError, match=needle):
            Policy.from_dict(broken)


# --- serving and running ------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(port: int, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "dnntune", "serve", "--port", str(port),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "listening" in line or "serving on" in line or f":{port}" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("server did not start: " + "".join(lines)[-2000:])


def _full(loaded, x):
    return loaded.model(x[0]).numpy()


@pytest.fixture(scope="module")
def served(bundle_dir):
    port = _free_port()
    proc = _start_server(port, "--bundle", str(bundle_dir))
    yield port, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_runner_splits_falls_back_when_the_server_dies_and_returns(bundle_dir, loaded, tmp_path):
    """No inference is lost or answered twice; outputs equal the unsplit model."""
    from dnntune.rpc.client import Endpoint
    from dnntune.runtime import SplitRunner

    port = _free_port()
    proc = _start_server(port)  # not given the bundle: the runner uploads the model
    runner = SplitRunner(load_bundle(bundle_dir), Endpoint(f"127.0.0.1:{port}",
                                                           connect_timeout_s=2.0))
    results = []
    try:
        inputs = [loaded.example_inputs(seed=s) for s in range(9)]
        for x in inputs[:3]:
            results.append(runner.infer(x))
        proc.kill()
        proc.wait(30)
        for x in inputs[3:6]:
            results.append(runner.infer(x))
        proc = _start_server(port)
        time.sleep(1.2)  # the first backoff
        deadline = time.monotonic() + 60
        for x in inputs[6:]:
            results.append(runner.infer(x))
        while results[-1].fell_back and time.monotonic() < deadline:
            time.sleep(0.5)
            results.append(runner.infer(inputs[8]))
            inputs.append(inputs[8])
    finally:
        runner.close()
        proc.kill()
        proc.wait(30)
    assert [r.seq for r in results] == list(range(len(results)))
    assert not any(r.fell_back for r in results[:3])
    assert {r.cut for r in results[:3]} <= {0, 20}
    assert all(r.fell_back and r.cut == 21 for r in results[3:6])
    assert not results[-1].fell_back  # probed again and back on the server
    for x, r in zip(inputs, results, strict=True):
        np.testing.assert_allclose(r.outputs[0], _full(loaded, x), atol=1e-4, rtol=1e-4)


def test_runner_falls_back_on_a_stalled_link_within_its_deadline(bundle_dir, loaded, served):
    from dnntune.netem.shaper import LinkShape, ShapingProxy
    from dnntune.rpc.client import Endpoint
    from dnntune.runtime import SplitRunner

    port, _ = served
    with ShapingProxy("127.0.0.1", port, LinkShape(100.0, 100.0, 2.0)) as proxy:
        runner = SplitRunner(load_bundle(bundle_dir),
                             Endpoint(f"127.0.0.1:{proxy.port}", connect_timeout_s=2.0),
                             deadline_ms=3000.0)
        try:
            x = loaded.example_inputs(seed=3)
            first = runner.infer(x)
            assert not first.fell_back and first.cut == 0  # fast link: send the input
            proxy.reshape(LinkShape(0.001, 0.001, 2.0))  # the link stalls (1 kbit/s)
            stalled = runner.infer(x)
        finally:
            runner.close()
    assert stalled.fell_back and stalled.reason.startswith("deadline"), stalled
    assert stalled.cut == 21
    np.testing.assert_allclose(stalled.outputs[0], _full(loaded, x), atol=1e-4, rtol=1e-4)


def test_run_cli_writes_json_lines(bundle_dir, served, tmp_path):
    port, _ = served
    photo = tmp_path / "x.npy"
    np.save(photo, np.zeros((32, 32, 3), np.float32))
    result = run_cli(["run", "--bundle", str(bundle_dir), "--cloud", f"127.0.0.1:{port}",
                      str(photo), "--generated", "2", "--format", "jsonl"])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["seq"] for r in rows] == [0, 1, 2]
    assert rows[0]["input"] == "x.npy" and not rows[0]["fell_back"]
    assert all(r["cut"] in (0, 20) for r in rows)


def test_run_refuses_bad_inputs_in_one_line(bundle_dir, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((5, 5), np.float32))
    assert_one_line_error(run_cli(["run", "--bundle", str(bundle_dir), str(bad)]),
                          "bad.npy", "shape")
    assert_one_line_error(run_cli(["run", "--bundle", str(bundle_dir)]), "no inputs")
    assert_one_line_error(run_cli(["run", "--bundle", str(tmp_path / "none"),
                                   "--generated", "1"]), "not a folder")


def test_the_server_answers_a_foreign_bundle_and_a_bad_cut_with_the_right_status(
        bundle_dir, served):
    """What a client written from proto/ and the manifest meets: NOT_FOUND for a model
    the server does not hold, INVALID_ARGUMENT for a cut outside the model; the server
    keeps serving."""
    import grpc

    from dnntune.rpc.protocol import load_protocol

    port, proc = served
    pb2, services = load_protocol()
    m = load_bundle(bundle_dir).manifest
    x = np.zeros((1, 32, 32, 3), np.float32)

    def tail(sha: str, cut: int) -> grpc.StatusCode:
        spec = pb2.ModelSpec(sha256=sha)
        header = pb2.TailRequest(header=pb2.TailHeader(
            model=spec, cut_index=cut, head=pb2.ModelIdentity(sha256=sha)))
        tensor = pb2.TailRequest(tensor=pb2.TensorChunk(
            name=m.model["inputs"][0]["name"], dtype="float32", shape=list(x.shape),
            total_bytes=x.nbytes, data=x.tobytes()))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = services.CloudStub(channel).RunTail(iter([header, tensor]), timeout=60)
            try:
                list(call)
            except grpc.RpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    assert tail("ab" * 32, 0) == grpc.StatusCode.NOT_FOUND
    assert tail(m.model_sha256, 999) == grpc.StatusCode.INVALID_ARGUMENT
    assert tail(m.model_sha256, 0) == grpc.StatusCode.OK
    assert proc.poll() is None


def test_export_from_a_config_runs_the_analysis_first(tmp_path):
    config = tmp_path / "mlp.yaml"
    text = (REPO / "configs" / "mnist_mlp.yaml").read_text()
    config.write_text(text.replace("num_runs: 50", "num_runs: 5"))
    out = tmp_path / "bundle"
    result = run_cli(["export", "--config", str(config), "--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "bundle-analysis" / "analysis.json").is_file()
    bundle = load_bundle(out)
    assert bundle.manifest.model["name"] == "mnist_mlp"
    assert all(c.max_abs_error < 1e-4 for c in bundle.manifest.cuts)
    assert_one_line_error(run_cli(["export", str(tmp_path), "--config", str(config),
                                   "--out", str(tmp_path / "x")]), "one of them")
