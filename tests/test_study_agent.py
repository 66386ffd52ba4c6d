"""The deployment study through a real device agent on loopback (Device.StudyDeployment):
the same configurations and columns as the local study, every bad field refused with its
status while the agent keeps serving, one study or profile at a time, a cancelled study
frees the agent at once, and the CLI's bad input is one line."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from device_agent import create_server as create_agent
from dnntune.errors import DnntuneError
from dnntune.profiling.topology import format_cpus, read_topology
from dnntune.rpc.client import Endpoint, ProfilerClient, model_spec
from dnntune.rpc.protocol import load_protocol
from dnntune.rpc.serving import ServerOptions
from dnntune.study.agent import check_study_request
from dnntune.study.deployment import DeploymentRow, choose_energy, run_deployment_study
from dnntune.study.spec import StudySpec
from tests.conftest import REPO, assert_one_line_error, run_cli

SPEC = StudySpec(("tiny_resnet",), ("tf", "litert"), ("fp32",), (1,), ("cores:1",),
                 num_runs=3, warmup_runs=1, energy="model:pixel3")


@pytest.fixture(scope="module")
def agent():
    running = create_agent(ServerOptions(port=0), None)
    client = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}"))
    yield running, client
    client.close()
    running.stop(0)


def request(client, model="tiny_resnet", **fields):
    values = {"frameworks": ["litert"], "precisions": ["fp32"], "threads": [1],
              "affinities": ["cores:1"], "num_runs": 2, "energy": "none", **fields}
    return client.pb2.DeploymentStudyRequest(model=model_spec(client.pb2, model, batch_size=0),
                                             **values)


def study(client, req, timeout=120.0):
    """Progress events and the JSON document of one StudyDeployment call."""
    events, parts = [], []
    for event in client.device.StudyDeployment(req, timeout=timeout):
        if event.WhichOneof("event") == "progress":
            events.append((event.progress.stage, event.progress.done, event.progress.total))
        else:
            parts.append(event.study_json_chunk)
    return events, json.loads(b"".join(parts))


def code_of(client, req) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        study(client, req, timeout=30)
    return caught.value.code(), caught.value.details()


def test_remote_study_has_the_local_configurations_and_columns(agent, tmp_path: Path):
    """The CLI with --device (agent on loopback) and the library here: same rows' keys,
    configurations and units; files written and the study recorded in the store."""
    running, _ = agent
    out, store = tmp_path / "out", tmp_path / "store.db"
    result = run_cli(["study", "deployment", "--device", f"127.0.0.1:{running.port}",
                      "--model", "tiny_resnet", "--frameworks", "tf,litert", "--precision",
                      "fp32", "--threads", "1", "--affinity", "cores:1", "--num_runs", "3",
                      "--warmup_runs", "1", "--energy", "model:pixel3", "--out", str(out),
                      "--format", "json", "--store", str(store)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"studied on the device agent at 127.0.0.1:{running.port}" in result.stderr
    remote = json.loads(result.stdout)
    topology = read_topology()
    local = run_deployment_study(SPEC, topology, choose_energy(SPEC.energy, topology, 1.0))
    local_rows = [r.to_dict() for r in local]
    assert [list(r) for r in remote["rows"]] == [list(r) for r in local_rows]

    def configs(rows):
        return [(r["model"], r["framework"], r["precision"], r["threads"], r["affinity"],
                 r["cpus"], r["energy_label"], r["runs"]) for r in rows]
    assert configs(remote["rows"]) == configs(local_rows)
    for r in remote["rows"]:
        assert r["mean_ms"] > 0 and r["model_file_bytes"] > 0 and r["peak_rss_growth_bytes"] > 0
        assert r["energy_mj"] == pytest.approx(r["mean_ms"] * r["power_mw"] / 1e3)
    assert set(remote["best"]["tiny_resnet"]) == {"latency", "energy", "memory"}
    doc = json.loads((out / "deployment.json").read_text())
    assert doc["rows"] == remote["rows"] and doc["topology"] == topology.describe()
    assert "power model pixel3.yaml" in " ".join(doc["notes"])  # the agent's path cut off
    assert (out / "deployment.csv").is_file() and (out / "deployment.png").is_file()
    import dnntune.store

    with dnntune.store.open(str(store)) as stored:
        assert list(stored.studies()["kind"]) == ["deployment"]
        assert len(stored.study_rows()) == 2


def test_bad_fields_get_their_status_and_the_agent_keeps_serving(agent):
    _, client = agent
    cpus = read_topology().cpus
    bad = [
        ({"frameworks": ["onnx"]}, grpc.StatusCode.INVALID_ARGUMENT, "frameworks"),
        ({"precisions": ["fp64"]}, grpc.StatusCode.INVALID_ARGUMENT, "precisions"),
        ({"threads": [0]}, grpc.StatusCode.INVALID_ARGUMENT, "threads"),
        ({"threads": [65]}, grpc.StatusCode.INVALID_ARGUMENT, "threads"),
        ({"threads": [1, 1]}, grpc.StatusCode.INVALID_ARGUMENT, "threads"),
        ({"affinities": [f"0,{max(cpus) + 1}"]}, grpc.StatusCode.INVALID_ARGUMENT,
         f"CPU {max(cpus) + 1} does not exist"),
        ({"affinities": ["x" * 65]}, grpc.StatusCode.INVALID_ARGUMENT, "affinities"),
        ({"num_runs": 1001}, grpc.StatusCode.INVALID_ARGUMENT, "num_runs"),
        ({"rounds": 11}, grpc.StatusCode.INVALID_ARGUMENT, "rounds"),
        ({"energy": "model:/etc/passwd"}, grpc.StatusCode.INVALID_ARGUMENT, "energy"),
        ({"threads": list(range(1, 9)), "affinities": ["all", "cores:1"],
          "frameworks": ["tf", "litert"], "precisions": ["fp32", "fp16", "int8"],
          "rounds": 2},
         grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 64"),
    ]
    for fields, code, needle in bad:
        got, details = code_of(client, request(client, **fields))
        assert got == code and needle in details, (fields, got, details)
        assert "DeploymentStudyRequest" in details and "\n" not in details
    spec = client.pb2.DeploymentStudyRequest(
        model=client.pb2.ModelSpec(zoo_name="tiny_resnet", batch_size=2))
    assert code_of(client, spec)[0] == grpc.StatusCode.INVALID_ARGUMENT
    unknown = client.pb2.DeploymentStudyRequest(model=client.pb2.ModelSpec(sha256="a" * 64))
    assert code_of(client, unknown)[0] == grpc.StatusCode.NOT_FOUND
    nozoo = client.pb2.DeploymentStudyRequest(model=client.pb2.ModelSpec(zoo_name="/etc"))
    assert code_of(client, nozoo)[0] == grpc.StatusCode.INVALID_ARGUMENT
    raw = client.channel.unary_stream("/dnntune.v1.Device/StudyDeployment")
    rng = np.random.default_rng(5)
    for _ in range(100):  # random bytes: refused or undecodable, never a crash
        with pytest.raises(grpc.RpcError) as caught:
            list(raw(rng.bytes(int(rng.integers(0, 40))), timeout=30))
        assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                       grpc.StatusCode.NOT_FOUND), caught.value.details()
    events, doc = study(client, request(client, "tiny_mlp"))  # still serving
    assert events[0] == ("prepare", 0, 1) and events[-1] == ("litert fp32 t1 cores:1", 0, 1)
    assert [r["framework"] for r in doc["rows"]] == ["litert"]
    assert doc["rows"][0]["cpus"] == format_cpus(read_topology().resolve("cores:1"))


def test_a_busy_agent_refuses_and_a_cancelled_study_frees_it(agent):
    """A TensorFlow worker takes seconds to start: while it runs, another study and a
    Profile get UNAVAILABLE; cancelling the call kills the worker and frees the agent."""
    _, client = agent
    call = client.device.StudyDeployment(request(client, frameworks=["tf"]), timeout=300)
    started = threading.Event()

    def read() -> None:
        try:
            for event in call:
                if event.progress.stage.startswith("tf"):
                    started.set()
        except grpc.RpcError:
            pass
    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(60)
    got, details = code_of(client, request(client))
    assert got == grpc.StatusCode.UNAVAILABLE and "in progress" in details
    with pytest.raises(DnntuneError, match="UNAVAILABLE: a deployment study is in progress"):
        client.profile(model_spec(client.pb2, "tiny_mlp"), 2, 0, "none", timeout_s=30)
    call.cancel()
    reader.join(10)
    deadline = time.monotonic() + 5  # the worker is killed within its 0.2 s poll
    while True:
        try:
            _, doc = study(client, request(client, "tiny_mlp"))
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
            time.sleep(0.2)
    assert len(doc["rows"]) == 1


def test_affinities_are_checked_against_the_agents_topology():
    """'big' on a server without clusters is refused naming the field (recorded sysfs)."""
    server = read_topology(REPO / "tests/data/sysfs_server")
    pb2 = load_protocol()[0]
    req = pb2.DeploymentStudyRequest(affinities=["big"])
    with pytest.raises(DnntuneError, match=r"DeploymentStudyRequest.affinities: affinity "
                                           r"'big': this machine has no CPU clusters"):
        check_study_request(req, server, "none")
    here = read_topology()  # defaults: this machine's own affinities, all allowed here
    req = pb2.DeploymentStudyRequest(frameworks=["litert"], precisions=["int8"])
    spec = check_study_request(req, here, "none")
    assert spec.variants() == [("litert", "int8")] and spec.threads == (1,)
    assert spec.affinities == here.default_affinities() and spec.num_runs == 10


def test_cli_bad_input_with_a_device_is_one_line(tmp_path: Path):
    assert_one_line_error(run_cli(["study", "deployment", "--device", "nohost",
                                   "--model", "tiny_mlp"]), "--device 'nohost'", "HOST:PORT")
    assert_one_line_error(run_cli(["study", "deployment", "--device", "127.0.0.1:1",
                                   "--model", "model.pb"]), "model 'model.pb'", "zoo model")
    assert_one_line_error(run_cli(["study", "deployment", "--device", "127.0.0.1:1",
                                   "--model", "tiny_mlp", "--tls-cert",
                                   str(tmp_path / "none.pem")]), "--tls-cert")


def test_rows_survive_the_wire_document():
    from dnntune.study.deployment import rows_from_document, study_document

    row = DeploymentRow("m", "litert", "int8", 1, "all", "0-1", float("nan"), 1.0, 2.0, 3.0,
                        "none", 1, 2, 3, 4, 0, 0.1, 0.2, note="no conversion")
    doc = json.loads(json.dumps(study_document([row], ["n"], "t"), allow_nan=False))
    (back,) = rows_from_document(doc, "here")
    assert back.mean_ms != back.mean_ms and back.note == "no conversion"
    with pytest.raises(DnntuneError, match="here: not a deployment study"):
        rows_from_document({"rows": [{"model": "m"}]}, "here")


def test_an_emulated_agent_says_what_its_study_cannot_represent():
    """An agent started as an emulated pixel3 (its label: no cgroup needed to read it)
    studies on its host's cores and says that clusters of different speeds are beyond
    the emulation; its operator's preset prices the energy."""
    running = create_agent(ServerOptions(port=0), None, power_profile="pixel3",
                           emulation={"preset": "pixel3", "mechanism": "quota"})
    client = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}"))
    try:
        _, doc = study(client, request(client, "tiny_mlp", energy="model:pixel3"))
    finally:
        client.close()
        running.stop(0)
    notes = " ".join(doc["notes"])
    assert "this agent emulates pixel3" in notes
    assert "cannot represent clusters of different speeds" in notes
    assert "gives no big/little figures for pixel3" in notes
    assert doc["rows"][0]["energy_label"] == "estimated:pixel3"


def test_an_agents_refusal_is_one_cli_line(agent):
    running, _ = agent
    cpus = read_topology().cpus
    result = run_cli(["study", "deployment", "--device", f"127.0.0.1:{running.port}",
                      "--model", "tiny_mlp", "--affinity", f"0,{max(cpus) + 1}"])
    assert_one_line_error(result, "INVALID_ARGUMENT", "DeploymentStudyRequest.affinities",
                          f"CPU {max(cpus) + 1} does not exist")
