"""CPU topology from recorded sysfs trees (tests/data/sysfs_*, see sysfs_README.md): a
big.LITTLE phone, a board with capacities only, servers; affinities resolved against them;
and the power of busy cores priced by cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dnntune.errors import DnntuneError
from dnntune.profiling.devices import find_device_profile, load_device_profile
from dnntune.profiling.topology import format_cpus, parse_cpu_list, read_topology
from dnntune.study.deployment import choose_energy, estimate_power_mw
from tests.conftest import assert_one_line_error, run_cli

DATA = Path(__file__).parent / "data"


def test_big_little_phone_has_big_and_little_clusters() -> None:
    topo = read_topology(DATA / "sysfs_sdm845")
    assert topo.cpus == tuple(range(8))
    assert topo.heterogeneous and topo.source == "cpufreq/related_cpus"
    assert [(c.name, c.cpus, c.capacity) for c in topo.clusters] == [
        ("big", (4, 5, 6, 7), 1024), ("little", (0, 1, 2, 3), 396)]
    assert topo.resolve("big") == (4, 5, 6, 7)
    assert topo.resolve("little") == (0, 1, 2, 3)
    assert topo.resolve("all") == tuple(range(8))
    assert topo.resolve("cores:2") == (4, 5)  # the fastest two
    assert topo.resolve("0-1,6") == (0, 1, 6)
    assert topo.default_affinities() == ("big", "little", "all")
    assert "big: CPUs 4-7 (capacity 1024, 2803 MHz)" in topo.describe()


def test_capacity_only_board() -> None:
    topo = read_topology(DATA / "sysfs_capacity_only")
    assert topo.source == "cpu_capacity"
    assert [(c.name, c.cpus) for c in topo.clusters] == [("big", (4, 5)),
                                                        ("little", (0, 1, 2, 3))]


@pytest.mark.parametrize("tree", ["sysfs_server", "sysfs_server_percore"])
def test_server_is_one_cluster_and_uses_core_counts(tree: str) -> None:
    topo = read_topology(DATA / tree)
    assert not topo.heterogeneous
    assert topo.clusters[0].cpus == (0, 1, 2, 3)
    assert topo.default_affinities() == ("cores:1", "cores:2", "cores:4")
    assert "no CPU clusters of different speeds" in topo.describe()
    assert topo.resolve("cores:3") == (0, 1, 2)
    with pytest.raises(DnntuneError, match="'big'.*no CPU clusters"):
        topo.resolve("big")


def test_bad_affinities_name_what_exists() -> None:
    topo = read_topology(DATA / "sysfs_sdm845")
    with pytest.raises(DnntuneError, match=r"CPU 9 does not exist.*CPUs 0-7"):
        topo.resolve("9")
    with pytest.raises(DnntuneError, match="cores:K with K from 1 to 8"):
        topo.resolve("cores:0")
    with pytest.raises(DnntuneError, match="expected all, big, little"):
        topo.resolve("huge")


def test_cpu_list_forms_round_trip() -> None:
    assert parse_cpu_list("0 1 2 3") == (0, 1, 2, 3)
    assert parse_cpu_list("0-3,6\n") == (0, 1, 2, 3, 6)
    assert format_cpus((0, 1, 2, 3, 6, 8, 9)) == "0-3,6,8-9"
    with pytest.raises(ValueError):
        parse_cpu_list("3-1")


def test_busy_cores_are_priced_by_their_cluster() -> None:
    pixel3 = load_device_profile(find_device_profile("pixel3"))
    phone = read_topology(DATA / "sysfs_sdm845")
    big = {c.name: c for c in pixel3.clusters}["big"]
    little = {c.name: c for c in pixel3.clusters}["little"]
    p_big, how = estimate_power_mw(pixel3, phone, phone.resolve("big"), 4)
    assert p_big == pytest.approx(pixel3.cpu_active_mw + big.active_mw + 4 * big.core_active_mw)
    assert how == "4 big core(s) as big"
    p_little, _ = estimate_power_mw(pixel3, phone, phone.resolve("little"), 4)
    assert p_little == pytest.approx(pixel3.cpu_active_mw + little.active_mw
                                     + 4 * little.core_active_mw)
    # 6 threads on all 8 CPUs: 4 big cores, then 2 little ones.
    p_all, how = estimate_power_mw(pixel3, phone, phone.resolve("all"), 6)
    assert p_all == pytest.approx(p_big + little.active_mw + 2 * little.core_active_mw)
    assert how == "4 big core(s) as big, 2 little core(s) as little"
    # More threads than pinned CPUs: only the pinned cores are busy.
    assert estimate_power_mw(pixel3, phone, (0,), 4)[0] == pytest.approx(
        pixel3.cpu_active_mw + little.active_mw + little.core_active_mw)
    server = read_topology(DATA / "sysfs_server")
    _, how = estimate_power_mw(pixel3, server, (0, 1), 2)
    assert "do not match" in how


def test_study_refuses_a_cpu_that_does_not_exist() -> None:
    assert_one_line_error(run_cli(["study", "deployment", "--model", "tiny_mlp",
                                   "--affinity", "0-1,99", "--sysfs",
                                   str(DATA / "sysfs_sdm845")]),
                          "affinity '0-1,99'", "CPU 99 does not exist", "CPUs 0-7")


def test_study_refuses_big_on_a_machine_without_clusters() -> None:
    assert_one_line_error(run_cli(["study", "deployment", "--model", "tiny_mlp",
                                   "--affinity", "big", "--sysfs",
                                   str(DATA / "sysfs_server")]),
                          "affinity 'big'", "no CPU clusters of different speeds")


def test_study_refuses_cpus_this_process_may_not_use(tmp_path: Path) -> None:
    beyond = max(os.sched_getaffinity(0)) + 2  # exists in this tree, not allowed here
    (tmp_path / "online").write_text(f"0-{beyond}\n")
    assert_one_line_error(run_cli(["study", "deployment", "--model", "tiny_mlp",
                                   "--affinity", str(beyond), "--sysfs", str(tmp_path)]),
                          f"affinity '{beyond}'", "not all allowed to this process")


def test_a_phone_power_model_on_a_host_without_clusters_says_what_it_cannot_do() -> None:
    server = read_topology(DATA / "sysfs_server")
    notes = choose_energy("model:pixel3", server, 0.1).notes
    assert len(notes) == 1
    assert "pixel3 has 2 CPU clusters (big, little)" in notes[0]
    assert "cannot represent clusters of different speeds" in notes[0]
    phone = choose_energy("model:pixel3", read_topology(DATA / "sysfs_sdm845"), 0.1)
    assert phone.notes == [] and phone.label == "estimated:pixel3"
