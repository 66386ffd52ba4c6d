"""`dnntune validate`: splits run over a shaped loopback link, predictions checked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cloud_server import create_server
from dnntune.analysis.links import resolve_links
from dnntune.analysis.partition import Objective, analyze_profiles
from dnntune.errors import DnntuneError
from dnntune.profiling.profiler import ProfileSettings, profile_model
from dnntune.rpc.client import Endpoint, ProfilerClient, model_spec
from dnntune.rpc.serving import ServerOptions
from dnntune.validation.validate import parse_cut_spec, validate_links
from tests.conftest import assert_one_line_error, run_cli


def test_split_runs_over_a_shaped_link_give_the_right_output_and_timing(zoo_model):
    loaded = zoo_model("tiny_resnet")
    settings = ProfileSettings(num_runs=5, warmup_runs=1, energy="none")
    device = profile_model(loaded, settings)
    cloud = profile_model(loaded, ProfileSettings(side="cloud", num_runs=5, warmup_runs=1,
                                                  energy="none"))
    links = resolve_links(["wifi"])
    analysis = analyze_profiles(device, cloud, links, Objective("latency-first"))
    running = create_server(ServerOptions(port=0))
    try:
        spec = model_spec(ProfilerClient(Endpoint(f"127.0.0.1:{running.port}")).pb2,
                          "tiny_resnet")
        results = validate_links(loaded, analysis.links, "127.0.0.1", running.port, "0,12,21",
                                 2, spec, lambda a: ProfilerClient(Endpoint(a)))
    finally:
        running.stop(0)
    (wifi,) = results
    assert [c.index for c in wifi.cuts] == [0, 12, 21]
    for c in wifi.cuts:
        assert c.max_abs_error < 1e-5  # the split's output is the model's output
    # over the link: at least its RTT and the upload of the crossing bytes at 18.88 Mbit/s
    cloud_only = wifi.cuts[0]
    floor = 30.0 + 8 * cloud_only.bytes_up / 18.88e3
    assert cloud_only.measured_ms >= floor * 0.95, (cloud_only.measured_ms, floor)
    assert wifi.cuts[-1].measured_ms < 30.0  # mobile-only never touches the link
    assert abs(wifi.shaping["up_error_pct"]) < 10
    doc = json.loads(json.dumps([w.to_dict() for w in results]))
    assert {"median_abs_error_pct", "regret_pct", "cuts"} <= set(doc[0])


@pytest.mark.parametrize(("spec", "message"), [
    ("spread:1", "K >= 2"), ("spread:x", "K >= 2"), ("a,b", "expected best|all"),
    ("-1", "start at 0"),
])
def test_bad_cut_specs(spec, message):
    with pytest.raises(DnntuneError, match=message):
        parse_cut_spec(spec)


def test_cut_specs():
    assert parse_cut_spec("best") == ("best", 0, ())
    assert parse_cut_spec("spread") == ("spread", 20, ())
    assert parse_cut_spec("3,1,3") == ("list", 0, (1, 3))


def test_cli_validate_end_to_end_and_bad_input(tmp_path):
    out = tmp_path / "val"
    result = run_cli(["validate", "--model", "tiny_mlp", "--links", "wifi", "--cuts", "best",
                      "--num_runs", "2", "--profile-runs", "3", "--out", str(out),
                      "--format", "json"])
    # the default device, the emulated phone by time dilation, needs no cgroup: any host
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert doc["model"] == "tiny_mlp" and doc["links"][0]["name"] == "wifi"
    assert doc["device_label"] == "emulated:dnntune_phone"  # heads ran on the emulated agent
    assert "dilated x" in doc["device_note"]
    cuts = doc["links"][0]["cuts"]
    assert {"index", "predicted_ms", "measured_ms", "error_pct"} <= set(cuts[0])
    assert (out / "validation.json").is_file() and (out / "validation-wifi.png").is_file()
    assert np.isfinite(doc["links"][0]["regret_pct"])

    assert_one_line_error(run_cli(["validate", "--model", "tiny_mlp", "--emulate", "pixel3",
                                   "--device", "127.0.0.1:9"]), "--emulate goes with")
    assert_one_line_error(run_cli(["validate", "--model", "tiny_mlp", "--shaper", "tbf"]),
                          "--shaper tbf runs heads in this process")
    assert_one_line_error(run_cli(["validate", "--model", "tiny_mlp", "--links", "5g"]),
                          "unknown link '5g'")
    bad = tmp_path / "links.yaml"
    bad.write_text("links:\n  slow: {up_mbps: -1, down_mbps: 2, rtt_ms: 10, "
                   "alpha_up_mw_per_mbps: 1, alpha_down_mw_per_mbps: 1, beta_mw: 1}\n")
    assert_one_line_error(run_cli(["validate", "--model", "tiny_mlp", "--links", str(bad)]),
                          "up_mbps")
    assert_one_line_error(run_cli(["validate", "--model", "tiny_mlp", "--emulate", "none",
                                   "--cloud", "127.0.0.1:9"]), "cannot reach 127.0.0.1:9")
    assert_one_line_error(run_cli(["validate", "--model", "tiny_mlp", "--cuts", "spread:1"]),
                          "K >= 2")


def test_kernel_shaping_with_tbf_from_the_cli():
    """As root (this machine and CI): the cloud server runs in a network namespace
    behind tc tbf; the user-space proxy adds only the delay."""
    from dnntune.netem.netns import kernel_shaping_available, stale_namespaces

    available, reason = kernel_shaping_available()
    result = run_cli(["validate", "--model", "tiny_mlp", "--links", "4g", "--cuts", "0,4",
                      "--num_runs", "2", "--profile-runs", "3", "--shaper", "tbf",
                      "--emulate", "none", "--format", "json"])
    if not available:  # not root: one clear line, nothing created
        assert_one_line_error(result, reason.split(":")[0])
        return
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cannot connect" not in result.stderr
    link = json.loads(result.stdout)["links"][0]
    assert link["shaping"]["method"] == "tbf+proxy delay"
    assert abs(link["shaping"]["up_error_pct"]) < 10
    cloud_only = link["cuts"][0]
    assert cloud_only["measured_ms"] >= 64.0  # at least the RTT of 4G
    assert cloud_only["max_abs_error"] < 1e-5
    # The CLI has exited: none of its namespaces may remain. (Other tests running beside
    # this one may hold namespaces of their own, named after their live process.)
    assert not stale_namespaces()


def test_validate_runs_heads_on_a_remote_agent(tmp_path):
    """--device HOST:PORT: an agent started with --cloud at the proxy validate opens."""
    import socket
    import subprocess
    import sys

    from dnntune.cli.pipeline import local_cloud_server
    from tests.conftest import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        proxy_port = s.getsockname()[1]
    with local_cloud_server(1) as cloud:
        agent = subprocess.Popen([sys.executable, "-m", "dnntune", "agent", "--port", "0",
                                  "--cloud", f"127.0.0.1:{proxy_port}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 cwd=REPO)
        try:
            address = agent.stdout.readline().split("listening on ")[1].strip()
            result = run_cli(["validate", "--model", "tiny_mlp", "--links", "wifi", "--cuts",
                              "best", "--num_runs", "1", "--profile-runs", "2", "--device",
                              address, "--cloud", cloud, "--proxy-listen",
                              f"127.0.0.1:{proxy_port}", "--format", "json"])
        finally:
            agent.terminate()
            agent.wait(30)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert doc["device_label"] == "measured"  # this agent is not emulated
    link = doc["links"][0]
    assert len(link["cuts"]) >= 2 and link["cuts"][0]["transfer_ms"] >= 30.0  # wifi RTT
    assert max(c["max_abs_error"] for c in link["cuts"]) < 1e-5


def test_tbf_server_starts_holding_the_model(zoo_model):
    """The server behind tbf finds the model in its store: nothing is uploaded through
    the shaped link (ResNet50 would take minutes at 3G rates)."""
    from dnntune.model.cache import zoo_model_file
    from dnntune.model.loading import DEFAULT_SEED
    from dnntune.model.zoo import ZOO
    from dnntune.netem.netns import kernel_shaping_available

    loaded = zoo_model("tiny_mlp")
    path = zoo_model_file("tiny_mlp", ZOO["tiny_mlp"].input_shape, DEFAULT_SEED)
    settings = ProfileSettings(num_runs=3, warmup_runs=1, energy="none")
    device = profile_model(loaded, settings)
    cloud = profile_model(loaded, ProfileSettings(side="cloud", num_runs=3, warmup_runs=1,
                                                  energy="none"))
    analysis = analyze_profiles(device, cloud, resolve_links(["4g"]),
                                Objective("latency-first"))
    held_at_connect = []

    def connect(address, connect_timeout_s=10):
        client = ProfilerClient(Endpoint(address, connect_timeout_s=connect_timeout_s))
        spec = model_spec(client.pb2, str(path), name="tiny_mlp")
        held_at_connect.append(client.call(client.profiler.HasModel,
                                           client.pb2.ModelRef(sha256=spec.sha256)).cached)
        return client

    from dnntune.rpc.protocol import load_protocol

    spec = model_spec(load_protocol()[0], str(path), name="tiny_mlp")
    available, _ = kernel_shaping_available()
    if not available:  # not root: refused in one line before anything starts
        with pytest.raises(DnntuneError):
            validate_links(loaded, analysis.links, "127.0.0.1", 1, "0", 1, spec, connect,
                           shaper="tbf", model_file=path)
        return
    (link,) = validate_links(loaded, analysis.links, "127.0.0.1", 1, "0", 1, spec, connect,
                             shaper="tbf", model_file=path)
    assert held_at_connect == [True]
    assert link.cuts[0].max_abs_error < 1e-5  # the tail ran on the seeded file


def test_cli_validate_wire_sends_encoded_tensors_through_the_server(tmp_path):
    """--wire: the emulated agent encodes after each head, the cloud server decodes; each
    row names its encoding, the bytes sent are the encoded ones, and the codec times are
    measured on each side. Random weights: --min-agreement 0 keeps every pair."""
    result = run_cli(["validate", "--model", "tiny_resnet", "--links", "wifi", "--cuts",
                      "0,12", "--wire", "fp32,int8,jpeg90", "--min-agreement", "0",
                      "--num_runs", "1", "--profile-runs", "3", "--format", "json"])
    assert result.returncode == 0, result.stderr[-3000:]
    cuts = json.loads(result.stdout)["links"][0]["cuts"]
    rows = {(c["index"], c["encoding"]): c for c in cuts}
    assert set(rows) == {(0, "fp32"), (0, "int8"), (0, "jpeg90"), (12, "fp32"),
                         (12, "int8")}  # JPEG is for the input image only
    for (_, encoding), c in rows.items():
        assert c["encode_ms"] > 0 and c["decode_ms"] > 0, c
        # a JPEG's size depends on the photograph (predicted: the mean of three)
        tolerance = 0.5 if encoding == "jpeg90" else 0.0
        assert c["measured_bytes_up"] == pytest.approx(c["bytes_up"], rel=tolerance), c
        if encoding == "fp32":
            assert c["max_abs_error"] < 1e-5  # sent as float32: the model's own output
    # one byte per value, and 8 bytes of scale and zero point per tensor (two cross cut 12)
    assert rows[(12, "int8")]["measured_bytes_up"] == rows[(12, "fp32")]["bytes_up"] // 4 + 16
    assert rows[(0, "jpeg90")]["measured_bytes_up"] < rows[(0, "int8")]["measured_bytes_up"]
    assert rows[(12, "int8")]["max_abs_error"] > 0  # lossy, and said so

    assert_one_line_error(run_cli(["validate", "--model", "tiny_mlp", "--wire", "fp64"]),
                          "unknown encoding 'fp64'")
    assert_one_line_error(run_cli(["validate", "--model", "tiny_mlp", "--wire", "int8",
                                   "--shaper", "tbf", "--emulate", "none"]),
                          "--wire runs on the device agent")
    assert_one_line_error(run_cli(["validate", "--model", "tiny_mlp", "--wire", "int8",
                                   "--min-agreement", "2"]), "--min-agreement")


def test_validate_takes_wire_from_the_flag_then_a_config_file_else_plain(tmp_path):
    import argparse

    from dnntune.cli.validate import _wire_names
    from dnntune.config import default_config, load_config

    run = tmp_path / "run.yaml"
    run.write_text("model: {name: tiny_resnet}\nwire: [int8+zstd, jpeg90]\n")

    def names(wire, config_path):
        args = argparse.Namespace(wire=wire, config=config_path, min_agreement=0.99)
        config = load_config(config_path) if config_path else default_config()
        return _wire_names(args, config)
    assert names(["fp16,int8"], None) == ("fp16", "int8")
    assert names(None, str(run)) == ("int8+zstd", "jpeg90")
    assert names(["fp32"], str(run)) == ("fp32",)  # the flag wins
    # the built-in run's realistic set is analyze's; validate stays plain float32
    assert names(None, None) == ()
    run.write_text("model: {name: tiny_resnet}\nwire: [fp64]\n")
    with pytest.raises(DnntuneError, match="wire"):
        load_config(str(run))
