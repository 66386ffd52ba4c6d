"""The zoo-model cache is bounded on disk: least recently used builds go first."""

from __future__ import annotations

import os
import time

import pytest

from dnntune.errors import DnntuneError
from dnntune.model.cache import cache_limits, evict_least_recent, zoo_model_file


def test_a_stream_of_new_seeds_keeps_the_cache_at_its_count(tmp_path, monkeypatch):
    monkeypatch.setenv("DNNTUNE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DNNTUNE_CACHE_MAX_FILES", "2")
    first = zoo_model_file("tiny_mlp", (16,), 1)
    second = zoo_model_file("tiny_mlp", (16,), 2)
    old = time.time() - 100
    os.utime(first, (old, old))
    os.utime(second, (old + 10, old + 10))
    assert zoo_model_file("tiny_mlp", (16,), 1) == first  # a use: now the most recent
    third = zoo_model_file("tiny_mlp", (16,), 3)
    left = sorted(p.name for p in (tmp_path / "zoo").glob("*.keras"))
    assert left == sorted([first.name, third.name])  # seed 2 was the least recently used
    assert not (tmp_path / "zoo" / f".{second.name}.lock").exists()


def test_the_byte_limit_removes_oldest_first_and_never_the_new_build(tmp_path, monkeypatch):
    monkeypatch.setenv("DNNTUNE_CACHE_MAX_MB", "1")
    files = []
    for i in range(4):
        p = tmp_path / f"m{i}.keras"
        p.write_bytes(b"x" * (400 << 10))
        os.utime(p, (1000 + i, 1000 + i))
        files.append(p)
    removed = evict_least_recent(tmp_path, keep=files[0])  # the oldest is the new build
    assert sorted(removed) == sorted(files[1:3])
    assert sorted(tmp_path.glob("*.keras")) == sorted([files[0], files[3]])


@pytest.mark.parametrize(("env", "value"), [("DNNTUNE_CACHE_MAX_FILES", "many"),
                                            ("DNNTUNE_CACHE_MAX_MB", "0")])
def test_bad_limits_name_the_variable(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(DnntuneError, match=env):
        cache_limits()
