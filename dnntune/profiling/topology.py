"""The CPU topology a Linux device reports in sysfs: its clusters of cores, fastest first.

Pure: it reads files under a root folder (``/sys/devices/system/cpu`` on a device, a
recorded tree in tests) and imports nothing heavy. Clusters come from
``cpuN/cpufreq/related_cpus`` (the CPUs that share a clock), else from
``cpuN/cpu_capacity`` (the scheduler's relative speed), else the machine is one
cluster. Groups of equal speed (capacity, then ``cpuinfo_max_freq``) are merged, so a
server whose every core has its own cpufreq policy is one cluster, while a big.LITTLE
phone has two: ``big`` (fastest) and ``little``; a third, middle cluster is ``mid``.

Example:
    >>> # topo = read_topology("/sys/devices/system/cpu")
    >>> # topo.resolve("big")  # (4, 5, 6, 7) on a Snapdragon 845
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dnntune.errors import DnntuneError

SYSFS_CPU = "/sys/devices/system/cpu"


@dataclass(frozen=True)
class Cluster:
    """CPUs of one speed. ``capacity`` (1024 = the fastest core) and ``max_freq_khz``
    are ``None`` where sysfs does not give them."""

    name: str
    cpus: tuple[int, ...]
    capacity: int | None
    max_freq_khz: int | None


@dataclass(frozen=True)
class CpuTopology:
    """Online CPUs and their clusters, fastest first; ``source`` says how they were found."""

    cpus: tuple[int, ...]
    clusters: tuple[Cluster, ...]
    source: str

    @property
    def heterogeneous(self) -> bool:
        """More than one cluster: "big" and "little" mean something here."""
        return len(self.clusters) > 1

    def describe(self) -> str:
        """One line, e.g. ``big: CPUs 4-7 (capacity 1024), little: CPUs 0-3 (capacity 446)``."""
        if not self.heterogeneous:
            return (f"no CPU clusters of different speeds ({self.source}): one cluster of "
                    f"{len(self.cpus)} CPU(s) {format_cpus(self.cpus)}")
        parts = []
        for c in self.clusters:
            speed = [f"capacity {c.capacity}"] if c.capacity is not None else []
            speed += [f"{c.max_freq_khz / 1e3:.0f} MHz"] if c.max_freq_khz else []
            parts.append(f"{c.name}: CPUs {format_cpus(c.cpus)} ({', '.join(speed)})")
        return f"{', '.join(parts)} (from {self.source})"

    def default_affinities(self) -> tuple[str, ...]:
        """Every cluster and ``all`` on big.LITTLE; else core counts ``cores:K``."""
        if self.heterogeneous:
            return (*(c.name for c in self.clusters), "all")
        n = len(self.cpus)
        counts = sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k < n} | {n})
        return tuple(f"cores:{k}" for k in counts)

    def resolve(self, spec: str) -> tuple[int, ...]:
        """The CPUs an affinity names: ``all``, a cluster name (``big``, ``little``, ``mid``),
        ``cores:K`` (the K fastest CPUs) or a CPU list such as ``0-3,6``.

        Raises:
            DnntuneError: one line naming the affinity and what exists here.
        """
        spec = spec.strip()
        if spec == "all":
            return self.cpus
        for cluster in self.clusters if self.heterogeneous else ():
            if spec == cluster.name:
                return cluster.cpus
        if spec in ("big", "little", "mid"):
            raise DnntuneError(f"affinity {spec!r}: this machine has {self.describe()}; "
                               f"use {', '.join(self.default_affinities())}, all or a CPU list")
        if spec.startswith("cores:"):
            try:
                k = int(spec[6:])
            except ValueError:
                k = 0
            if not 1 <= k <= len(self.cpus):
                raise DnntuneError(f"affinity {spec!r}: expected cores:K with K from 1 to "
                                   f"{len(self.cpus)}")
            fastest = [cpu for c in self.clusters for cpu in c.cpus]
            return tuple(sorted(fastest[:k]))
        try:
            cpus = parse_cpu_list(spec)
        except ValueError:
            raise DnntuneError(f"affinity {spec!r}: expected all, "
                               f"{', '.join(c.name for c in self.clusters)}, cores:K or a "
                               "CPU list such as 0-3,6") from None
        missing = sorted(set(cpus) - set(self.cpus))
        if missing or not cpus:
            raise DnntuneError(f"affinity {spec!r}: CPU {format_cpus(missing)} does not exist; "
                               f"this machine has CPUs {format_cpus(self.cpus)}")
        return cpus

    def cluster_of(self, cpu: int) -> Cluster:
        return next(c for c in self.clusters if cpu in c.cpus)


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """``"0-3,6"`` (sysfs list form) or ``"0 1 2 3"`` (``related_cpus``) -> sorted CPUs."""
    cpus: set[int] = set()
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"not a CPU list: {text!r}")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise ValueError(f"not a CPU list: {text!r}")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def format_cpus(cpus: Iterable[int]) -> str:
    """The sysfs list form: ``(0, 1, 2, 3, 6)`` -> ``"0-3,6"``."""
    out: list[str] = []
    for cpu in sorted(cpus):
        if out and "-" in out[-1] and int(out[-1].split("-")[1]) == cpu - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{cpu}"
        elif out and "-" not in out[-1] and int(out[-1]) == cpu - 1:
            out[-1] = f"{out[-1]}-{cpu}"
        else:
            out.append(str(cpu))
    return ",".join(out)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _online(root: Path) -> tuple[int, ...]:
    try:
        return parse_cpu_list((root / "online").read_text())
    except (OSError, ValueError):
        found = [int(p.name[3:]) for p in root.glob("cpu[0-9]*") if p.name[3:].isdigit()]
        return tuple(sorted(found))


def read_topology(root: str | Path = SYSFS_CPU) -> CpuTopology:
    """Read the clusters under ``root`` (see the module docstring for the order of sources).

    Raises:
        DnntuneError: ``root`` lists no CPU.
    """
    root = Path(root)
    cpus = _online(root)
    if not cpus:
        raise DnntuneError(f"{root}: no CPUs listed (expected 'online' or cpuN folders)")
    capacity = {c: _read_int(root / f"cpu{c}" / "cpu_capacity") for c in cpus}
    freq = {c: _read_int(root / f"cpu{c}" / "cpufreq" / "cpuinfo_max_freq") for c in cpus}
    groups: dict[tuple[int, ...], list[int]] = {}
    source = "none"
    for c in cpus:
        try:
            related = parse_cpu_list((root / f"cpu{c}" / "cpufreq" / "related_cpus").read_text())
        except (OSError, ValueError):
            related = ()
        if related:
            source = "cpufreq/related_cpus"
        groups.setdefault(related or (c,), []).append(c)
    if source == "none" and any(v is not None for v in capacity.values()):
        source = "cpu_capacity"
    # Merge groups of equal speed: per-core cpufreq policies on a server are one cluster.
    by_speed: dict[tuple[int, int], list[int]] = {}
    for members in groups.values():
        lead = members[0]
        key = ((capacity[lead] or 0, freq[lead] or 0) if source != "none" else (0, 0))
        by_speed.setdefault(key, []).extend(members)
    ranked = sorted(by_speed.items(), key=lambda kv: kv[0], reverse=True)
    names = _names(len(ranked))
    clusters = tuple(Cluster(name, tuple(sorted(members)), capacity[members[0]],
                             freq[members[0]])
                     for name, (_, members) in zip(names, ranked, strict=True))
    if len(clusters) == 1:
        source = {"none": "no cpufreq/related_cpus or cpu_capacity in sysfs",
                  "cpu_capacity": "every CPU has the same cpu_capacity",
                  "cpufreq/related_cpus": "every cpufreq policy has the same speed"}[source]
    return CpuTopology(cpus, clusters, source)


def _names(n: int) -> list[str]:
    if n == 1:
        return ["cpu"]
    if n == 2:
        return ["big", "little"]
    if n == 3:
        return ["big", "mid", "little"]
    return ["big", *(f"mid{i}" for i in range(1, n - 1)), "little"]
