"""Shared fixtures: big models are built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
# Calibrated zoo builds are cached (dnntune.model.cache); tests keep theirs out of the
# user's home, shared by the xdist workers and every process a test starts.
os.environ.setdefault("DNNTUNE_CACHE_DIR", str(REPO / ".pytest_cache" / "dnntune-cache"))
# The suite builds more shapes and seeds than the default bound keeps: no eviction churn
# (tests/test_cache_bound.py sets its own bounds).
os.environ.setdefault("DNNTUNE_CACHE_MAX_FILES", "1000")
# Tests never write into the user's profile store.
os.environ.setdefault("DNNTUNE_STORE", str(REPO / ".pytest_cache" / "dnntune-store.db"))


@pytest.fixture(scope="session")
def zoo_model():
    """``zoo_model(name)``: a calibrated zoo model, loaded once per session."""
    from dnntune.model.loading import load_model

    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(name)
        return cache[name]
    return get


def head_at_middle_cut(loaded):  # type: ignore[no-untyped-def]
    """``(cut, split, inputs, held)``: ``loaded`` split at its middle cut, its head run
    on the example inputs (``held``: the tensors by name, crossing ones among them)."""
    from dnntune.model.split import Splitter

    splitter = Splitter(loaded.model, loaded.graph)
    cut = splitter.cuts[len(splitter.cuts) // 2]
    split = splitter.split(cut.index)
    x = loaded.example_inputs()
    return cut, split, x, split.run_head(x)


def run_cli(args: Sequence[str], cwd: Path | None = None, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
    """Run ``dnntune ARGS`` as a user would, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "dnntune", *args], capture_output=True,
                          text=True, cwd=cwd or REPO, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 2, one line on stderr naming what was wrong, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
