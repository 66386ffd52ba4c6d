"""cgroup CPU limits: v2 against a fake cgroup2 tree (real file formats), v1 for real here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dnntune.errors import DnntuneError
from dnntune.profiling.cgroups import (
    CgroupBackend,
    CgroupUnavailableError,
    CpuLimit,
    find_backend,
    limit_for_share,
)


def test_limits_keep_the_quota_at_the_kernel_minimum_below_one_cpu():
    assert limit_for_share(0.05) == CpuLimit(1000, 20000)
    assert limit_for_share(0.1) == CpuLimit(1000, 10000)
    assert limit_for_share(2.0) == CpuLimit(2000, 1000)
    assert limit_for_share(0.001) == CpuLimit(1000, 1_000_000)
    assert abs(limit_for_share(0.113).share_cpus - 0.113) < 1e-3
    assert limit_for_share(0.05).describe() == "5% of one CPU (1 ms per 20 ms)"
    with pytest.raises(DnntuneError, match="below the kernel's minimum"):
        limit_for_share(0.0005)


def fake_proc(tmp_path: Path, mounts: str, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mounts").write_text(mounts)
    (proc / "self" / "cgroup").write_text(cgroup)
    return proc


def fake_v2(tmp_path: Path, controllers: str = "cpuset cpu io memory pids",
            subtree: str = "") -> tuple[Path, Path]:
    root = tmp_path / "cg2"
    own = root / "user.slice" / "me.scope"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text(subtree + "\n")
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n")
    proc = fake_proc(tmp_path, f"sysfs /sys sysfs rw 0 0\ncgroup2 {root} cgroup2 "
                               "rw,nosuid,nodev,noexec 0 0\n",
                     "0::/user.slice/me.scope\n")
    return proc, own


def test_v2_delegated_cgroup_gets_cpu_max_and_is_removed(tmp_path):
    proc, own = fake_v2(tmp_path)
    backend = find_backend(proc)
    assert backend == CgroupBackend(2, own)
    assert (own / "cgroup.subtree_control").read_text() == "+cpu"  # enabled for children
    with backend.confined("test") as path:
        assert path.name == f"dnntune-{os.getpid()}-test"
        assert (path / "cgroup.procs").read_text() == str(os.getpid())
        assert (path / "cpu.weight").read_text() == "1000"
        backend.set_limit(path, CpuLimit(2000, 20000))
        assert (path / "cpu.max").read_text() == "2000 20000"
        assert backend.read_limit(path) == CpuLimit(2000, 20000)
        backend.set_limit(path, None)
        assert (path / "cpu.max").read_text() == "max 100000"
        assert backend.read_limit(path) is None
    assert not path.exists()
    assert (own / "cgroup.procs").read_text() == str(os.getpid())  # moved back


def test_v2_without_cpu_delegation_says_why(tmp_path):
    proc, _own = fake_v2(tmp_path, controllers="memory pids")
    with pytest.raises(CgroupUnavailableError, match="no cpu controller .not delegated."):
        find_backend(proc)
    proc2 = fake_proc(tmp_path / "x", "proc /proc proc rw 0 0\n", "0::/\n")
    with pytest.raises(CgroupUnavailableError, match="no cgroup cpu controller is mounted"):
        find_backend(proc2)


def test_stale_cgroups_of_dead_processes_are_removed(tmp_path):
    proc, own = fake_v2(tmp_path, subtree="cpu")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = own / f"dnntune-{dead}-agent"
    stale.mkdir()
    (stale / "cpu.max").write_text("1000 10000")
    (stale / "cgroup.procs").write_text("")
    mine = own / f"dnntune-{os.getpid()}-other"
    mine.mkdir()
    backend = find_backend(proc)
    assert backend.remove_stale() == [stale]
    assert not stale.exists() and mine.exists()


def test_v1_cpu_hierarchy_for_real_or_the_reason_why_not():
    """Here (root, cgroup v1 cpu controller): a busy child is really throttled."""
    try:
        backend = find_backend()
    except CgroupUnavailableError as exc:  # another host: the refusal names the reason
        assert str(exc) and "\n" not in str(exc)
        return
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    path = backend.create("pytest", pid=child.pid)
    try:
        backend.add_process(path, child.pid)
        backend.set_limit(path, limit_for_share(0.05))
        assert backend.read_limit(path) == CpuLimit(1000, 20000)
        assert backend.processes(path) == [child.pid]
        time.sleep(0.5)
        stat = dict(line.split() for line in (path / "cpu.stat").read_text().splitlines())
        assert int(stat["nr_throttled"]) > 0
    finally:
        child.kill()
        child.wait()
        backend.remove(path)
    assert not path.exists()
