"""A profiling campaign: several models on several emulated device presets and the cloud.

For studies that compare devices (``notebooks/phone_study.ipynb``). With cgroup
permission, one device agent per preset runs in its own child process, confined to its
calibrated CPU share (``emulated:<preset>``), all started together so their start-up and
calibration overlap; the models are then profiled on each agent in turn, through gRPC,
and on one local cloud server. Without permission each device profile comes from
``dnntune profile --emulate <preset>`` in a child process, which scales this machine's
timings to the preset (``scaled:<preset>``, a what-if), and :attr:`Campaign.note` says
why.

Example:
    >>> # campaign = profile_campaign(["dnntune_phone", "pixel1"], ["mobilenet_v2"])
    >>> # campaign.device["pixel1"]["mobilenet_v2"].meta.device_label
    >>> # 'emulated:pixel1'
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dnntune.config import RunConfig, SideConfig
from dnntune.errors import DnntuneError
from dnntune.model.loading import DEFAULT_SEED
from dnntune.profiling.profile import Profile, load_profile


@dataclass(frozen=True)
class CampaignSettings:
    """How much to measure.

    Attributes:
        num_runs, warmup_runs: Timed and untimed runs per profile, on every side.
        cloud_threads: Intra-op threads of the local cloud server.
        seed: Model seed (both sides load the same bytes).
    """

    num_runs: int = 20
    warmup_runs: int = 3
    cloud_threads: int = 2
    seed: int = DEFAULT_SEED


@dataclass(frozen=True)
class Campaign:
    """What :func:`profile_campaign` measured.

    Attributes:
        device: Per preset, per model: the device profile (labelled ``emulated:`` or
            ``scaled:<preset>``).
        cloud: Per model: the cloud profile.
        devices: Per preset: one line on how it was emulated (share and reference) or
            scaled.
        note: Why the devices are scaled rather than emulated ("" when emulated).
    """

    device: Mapping[str, Mapping[str, Profile]]
    cloud: Mapping[str, Profile]
    devices: Mapping[str, str] = field(default_factory=dict)
    note: str = ""


def profile_campaign(presets: Sequence[str], models: Sequence[str],
                     settings: CampaignSettings | None = None,
                     report: Callable[[str], None] | None = None) -> Campaign:
    """Profile every model on every preset's emulated device and on the cloud.

    Device profiles are taken with the cloud idle, then the cloud profiles.

    Args:
        presets: Device presets with an ``emulation:`` section (``configs/devices``).
        models: Zoo model names.
        settings: Runs and threads (defaults: :class:`CampaignSettings`).
        report: Called with one line per step (e.g. ``print``).

    Raises:
        DnntuneError: an unknown preset or model, or an emulation out of reach.
    """
    from dnntune.cli.pipeline import cgroup_problem, local_cloud_server
    from dnntune.profiling.devices import split_emulate

    settings = settings or CampaignSettings()
    say = report or (lambda line: None)
    # Only the CFS quota needs a cgroup; time dilation (the default) runs anywhere.
    quota = any(split_emulate(p)[1] == "quota" for p in presets)
    problem = cgroup_problem() if quota else None
    with local_cloud_server(settings.cloud_threads) as cloud_address:
        if problem is None:
            device, devices = _profile_emulated(presets, models, settings, say)
        else:
            say(f"cannot confine a device agent ({problem}): device timings are this "
                f"machine's scaled to each preset (scaled:<preset>), a what-if")
            device, devices = _profile_scaled(presets, models, settings, say)
        cloud = {model: _profile_on("cloud", cloud_address, model, None, settings, say)
                 for model in models}
    return Campaign(device, cloud, devices, "" if problem is None else problem)


def _profile_emulated(presets: Sequence[str], models: Sequence[str],
                      settings: CampaignSettings, say: Callable[[str], None]
                      ) -> tuple[dict[str, dict[str, Profile]], dict[str, str]]:
    from dnntune.cli.pipeline import local_emulated_agents

    say(f"starting and calibrating {len(presets)} emulated device agent(s): "
        f"{', '.join(presets)}")
    start = time.perf_counter()
    with local_emulated_agents(list(presets)) as agents:
        devices = {p: described for p, (_, described) in zip(presets, agents, strict=True)}
        say(f"agents ready in {time.perf_counter() - start:.0f} s")
        for described in devices.values():
            say(f"emulated device: {described}")
        device = {p: {m: _profile_on("device", address, m, p, settings, say) for m in models}
                  for p, (address, _) in zip(presets, agents, strict=True)}
    return device, devices


def _profile_on(side: str, address: str, model: str, preset: str | None,
                settings: CampaignSettings, say: Callable[[str], None]) -> Profile:
    from dnntune.cli.pipeline import Access, emulated_device_config, profile_side

    config = RunConfig(model=model, seed=settings.seed, num_runs=settings.num_runs,
                       warmup_runs=settings.warmup_runs,
                       device=SideConfig(emulate=preset),
                       cloud=SideConfig(threads=settings.cloud_threads, energy="none"))
    if preset:
        config = emulated_device_config(config)
    start = time.perf_counter()
    profile = profile_side(side, address, config, Access(), _silent)
    say(f"{model} on {preset or 'cloud'}: {profile.end_to_end.mean_ms:.3g} ms end to end "
        f"({profile.meta.device_label if side == 'device' else 'measured'}; profiled in "
        f"{time.perf_counter() - start:.0f} s)")
    return profile


@contextlib.contextmanager
def _silent(what: str) -> Iterator[Callable[[str, int, int], None]]:
    yield lambda *args: None


def _profile_scaled(presets: Sequence[str], models: Sequence[str],
                    settings: CampaignSettings, say: Callable[[str], None]
                    ) -> tuple[dict[str, dict[str, Profile]], dict[str, str]]:
    """Each (preset, model) by ``dnntune profile --emulate`` in a child process, which
    runs with the preset's threads and scales to its reference (no cgroup here)."""
    device: dict[str, dict[str, Profile]] = {}
    devices: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="dnntune-campaign-") as tmp:
        for preset in presets:
            device[preset] = {}
            for model in models:
                out = Path(tmp) / f"{preset}-{model}.json"
                argv = [sys.executable, "-m", "dnntune", "profile", "--model", model,
                        "--side", "device", "--emulate", preset,
                        "--num_runs", str(settings.num_runs),
                        "--warmup_runs", str(settings.warmup_runs), "--out", str(out),
                        "--format", "json"]
                done = subprocess.run(argv, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    raise DnntuneError(f"profiling {model} as scaled:{preset} failed: {last}")
                profile = load_profile(out)
                device[preset][model] = profile
                devices[preset] = profile.device_note
                say(f"{model} on {preset}: {profile.end_to_end.mean_ms:.3g} ms end to end "
                    f"({profile.meta.device_label})")
    return device, devices

