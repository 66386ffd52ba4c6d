"""``dnntune analyze`` on saved profiles, through a parser built from the module, in
process and as a subprocess (exit codes, one-line errors, JSON on stdout)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from dnntune.analysis.partition import CUT_FIELDS
from dnntune.cli.analyze import add_analyze_arguments, run_analyze
from dnntune.errors import DnntuneError
from dnntune.profiling.profile import save_profile
from dnntune.report.recommendation import round3
from tests.analyzer_fixtures import (
    chain_graph,
    constant_mahimahi,
    inception_like_profiles,
    make_profiles,
)
from tests.test_costs import CHAIN_BYTES, CLOUD_MS, DEVICE_MJ, DEVICE_MS

REPO = Path(__file__).resolve().parents[1]
RUNNER = """
import argparse, sys
from dnntune.cli.analyze import add_analyze_arguments, run_analyze
from dnntune.errors import DnntuneError
parser = argparse.ArgumentParser(prog="dnntune analyze")
add_analyze_arguments(parser)
try:
    sys.exit(run_analyze(parser.parse_args(sys.argv[1:])))
except DnntuneError as exc:
    print(f"dnntune: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.fixture
def chain_files(tmp_path: Path) -> tuple[str, str]:
    device, cloud = make_profiles(chain_graph(CHAIN_BYTES), DEVICE_MS, CLOUD_MS, DEVICE_MJ)
    return (str(save_profile(device, tmp_path / "device.json")),
            str(save_profile(cloud, tmp_path / "cloud.json")))


@pytest.fixture(scope="module")
def inception_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    base = tmp_path_factory.mktemp("inception")
    device, cloud = inception_like_profiles()
    return (str(save_profile(device, base / "device.json")),
            str(save_profile(cloud, base / "cloud.json")))


def run_here(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout, stderr of the subcommand run in this process, as the CLI would."""
    parser = argparse.ArgumentParser(prog="dnntune analyze")
    add_analyze_arguments(parser)
    try:
        code = run_analyze(parser.parse_args(argv))
    except DnntuneError as exc:
        print(f"dnntune: error: {exc}", file=sys.stderr)
        code = 2
    out, err = capsys.readouterr()
    return code, out, err


def run_subprocess(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUNNER, *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("dnntune: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_json_on_stdout(chain_files: tuple[str, str], capsys: pytest.CaptureFixture[str]
                        ) -> None:
    device, cloud = chain_files
    code, out, err = run_here(["--device", device, "--cloud", cloud, "--format", "json",
                               "--objective", "energy-first"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"] == "chain"
    assert doc["objective"] == "energy-first"
    assert [link["name"] for link in doc["links"]] == ["3g", "4g", "wifi"]
    for link in doc["links"]:
        assert {"up_mbps", "down_mbps", "rtt_ms", "best", "mobile_only", "cloud_only",
                "dag_optimal", "cuts"} <= set(link)
        assert [c["index"] for c in link["cuts"]] == [0, 1, 2, 3, 4]
        for cut in [link["best"], *link["cuts"]]:
            assert set(CUT_FIELDS) <= set(cut)


def test_table_output(inception_files: tuple[str, str], capsys: pytest.CaptureFixture[str]
                      ) -> None:
    device, cloud = inception_files
    code, out, err = run_here(["--device", device, "--cloud", cloud, "--links", "3g",
                               "--links", "wifi"], capsys)
    assert code == 0, err
    assert "minimum latency" in out
    assert "device energy measured (measured:synthetic)" in out
    for needle in ("3g", "wifi", "best cut", "mobile-only", "gain vs mobile", "gains in latency"):
        assert needle in out
    assert "4g" not in out


def test_end_to_end_subprocess_json(chain_files: tuple[str, str]) -> None:
    device, cloud = chain_files
    result = run_subprocess(["--device", device, "--cloud", cloud, "--links", "4g",
                             "--format", "json", "--inference-rate", "0.5", "--idle-wait"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["options"] == {"idle_wait": True, "radio": "periodic",
                              "inference_rate_hz": 0.5, "trace_starts": 200,
                              "device_call_ms": 0.0, "cloud_call_ms": 0.0, "rpc_ms": 0.0,
                              "rpc_ms_per_mb": 0.0}
    assert doc["links"][0]["cloud_only"]["tail_mj"] > 0


def write_links(tmp_path: Path, body: str) -> str:
    path = tmp_path / "links.yaml"
    path.write_text(body)
    return str(path)


def bad_input_cases(tmp_path: Path, device: str, cloud: str) -> list[tuple[list[str], list[str]]]:
    graph = chain_graph(CHAIN_BYTES)
    other_model = make_profiles(graph, DEVICE_MS, CLOUD_MS)[1]
    other_model = replace(other_model, meta=replace(other_model.meta, model_hash="ffff0000"))
    fewer_layers = make_profiles(chain_graph(CHAIN_BYTES[:3]), DEVICE_MS[:3], CLOUD_MS[:3])[1]
    bad_trace = tmp_path / "bad.up"
    bad_trace.write_text("0\n10\noops\n")
    base = ["--device", device, "--cloud"]
    return [
        ([*base, str(save_profile(other_model, tmp_path / "o.json"))], ["different models"]),
        ([*base, str(save_profile(fewer_layers, tmp_path / "f.json"))], ["different layers"]),
        ([*base, cloud, "--links",
          write_links(tmp_path, "links:\n  x:\n    base: 4g\n    up_mbps: 0\n")],
         ["links.yaml: links.x", "'up_mbps' must be a rate from 0.001 to 1e+09 Mbit/s, got 0"]),
        ([*base, cloud, "--links", "4g,5g"], ["unknown link '5g'", "3g, 4g, wifi"]),
        ([*base, cloud, "--links", str(bad_trace)], ["bad.up:3:"]),
        ([*base, cloud, "--deadline-ms", "1"], ["no cut is feasible on 3g", "deadline 1 ms"]),
        (["--cloud", cloud, "--device", "nowhere"], ["--device 'nowhere'", "HOST:PORT"]),
        ([*base, str(tmp_path / "missing.json")], ["missing.json", "cannot read profile"]),
        ([*base, cloud, "--inference-rate", "0"], ["--inference-rate"]),
        ([*base, cloud, "--cloud-speedup", "-2"], ["--cloud-speedup"]),
    ]


def test_bad_input_in_process(tmp_path: Path, chain_files: tuple[str, str],
                              capsys: pytest.CaptureFixture[str]) -> None:
    for argv, needles in bad_input_cases(tmp_path, *chain_files):
        code, _, err = run_here(argv, capsys)
        assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize("case", [0, 2, 3, 4, 5])
def test_bad_input_subprocess(tmp_path: Path, chain_files: tuple[str, str], case: int) -> None:
    argv, needles = bad_input_cases(tmp_path, *chain_files)[case]
    result = run_subprocess(argv)
    assert_one_line_error(result.returncode, result.stderr, *needles)


def test_infeasible_everywhere_still_prints_the_report(chain_files: tuple[str, str],
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    device, cloud = chain_files
    code, out, err = run_here(["--device", device, "--cloud", cloud, "--deadline-ms", "1",
                               "--format", "json"], capsys)
    assert_one_line_error(code, err, "no cut is feasible")
    doc = json.loads(out)
    assert doc["feasible"] is False
    assert all(link["best"] is None and not link["feasible"] for link in doc["links"])


def test_infeasible_on_one_link_only(chain_files: tuple[str, str], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    device, cloud = chain_files
    links = write_links(tmp_path, "links:\n  fiber:\n    base: wifi\n    up_mbps: 1000\n"
                                  "    down_mbps: 1000\n    rtt_ms: 1\n")
    code, out, err = run_here(["--device", device, "--cloud", cloud, "--links",
                               f"3g,{links}", "--deadline-ms", "50"], capsys)
    assert code == 0, err
    assert "no feasible cut" in out
    assert "3g: no cut is feasible on 3g" in out


def test_trace_link_and_sensitivity_in_the_table(chain_files: tuple[str, str],
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    device, cloud = chain_files
    trace = constant_mahimahi(tmp_path / "flat.up", packets_per_ms=1, period_ms=200)
    code, out, err = run_here(["--device", device, "--cloud", cloud, "--links",
                               f"{trace}@3g", "--sensitivity", "--trace-starts", "20"], capsys)
    assert code == 0, err
    assert "flat.up: uplink trace" in out
    assert "from preset 3g" in out
    assert "p95" in out
    assert "best cut by uplink" in out
    assert "what-if device x1, cloud x10" in out


@pytest.mark.parametrize(("value", "text"), [
    (1234.5, "1230"), (0.012345, "0.0123"), (5.85, "5.85"), (12.0, "12.0"),
    (999.7, "1000"), (-25.0, "-25.0"), (0.0, "0"), (None, "-"), (160.0, "160"),
])
def test_three_significant_figures(value: float | None, text: str) -> None:
    assert round3(value) == text


def test_dag_partition_that_meets_a_deadline_no_prefix_meets(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    from tests.test_dagcut import two_branch_inputs

    inputs = two_branch_inputs()
    device, cloud = make_profiles(inputs.graph, [0, 1, 500, 1, 1], [0, 0.1, 5, 0.1, 0.1],
                                  [0, 1, 500, 1, 1])
    argv = ["--device", str(save_profile(device, tmp_path / "d.json")),
            "--cloud", str(save_profile(cloud, tmp_path / "c.json")),
            "--links", "3g", "--deadline-ms", "300"]
    code, out, err = run_here(argv, capsys)
    assert_one_line_error(code, err, "no cut is feasible on 3g", "fastest cut takes 503 ms")
    assert "not a prefix cut: 3 layers on the device" in out
    assert "it meets the constraints" in out
    code, out, _ = run_here([*argv, "--format", "json"], capsys)
    dag = json.loads(out)["links"][0]["dag_optimal"]
    assert dag["device_layers"] == ["in", "C", "Y"]
    assert dag["meets_constraints"] is True
    assert dag["is_prefix"] is False


def test_profile_without_energy_says_radio_only(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    graph = chain_graph(CHAIN_BYTES)
    device, cloud = make_profiles(graph, DEVICE_MS, CLOUD_MS)
    device = replace(device, energy=replace(device.energy, label="none"))
    code, out, err = run_here(["--device", str(save_profile(device, tmp_path / "d.json")),
                               "--cloud", str(save_profile(cloud, tmp_path / "c.json")),
                               "--links", "wifi"], capsys)
    assert code == 0, err
    assert "no device energy in the profile (none): radio energy only" in out
