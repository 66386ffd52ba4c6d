"""The documentation's recipes run as written (with a small model and loopback addresses).

Each recipe is read from the docs themselves (README.md and docs/*.md: the block after
its ``<!-- recipe: NAME`` marker), so the test and the documentation cannot drift apart.
The only substitutions: ``tiny_resnet`` for ``mobilenet_v2`` (time), and for the
three-machine recipe, loopback for the hosts and free ports for the fixed ones.
"""

from __future__ import annotations

import contextlib
import re
import select
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnntune.analysis.links import resolve_links
from dnntune.profiling.profile import load_profile
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def recipe(name: str) -> str:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    match = re.search(rf"<!-- recipe: {re.escape(name)}\b.*?-->\s*```\w*\n(.*?)```", text,
                      re.S)
    assert match, f"no page of README.md or docs/ has the recipe {name!r}"
    return match.group(1)


def commands(block: str) -> list[list[str]]:
    """Shell lines of a block: comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [line.strip() for line in joined.splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def as_process(argv: list[str]) -> list[str]:
    assert argv[0] == "dnntune", argv
    return [sys.executable, "-m", "dnntune", *argv[1:]]


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(as_process(argv), cwd=cwd, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (argv, result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result


def small(block: str) -> str:
    return block.replace("mobilenet_v2", "tiny_resnet")


def test_step_by_step(tmp_path: Path) -> None:
    lines = commands(small(recipe("step-by-step")))
    assert [argv[1] for argv in lines] == ["profile", "profile", "analyze"]
    results = [run(argv, tmp_path) for argv in lines]
    device, cloud = load_profile(tmp_path / "device.json"), load_profile(tmp_path / "cloud.json")
    # built in two processes with 1 and 2 threads: the same model all the same
    assert (device.meta.num_threads, cloud.meta.num_threads) == (1, 2)
    assert device.meta.model_hash == cloud.meta.model_hash
    assert "best cut" in results[-1].stdout


def test_config_file(tmp_path: Path) -> None:
    text = small(recipe("config")).replace("[224, 224, 3]", "[32, 32, 3]")
    (tmp_path / "my-run.yaml").write_text(text)
    result = run(["dnntune", "analyze", "--config", "my-run.yaml"], tmp_path)
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["3g", "4g", "wifi"]
    assert len(list((tmp_path / "dnntune-runs").glob("tiny_resnet-*/plots/*.png"))) == 12


def test_lan_links_file_loads(tmp_path: Path) -> None:
    (tmp_path / "lan.yaml").write_text(recipe("lan.yaml"))
    (lan,) = resolve_links([str(tmp_path / "lan.yaml")])
    assert (lan.name, lan.up_mbps, lan.down_mbps, lan.rtt_ms) == ("lan", 1000, 1000, 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _certificate(folder: Path, stem: str) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(folder / f"{stem}-key.pem"),
                    "-out", str(folder / f"{stem}-cert.pem")], check=True, capture_output=True)


@contextlib.contextmanager
def serving(argv: list[str], cwd: Path) -> Iterator[None]:
    proc = subprocess.Popen(as_process(argv), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        assert "listening on" in line, (argv, line, proc.stderr.read() if proc.stderr else "")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_three_machines_on_loopback(tmp_path: Path) -> None:
    cloud_port, agent_port = _free_port(), _free_port()
    block = (small(recipe("three-machine"))
             .replace("0.0.0.0", "127.0.0.1")
             .replace("--port 50051", f"--port {cloud_port}")
             .replace("--port 50052", f"--port {agent_port}")
             .replace("workstation:50051", f"localhost:{cloud_port}")
             .replace("board:50052", f"localhost:{agent_port}"))
    serve, agent, *orchestrator = commands(block)
    assert (serve[1], agent[1]) == ("serve", "agent")
    assert [argv[1] for argv in orchestrator] == ["analyze", "profile", "profile"]
    _certificate(tmp_path, "cloud")
    _certificate(tmp_path, "board")
    (tmp_path / "token.txt").write_text("s3cret-token\n")
    with serving(serve, tmp_path), serving(agent, tmp_path):
        analyzed = run(orchestrator[0], tmp_path)
        assert "best cut" in analyzed.stdout
        for argv in orchestrator[1:]:
            run(argv, tmp_path)
    device, cloud = load_profile(tmp_path / "device.json"), load_profile(tmp_path / "cloud.json")
    assert device.meta.model_hash == cloud.meta.model_hash
    assert (device.meta.num_threads, cloud.meta.num_threads) == (1, 8)
