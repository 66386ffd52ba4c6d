"""CPU bandwidth limits for one process with Linux cgroups (v2 ``cpu.max`` or v1 CFS quota).

A limit of ``quota_us`` CPU time per ``period_us`` covers every thread of the process:
``share = quota_us / period_us`` CPUs. The kernel's minimum quota is 1 ms, so small
shares need long periods (5 % = 1 ms per 20 ms); :func:`limit_for_share` keeps the quota
at that minimum below one CPU, so a throttled process waits as briefly as possible.

:func:`find_backend` picks cgroup v2 when the process's own v2 cgroup can delegate the
``cpu`` controller to a child, else the v1 ``cpu`` hierarchy, and says in one line why
neither works (no root, no delegation, read-only). Every cgroup made here is called
``dnntune-<pid>-<tag>``, so :meth:`CgroupBackend.remove_stale` can remove those whose
process died without cleaning up.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dnntune.errors import DnntuneError
from dnntune.procs import process_alive

MIN_QUOTA_US = 1_000        # the kernel refuses quotas below 1 ms
MIN_PERIOD_US = 1_000       # ... and periods outside 1 ms to 1 s
MAX_PERIOD_US = 1_000_000
PREFIX = "dnntune-"


class CgroupUnavailableError(DnntuneError):
    """No cgroup CPU controller this process may write (the message says why)."""


@dataclass(frozen=True)
class CpuLimit:
    """A CFS bandwidth limit: ``quota_us`` of CPU time per ``period_us``, all threads."""

    quota_us: int
    period_us: int

    @property
    def share_cpus(self) -> float:
        """CPUs' worth of time the process may use (0.1 = a tenth of one core)."""
        return self.quota_us / self.period_us

    def describe(self) -> str:
        return (f"{100 * self.share_cpus:.3g}% of one CPU ({self.quota_us / 1000:g} ms per "
                f"{self.period_us / 1000:g} ms)")


def limit_for_share(share_cpus: float) -> CpuLimit:
    """The limit for ``share_cpus``: the shortest period that keeps the quota >= 1 ms.

    Example:
        >>> limit_for_share(0.05)
        CpuLimit(quota_us=1000, period_us=20000)
        >>> limit_for_share(1.5)
        CpuLimit(quota_us=1500, period_us=1000)
    """
    lowest = MIN_QUOTA_US / MAX_PERIOD_US
    if not share_cpus >= lowest:
        raise DnntuneError(f"CPU share {share_cpus!r} is below the kernel's minimum "
                           f"{lowest:g} (1 ms per second)")
    period = min(max(round(MIN_QUOTA_US / share_cpus), MIN_PERIOD_US), MAX_PERIOD_US)
    return CpuLimit(max(round(share_cpus * period), MIN_QUOTA_US), period)


