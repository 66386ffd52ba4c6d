"""The emulated device: presets, calibration, labels, clean-up and the refusals."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dnntune.cli.pipeline import cgroup_problem
from dnntune.config import parse_config
from dnntune.errors import ConfigError, DnntuneError
from dnntune.profiling.cgroups import CpuLimit
from dnntune.profiling.devices import load_emulation_preset
from dnntune.profiling.emulation import Emulation, calibrate_share, scale_profile, trimmed_mean
from tests.conftest import REPO, assert_one_line_error, run_cli

PRESET = """description: a test phone, mobilenet_v2 slowed to {ms} ms
idle_power_mw: 40.0
cpu:
  clusters:
    - {{name: big, cores: 4, active_mw: 20.0, core_active_mw: 900.0}}
emulation:
  threads: 1
  reference: {{model: mobilenet_v2, latency_ms: {ms}, source: "this test's own figure"}}
"""


def write_preset(directory: Path, name: str, latency_ms: float) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(PRESET.format(ms=latency_ms))
    return path


def test_presets_carry_a_reference_with_its_source():
    phone = load_emulation_preset("dnntune_phone")
    assert phone.emulation is not None and phone.emulation.threads == 1
    ref = phone.emulation.reference
    assert (ref.model, ref.latency_ms) == ("mobilenet_v2", 138.0) and "DNNTune" in ref.source
    pixel = load_emulation_preset("pixel3").emulation
    assert pixel is not None and pixel.threads == 4 and pixel.reference.latency_ms == 17.5


def test_unknown_preset_and_preset_without_reference_are_refused():
    with pytest.raises(DnntuneError, match="available: .*dnntune_phone"):
        load_emulation_preset("nokia3310")
    with pytest.raises(DnntuneError, match="no 'emulation.reference'.*dnntune_phone"):
        load_emulation_preset("raspberry_pi4")


def test_config_key_is_device_only_and_none_turns_it_off():
    config = parse_config({"model": {"name": "tiny_mlp"},
                           "processing": {"device": {"emulate": "pixel3"}}}, "c.yaml")
    assert config.device.emulate == "pixel3" and config.cloud.emulate is None
    off = parse_config({"model": {"name": "tiny_mlp"},
                        "processing": {"device": {"emulate": "none"}}}, "c.yaml")
    assert off.device.emulate is None
    with pytest.raises(ConfigError, match="unknown key 'processing.cloud.emulate'"):
        parse_config({"model": {"name": "x"}, "processing": {"cloud": {"emulate": "p"}}},
                     "c.yaml")


def latency_model(cpu_ms: float, overhead: float = 1.15):
    """A process whose latency is its CPU time over its share (pure stub for the loop)."""
    state: dict[str, CpuLimit | None] = {"limit": None}

    def run_once() -> float:
        limit = state["limit"]
        return cpu_ms if limit is None else overhead * cpu_ms / limit.share_cpus

    def apply(limit: CpuLimit | None) -> None:
        state["limit"] = limit
    return run_once, apply


def test_calibration_converges_and_refuses_what_it_cannot_reach():
    run_once, apply = latency_model(12.0)
    limit, timing, native, steps = calibrate_share(run_once, apply, 138.0, 1.0, runs=3)
    assert abs(timing.latency_ms / 138.0 - 1) <= 0.03 and native.latency_ms == 12.0
    assert 0.09 < limit.share_cpus < 0.11 and steps >= 1
    with pytest.raises(DnntuneError, match="already takes 12"):
        calibrate_share(run_once, apply, 5.0, 1.0, runs=3)
    never, _ = latency_model(12.0)  # the limit is never applied: stuck at native speed
    with pytest.raises(DnntuneError, match=r"closest share reached, .*% of one CPU"):
        calibrate_share(never, lambda limit: None, 138.0, 1.0, runs=3, steps=3)


def test_trimmed_mean_ignores_load_spikes():
    assert trimmed_mean([10.0] * 8 + [500.0, 1.0]) == 10.0


def test_scaled_profile_multiplies_timings_and_energy_and_is_labelled(tiny_profile):
    em = Emulation(preset="dnntune_phone", mode="scaled", threads=1,
                   reference_model="mobilenet_v2", reference_ms=138.0,
                   reference_source="src", achieved_ms=138.0, native_ms=27.6, factor=5.0,
                   reason="no root")
    scaled = scale_profile(tiny_profile, em)
    assert scaled.meta.device_label == "scaled:dnntune_phone"
    assert "what-if" in scaled.meta.device_note and "no root" in scaled.meta.device_note
    assert scaled.end_to_end.mean_ms == pytest.approx(5 * tiny_profile.end_to_end.mean_ms)
    for a, b in zip(scaled.layers, tiny_profile.layers, strict=True):
        assert a.latency.p90_ms == pytest.approx(5 * b.latency.p90_ms)
        assert a.energy_mj == pytest.approx(5 * b.energy_mj)
    assert scaled.ratio == tiny_profile.ratio
    assert tiny_profile.meta.device_label == "measured"


@pytest.fixture(scope="module")
def tiny_profile():
    from dnntune.model.loading import load_model
    from dnntune.profiling.profiler import ProfileSettings, profile_model

    return profile_model(load_model("tiny_mlp"), ProfileSettings(num_runs=3, warmup_runs=1,
                                                                 energy="model:pixel3"))


def start_agent(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dnntune", "agent", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)


def our_cgroups(pid: int) -> list[Path]:
    from dnntune.profiling.cgroups import find_backend

    return list(find_backend().parent.glob(f"dnntune-{pid}-*"))


@pytest.mark.slow
def test_emulated_agent_profiles_labelled_and_cleans_up_on_sigterm(tmp_path):
    if cgroup_problem():  # another host: the agent refuses in one line instead
        result = run_cli(["agent", "--port", "0", "--emulate", "dnntune_phone:quota"])
        assert_one_line_error(result, "--emulate dnntune_phone:quota: cannot confine")
        return
    from dnntune.cli.pipeline import Access, profile_side
    from dnntune.config import RunConfig, SideConfig

    preset = write_preset(tmp_path, "test_phone", 100.0)
    agent = start_agent("--emulate", f"{preset}:quota")
    try:
        described = agent.stdout.readline()
        address = agent.stdout.readline().split("listening on ")[1].strip()
        assert "emulated:test_phone: CPU limited to" in described
        assert "this test's own figure" in described
        [cgroup] = our_cgroups(agent.pid)
        config = RunConfig(model="tiny_mlp", num_runs=3, warmup_runs=1,
                           device=SideConfig(energy=f"model:{preset}"))
        import contextlib

        profile = profile_side("device", address, config, Access(),
                               lambda stage: contextlib.nullcontext(lambda *a: None))
        em = Emulation.from_dict(profile.meta.emulation)
        assert profile.meta.device_label == "emulated:test_phone"
        assert em.reference_ms == 100.0 and abs(em.achieved_ms / 100.0 - 1) <= 0.10
        quota = int((cgroup / "cpu.cfs_quota_us").read_text()) if (
            cgroup / "cpu.cfs_quota_us").exists() else None
        assert quota in (None, em.quota_us)
        assert profile.energy.label == "estimated:test_phone"
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0, agent.stderr.read()[-2000:]
    assert our_cgroups(agent.pid) == []


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["dilation", "quota"])
def test_unreachable_reference_is_one_line_and_leaves_no_cgroup(tmp_path, mechanism):
    preset = write_preset(tmp_path, "too_fast", 0.5)
    agent = start_agent("--emulate", f"{preset}:{mechanism}")
    _out, err = agent.communicate(timeout=300)
    assert agent.returncode == 2, err[-2000:]
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("dnntune: calib")]
    assert len(lines) == 1 and "Traceback" not in err
    if mechanism == "dilation":  # no cgroup needed, on any host
        assert "cannot emulate too_fast (mobilenet_v2 0.5 ms) by time dilation" in lines[0]
        assert "natively with 1 thread(s)" in lines[0]
    elif cgroup_problem():
        assert "cannot confine" in lines[0]
    else:
        assert "cannot emulate a reference of 0.5 ms" in lines[0]
    if not cgroup_problem():
        assert our_cgroups(agent.pid) == []


@pytest.mark.slow
def test_agent_stopped_mid_calibration_leaves_no_cgroup(tmp_path):
    """SIGTERM while the quota is being calibrated: the cgroup goes with the agent; after
    SIGKILL (nothing can run) the next start removes it."""
    if cgroup_problem():
        return  # no cgroup can be made here: nothing to leave behind (the test above)
    from dnntune.profiling.cgroups import find_backend

    preset = write_preset(tmp_path, "slow_phone", 150.0)
    for how in (signal.SIGTERM, signal.SIGKILL):
        agent = start_agent("--emulate", f"{preset}:quota")
        try:
            for line in agent.stderr:  # "dnntune: calibrating slow_phone: ..."
                if line.startswith("dnntune: calibrating"):
                    break
            deadline = 60
            import time

            while not our_cgroups(agent.pid) and deadline:  # confined, now calibrating
                time.sleep(0.1)
                deadline -= 1
            assert our_cgroups(agent.pid), "the agent never made its cgroup"
            agent.send_signal(how)
            agent.wait(60)
        finally:
            agent.kill()
            agent.wait()
        if how == signal.SIGTERM:
            assert agent.returncode != 0 and our_cgroups(agent.pid) == []
        else:
            assert our_cgroups(agent.pid) != []  # SIGKILL: nothing ran on the way out
            find_backend().remove_stale()  # what every emulated start does first
            assert our_cgroups(agent.pid) == []


def test_agent_refuses_unknown_and_unusable_presets():
    assert_one_line_error(run_cli(["agent", "--port", "0", "--emulate", "nokia3310"]),
                          "'nokia3310' not found", "dnntune_phone")
    assert_one_line_error(run_cli(["agent", "--port", "0", "--emulate", "raspberry_pi4"]),
                          "no 'emulation.reference'")


def without_cgroups(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """As root: a private mount namespace with every cgroup hierarchy unmounted, so no
    cgroup can be written (as on a host without them). Else: as this user is."""
    env = {**os.environ, "HOME": str(tmp_path)}
    if os.geteuid() != 0:
        return [], env
    unmount = ('for m in $(grep -E " cgroup2? " /proc/self/mounts | cut -d" " -f2); do '
               'umount -l "$m"; done; exec "$@"')
    return ["unshare", "--mount", "sh", "-c", unmount, "sh"], env


@pytest.mark.slow
def test_without_cgroup_permission_analyze_scales_and_validate_refuses(tmp_path):
    """The quota mechanism needs a cgroup: without one, analyze scales (a what-if) and
    validate refuses. Time dilation, the default, needs none: it emulates anyway."""
    prefix, env = without_cgroups(tmp_path)
    probe = subprocess.run([*prefix, sys.executable, "-c", "from dnntune.cli.pipeline import "
                            "cgroup_problem; print(cgroup_problem() or '')"],
                           capture_output=True, text=True, env=env, cwd=REPO)
    assert probe.returncode == 0, probe.stderr
    if not probe.stdout.strip():
        return  # a delegated cgroup: this user may emulate; covered by the tests above
    out = tmp_path / "run"
    analyze = [*prefix, sys.executable, "-m", "dnntune", "analyze", "--model", "tiny_mlp",
               "--num_runs", "2", "--warmup_runs", "0", "--no-plots", "--links", "wifi"]
    dilated = subprocess.run([*analyze, "--out", str(tmp_path / "dilated")],
                             capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert dilated.returncode == 0, dilated.stderr[-3000:]
    assert "cannot confine" not in dilated.stderr
    assert "device: emulated:dnntune_phone" in " ".join(dilated.stdout.split())
    result = subprocess.run([*analyze, "--emulate", "dnntune_phone:quota", "--out", str(out)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [x for x in result.stderr.splitlines() if "cannot confine" in x]
    assert len(notes) == 1 and "scaled:dnntune_phone" in notes[0]
    assert probe.stdout.strip() in notes[0]  # the reason, as the probe saw it
    assert "device: scaled:dnntune_phone" in " ".join(result.stdout.split())
    from dnntune.profiling.profile import load_profile

    device = load_profile(out / "device.json")
    assert device.meta.device_label == "scaled:dnntune_phone"
    assert device.meta.emulation is not None and device.meta.emulation["factor"] > 0
    assert device.energy.label == "estimated:dnntune_phone"
    refused = subprocess.run([*prefix, sys.executable, "-m", "dnntune", "validate", "--model",
                              "tiny_mlp", "--links", "wifi", "--emulate", "dnntune_phone:quota"],
                             capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert_one_line_error(refused, "validate: cannot emulate dnntune_phone:quota",
                          "--emulate none")


def test_emulation_round_trips_through_a_dict():
    em = Emulation(preset="p", mode="emulated", threads=1, reference_model="m",
                   reference_ms=10.0, reference_source="s", achieved_ms=10.2, native_ms=2.0,
                   quota_us=1000, period_us=5000, factor=5.1)
    assert Emulation.from_dict(em.to_dict()) == em
    assert em.to_dict()["share_cpus"] == 0.2 and em.label == "emulated:p"
    assert dataclasses.replace(em, mode="scaled").label == "scaled:p"


def test_profile_refuses_emulate_on_the_cloud_side_or_remotely():
    assert_one_line_error(run_cli(["profile", "--model", "tiny_mlp", "--side", "cloud",
                                   "--emulate", "dnntune_phone"]), "--emulate goes with")
    assert_one_line_error(run_cli(["profile", "--model", "tiny_mlp", "--device",
                                   "127.0.0.1:9", "--emulate", "dnntune_phone"]),
                          "--emulate goes with")


def test_profile_of_the_reference_model_says_how_far_it_drifted(tiny_profile):
    em = Emulation(preset="dnntune_phone", mode="emulated", threads=1,
                   reference_model="tiny_mlp", reference_ms=138.0, reference_source="src",
                   achieved_ms=tiny_profile.end_to_end.mean_ms / 1.09, native_ms=1.0,
                   quota_us=1000, period_us=10000, factor=10.0)
    meta = dataclasses.replace(tiny_profile.meta, emulation=em.to_dict())
    drifted = dataclasses.replace(tiny_profile, meta=meta)
    assert drifted.device_note.startswith(em.describe())
    assert drifted.device_note.endswith("in graph, +9% on its calibration")
    # Another model than the reference, or a scaled what-if: nothing to compare with.
    other = dataclasses.replace(em, reference_model="mobilenet_v2")
    for e in (other, dataclasses.replace(em, mode="scaled")):
        profile = dataclasses.replace(tiny_profile, meta=dataclasses.replace(
            tiny_profile.meta, emulation=e.to_dict()))
        assert profile.device_note == e.describe()
    assert tiny_profile.device_note == ""
