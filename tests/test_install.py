"""dnntune installed from a wheel (not editable) works from any working directory.

The wheel is built from this checkout without build isolation and installed into a
fresh virtualenv with ``--no-deps``; the dependencies come from the project's own
virtualenv through a ``.pth`` line (that adds its site-packages to ``sys.path`` without
running its ``.pth`` files, so the editable dnntune there stays invisible). What is
tested is what a wheel must carry: package data, generated protocol code, entry points.
"""

from __future__ import annotations

import re
import select
import signal
import site
import subprocess
import sys
import venv
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(root / "dist"), str(REPO)],
                   check=True, cwd=root)
    wheel = next((root / "dist").glob("dnntune-*.whl"))
    env_dir = root / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "project-deps.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", purelib, str(wheel)], check=True, cwd=root)
    (env_dir / "bin" / "dnntune").write_text(
        f"#!{python}\nfrom dnntune.cli import main\nraise SystemExit(main())\n")
    (env_dir / "bin" / "dnntune").chmod(0o755)
    return env_dir


def test_the_wheel_holds_its_data_and_imports_from_itself(wheel_env, tmp_path):
    python = wheel_env / "bin" / "python"
    code = ("import dnntune, dnntune.protocol as p, dnntune.resources as r; "
            "print(dnntune.__file__); p.load_protocol(); "
            "print(r.data_path('configs','default.yaml').is_file(), "
            "r.data_path('configs','devices','pixel3.yaml').is_file(), "
            "r.data_path('configs','links.yaml').is_file(), p.PROTO_FILE.is_file())")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout.split()
    assert str(REPO) not in out[0] and "site-packages" in out[0]
    assert out[1:] == ["True"] * 4


def test_analyze_runs_from_another_folder(wheel_env, tmp_path):
    got = subprocess.run([str(wheel_env / "bin" / "dnntune"), "analyze", "--model",
                          "tiny_resnet", "--objective", "latency-first", "--num_runs", "5",
                          "--no-plots"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=600)
    assert got.returncode == 0, got.stderr[-3000:]
    assert "Traceback" not in got.stderr
    rows = [line for line in got.stdout.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["3g", "4g", "wifi"]
    assert "results in" in got.stdout


def test_cloud_server_answers_health_serving(wheel_env, tmp_path):
    proc = subprocess.Popen([str(wheel_env / "bin" / "python"), "-m", "cloud_server",
                             "--port", "0"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        match = re.search(r"listening on (\S+)", line)
        assert match, (line, proc.stderr.read() if proc.stderr else "")
        with grpc.insecure_channel(match.group(1)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