@dataclass(frozen=True)
class CgroupBackend:
    """One cgroup hierarchy with a writable ``cpu`` controller.

    Attributes:
        version: 1 (``cpu.cfs_quota_us``/``cpu.cfs_period_us``) or 2 (``cpu.max``).
        parent: The cgroup directory new cgroups are made in (this process's own).
    """

    version: int
    parent: Path

    def create(self, tag: str, pid: int | None = None) -> Path:
        """Make ``dnntune-<pid>-<tag>`` under :attr:`parent` (after removing stale ones)."""
        self.remove_stale()
        path = self.parent / f"{PREFIX}{pid or os.getpid()}-{tag}"
        try:
            path.mkdir()
        except FileExistsError:
            raise DnntuneError(f"cgroup {path} exists already") from None
        except OSError as exc:
            raise CgroupUnavailableError(f"cannot create cgroup {path} "
                                         f"({exc.strerror})") from None
        return path

    def set_limit(self, path: Path, limit: CpuLimit | None) -> None:
        """Confine every process in ``path`` to ``limit`` (``None``: no limit)."""
        if self.version == 2:
            _write(path / "cpu.max", "max 100000" if limit is None
                   else f"{limit.quota_us} {limit.period_us}")
            return
        # v1: quota -1 first, so no intermediate (quota, period) pair is refused
        _write(path / "cpu.cfs_quota_us", "-1")
        if limit is not None:
            _write(path / "cpu.cfs_period_us", str(limit.period_us))
            _write(path / "cpu.cfs_quota_us", str(limit.quota_us))

    def set_priority(self, path: Path, factor: int = 10) -> None:
        """Weigh the cgroup ``factor`` times the default against its siblings, so other
        load on the machine does not eat into its (small) quota: the quota, not the
        contention, then sets its speed. v1 ``cpu.shares``, v2 ``cpu.weight``."""
        if self.version == 2:
            _write(path / "cpu.weight", str(min(100 * factor, 10_000)))
        else:
            _write(path / "cpu.shares", str(1024 * factor))

    def read_limit(self, path: Path) -> CpuLimit | None:
        """The limit in force, or ``None`` for unlimited."""
        if self.version == 2:
            quota, _, period = (path / "cpu.max").read_text().strip().partition(" ")
            return None if quota == "max" else CpuLimit(int(quota), int(period))
        quota_us = int((path / "cpu.cfs_quota_us").read_text())
        period_us = int((path / "cpu.cfs_period_us").read_text())
        return None if quota_us < 0 else CpuLimit(quota_us, period_us)

    def add_process(self, path: Path, pid: int | None = None) -> None:
        """Move a process (all its threads) into the cgroup at ``path``."""
        _write(path / "cgroup.procs", str(pid or os.getpid()))

    def processes(self, path: Path) -> list[int]:
        try:
            return [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def remove(self, path: Path) -> None:
        """Move what is left in ``path`` to :attr:`parent`, then remove the cgroup."""
        for pid in self.processes(path):
            with contextlib.suppress(OSError):  # it may have exited meanwhile
                _write(self.parent / "cgroup.procs", str(pid))
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:  # EBUSY: a process is still inside
                raise DnntuneError(f"cannot remove cgroup {path} ({exc.strerror})") from None
            # A plain directory standing in for cgroupfs (tests): cgroupfs itself lets
            # rmdir remove its interface files.
            for child in path.iterdir():
                child.unlink()
            path.rmdir()

    def remove_stale(self) -> list[Path]:
        """Remove ``dnntune-<pid>-*`` cgroups whose process is gone; returns them."""
        removed = []
        for path in sorted(self.parent.glob(f"{PREFIX}*")):
            owner = path.name[len(PREFIX):].partition("-")[0]
            if not owner.isdigit() or process_alive(int(owner)):
                continue
            with contextlib.suppress(DnntuneError):
                self.remove(path)
                removed.append(path)
        return removed

    @contextlib.contextmanager
    def confined(self, tag: str) -> Iterator[Path]:
        """This process in a fresh cgroup; afterwards back in :attr:`parent`, cgroup gone."""
        path = self.create(tag)
        try:
            self.set_priority(path)
            self.add_process(path)
            yield path
        finally:
            self.remove(path)


def find_backend(proc_root: str | Path = "/proc") -> CgroupBackend:
    """The cgroup hierarchy to confine this process in, v2 first.

    Args:
        proc_root: Where ``self/mounts`` and ``self/cgroup`` are read (tests pass a
            fake tree).

    Raises:
        CgroupUnavailableError: one line saying why no CPU limit can be set.
    """
    proc = Path(proc_root)
    try:
        mounts = (proc / "self" / "mounts").read_text().splitlines()
        memberships = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError as exc:
        raise CgroupUnavailableError(f"cannot read {proc}/self/mounts or cgroup "
                                     f"({exc.strerror}): not Linux?") from None
    own = {}
    for line in memberships:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else ["<v2>"]:
            own[c] = path.lstrip("/")
    reasons = []
    table = [line.split() for line in mounts]
    for fields in sorted((f for f in table if len(f) >= 4), key=lambda f: f[2] != "cgroup2"):
        where, kind, options = Path(fields[1]), fields[2], fields[3].split(",")
        if kind == "cgroup2" and "<v2>" in own:
            parent = where / own["<v2>"]
            reason = _v2_usable(parent)
            if reason is None:
                return CgroupBackend(2, parent)
            reasons.append(reason)
        elif kind == "cgroup" and "cpu" in options and "cpu" in own:
            parent = where / own["cpu"]
            if os.access(parent, os.W_OK) and (parent / "cpu.cfs_quota_us").exists():
                return CgroupBackend(1, parent)
            reasons.append(f"cgroup v1 {parent} is not writable (run as root)")
    if not reasons:
        reasons.append("no cgroup cpu controller is mounted")
    raise CgroupUnavailableError("; ".join(reasons))


def _v2_usable(parent: Path) -> str | None:
    """``None`` if children of ``parent`` can have ``cpu.max``, else the reason."""
    try:
        available = (parent / "cgroup.controllers").read_text().split()
        enabled = (parent / "cgroup.subtree_control").read_text().split()
    except OSError as exc:
        return f"cgroup v2 {parent}: {exc.strerror}"
    if "cpu" not in available:
        return f"cgroup v2 {parent} has no cpu controller (not delegated)"
    if not os.access(parent, os.W_OK):
        return f"cgroup v2 {parent} is not writable (no root, no delegation)"
    if "cpu" not in enabled:
        try:
            _write(parent / "cgroup.subtree_control", "+cpu")
        except DnntuneError as exc:
            return f"cgroup v2 {parent}: cannot enable cpu for children ({exc})"
    return None


def _write(path: Path, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        raise DnntuneError(f"cannot write {text!r} to {path} ({exc.strerror})") from None
