"""`dnntune serve` and `dnntune agent` as separate processes, driven as a user would."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dnntune.errors import DnntuneError
from dnntune.model.cuts import enumerate_cuts
from dnntune.profiling.profile import load_profile
from dnntune.rpc.client import Endpoint, ProfilerClient, model_spec
from tests.conftest import REPO, assert_one_line_error, run_cli


@contextlib.contextmanager
def server_process(*args: str, tmpdir: Path | None = None
                   ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``python -m dnntune ARGS --port 0``; yield it and its address once listening."""
    env = {**os.environ, "TMPDIR": str(tmpdir)} if tmpdir else None
    proc = subprocess.Popen([sys.executable, "-m", "dnntune", *args, "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"listening on (\S+)", line)
        assert match, (line, proc.stderr.read() if proc.stderr else "")
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def test_device_and_cloud_profiles_name_the_same_layers(tmp_path):
    with server_process("serve") as (_, cloud), \
            server_process("agent", "--cloud", cloud) as (_, device):
        common = ["profile", "--model", "tiny_resnet", "--num_runs", "5", "--warmup_runs", "1",
                  "--energy", "none"]
        got_cloud = run_cli([*common, "--side", "cloud", "--cloud", cloud,
                             "--out", str(tmp_path / "cloud.json")])
        assert got_cloud.returncode == 0, got_cloud.stderr
        got_device = run_cli([*common, "--side", "device", "--device", device,
                              "--out", str(tmp_path / "device.json")])
        assert got_device.returncode == 0, got_device.stderr
        c, d = load_profile(tmp_path / "cloud.json"), load_profile(tmp_path / "device.json")
        assert c.layer_names == d.layer_names and len(c.layer_names) == 21
        assert c.meta.model_hash == d.meta.model_hash
        assert (c.meta.side, d.meta.side) == ("cloud", "device")
        # the analyzer takes them as they are
        analyzed = run_cli(["analyze", "--device", str(tmp_path / "device.json"), "--cloud",
                            str(tmp_path / "cloud.json"), "--format", "json"])
        assert analyzed.returncode == 0, analyzed.stderr

        # the agent runs a split: head on the device, tail on the cloud server
        agent = ProfilerClient(Endpoint(device))
        spec = model_spec(agent.pb2, "tiny_resnet")
        reply = agent.run_split(spec, cut_index=8, num_runs=3, warmup_runs=1)
        assert len(reply.runs) == 3 and reply.max_abs_error < 1e-5
        assert reply.bytes_up == enumerate_cuts(c.graph)[8].bytes_up > 0
        assert all(r.total_ms >= r.head_ms > 0 and r.tail_ms > 0 for r in reply.runs)

        # SplitRequest.wire: encoded after the head, decoded by the cloud server
        def split(wire: str, cut: int = 8):
            return agent.call(agent.device.RunSplit, agent.pb2.SplitRequest(
                model=spec, cut_index=cut, num_runs=2, warmup_runs=1, wire=wire))
        cut = enumerate_cuts(c.graph)[8]
        wired = split("int8")
        assert wired.wire == "int8" and len(wired.runs) == 2
        assert wired.bytes_up == cut.bytes_up // 4 + 8 * len(cut.tensors)
        assert all(r.encode_ms > 0 and r.decode_ms > 0 for r in wired.runs)
        assert 0 < wired.max_abs_error < 0.1
        assert split("fp32").max_abs_error < 1e-5
        for wire, cut_index, words in (("fp64", 8, "SplitRequest.wire: unknown encoding"),
                                       ("jpeg90", 8, "activations cross cut 8")):
            with pytest.raises(DnntuneError, match="INVALID_ARGUMENT") as info:
                split(wire, cut_index)
            assert words in str(info.value)
        assert split("jpeg90", 0).bytes_up < enumerate_cuts(c.graph)[0].bytes_up // 4


def test_sigterm_finishes_calls_in_flight_then_exits_0(tmp_path):
    with server_process("serve", "--grace-s", "20", tmpdir=tmp_path) as (proc, address):
        assert len(list(tmp_path.glob("dnntune-models-*"))) == 1
        client = ProfilerClient(Endpoint(address))
        pb2 = client.pb2
        release = threading.Event()
        outcome: list[object] = []

        def chunks():
            yield pb2.TensorChunk(name="t", dtype="uint8", shape=[3], total_bytes=3,
                                  data=b"\x01")
            release.wait(20)
            yield pb2.TensorChunk(name="t", data=b"\x02\x03")

        def in_flight():
            try:
                outcome.append(list(client.cloud.Echo(chunks(), timeout=60)))
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion below
                outcome.append(exc)

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # still finishing the call in flight
        with grpc.insecure_channel(address) as channel:  # health says so meanwhile
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(DnntuneError, match="UNAVAILABLE: server is shutting down"):
                client.echo([("late", np.zeros(1, np.uint8))])
        release.set()
        thread.join(30)
        assert proc.wait(30) == 0
        assert isinstance(outcome[0], list), outcome
        data = b"".join(c.data for c in outcome[0])
        assert np.frombuffer(data, np.uint8).tolist() == [1, 2, 3]
        with pytest.raises(DnntuneError, match="cannot reach"):
            ProfilerClient(Endpoint(address, connect_timeout_s=0.5))
    assert not list(tmp_path.glob("dnntune-models-*"))  # its upload folder went with it


def test_python_dash_m_entry_points_take_the_same_flags():
    for module in ("cloud_server", "device_agent"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "--max-concurrent-rpcs" in result.stdout and "--token-file" in result.stdout


def test_server_bad_flags_and_unreachable_addresses_are_one_line(tmp_path):
    assert_one_line_error(run_cli(["serve", "--tls-cert", "c.pem"]),
                          "--tls-cert and --tls-key go together")
    assert_one_line_error(run_cli(["serve", "--token-file", str(tmp_path / "none")]),
                          "cannot read token file")
    assert_one_line_error(run_cli(["profile", "--model", "tiny_mlp", "--side", "cloud",
                                   "--cloud", "127.0.0.1:9"]), "cannot reach 127.0.0.1:9")
    assert_one_line_error(run_cli(["profile", "--model", "tiny_mlp", "--side", "cloud",
                                   "--cloud", "nowhere"]), "expected HOST:PORT")
    assert_one_line_error(run_cli(["profile", "--model", "tiny_mlp", "--device",
                                   "127.0.0.1:9", "--side", "cloud"]),
                          "--device goes with --side device")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert_one_line_error(run_cli(["serve", "--port", "0", "--upload-dir", str(a_file)]),
                          f"--upload-dir {a_file}: exists and is not a folder")
    assert_one_line_error(run_cli(["serve", "--grace-s", "-5"]),
                          "--grace-s must be 0 to 3600 seconds, got -5")
    assert_one_line_error(run_cli(["agent", "--port", "0", "--cloud", "127.0.0.1:9",
                                   "--cloud-tls-cert", str(tmp_path / "missing.pem")]),
                          "--cloud-tls-cert", "cannot read TLS certificate")
    assert_one_line_error(run_cli(["serve", "--port", "0", "--tls-cert", str(a_file),
                                   "--tls-key", str(a_file)]),
                          "not a PEM certificate and its matching private key")


def test_tls_mistakes_are_named_as_tls_mistakes_in_one_line(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    not_pem = tmp_path / "not.pem"
    not_pem.write_bytes(os.urandom(64))
    profile = ["profile", "--model", "tiny_mlp", "--side", "cloud", "--num_runs", "2"]
    with server_process("serve", "--host", "localhost", "--tls-cert", str(cert),
                        "--tls-key", str(key)) as (_, address):
        assert_one_line_error(run_cli([*profile, "--cloud", address]),
                              "the server speaks TLS but this client does not")
        assert_one_line_error(run_cli([*profile, "--cloud", address, "--tls-cert",
                                       str(not_pem)]), "not a PEM certificate")
        other_key, other = tmp_path / "other-key.pem", tmp_path / "other.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "1", "-subj", "/CN=localhost", "-keyout", str(other_key), "-out",
                        str(other)], check=True, capture_output=True)
        assert_one_line_error(run_cli([*profile, "--cloud", address, "--tls-cert",
                                       str(other)]), "TLS certificate check failed")
    with server_process("serve", "--host", "localhost") as (_, address):
        assert_one_line_error(run_cli([*profile, "--cloud", address, "--tls-cert",
                                       str(cert)]), "the server does not speak TLS")


def test_server_dying_mid_profile_is_reported(tmp_path):
    with server_process("serve") as (proc, address):
        child = subprocess.Popen([sys.executable, "-m", "dnntune", "profile", "--model",
                                  "resnet50", "--side", "cloud", "--cloud", address,
                                  "--num_runs", "500", "--energy", "none"], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "COLUMNS": "200"})
        time.sleep(8)
        proc.kill()
        _, err = child.communicate(timeout=120)
        assert child.returncode == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert "server unavailable or died during the call" in lines[-1], err
        assert "Traceback" not in err
