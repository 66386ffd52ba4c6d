"""A profiling campaign of CFS-quota devices without cgroup permission still runs: device
profiles scaled to each preset and labelled so (the emulated path, by time dilation,
which needs no cgroup, runs in tests/test_notebooks.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dnntune.cli.pipeline import cgroup_problem

CAMPAIGN = """
import json
from dnntune.cli.campaign import CampaignSettings, profile_campaign
c = profile_campaign(["pixel1:quota"], ["tiny_mlp"],
                     CampaignSettings(num_runs=3, warmup_runs=1))
device = c.device["pixel1:quota"]["tiny_mlp"]
print(json.dumps({"label": device.meta.device_label, "note": c.note,
                  "devices": c.devices, "energy": device.energy.label,
                  "cloud": c.cloud["tiny_mlp"].meta.device_label,
                  "factor": device.meta.emulation["factor"]}))
"""


def without_cgroups(argv: list[str]) -> list[str]:
    """``argv`` in a process that cannot confine itself: as root, in a private mount
    namespace with the cgroup hierarchies unmounted (the host's are untouched)."""
    if cgroup_problem() is not None:
        return argv  # already no permission here (not root, no delegation)
    assert os.geteuid() == 0, "cgroups are writable but not as root: delegated?"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'umount -R /sys/fs/cgroup && exec "$@"', "sh", *argv]


@pytest.mark.slow
def test_without_cgroup_permission_devices_are_scaled_and_labelled() -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(without_cgroups([sys.executable, "-c", CAMPAIGN]),
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["label"] == "scaled:pixel1"
    assert result["note"]  # says why
    assert result["devices"]["pixel1:quota"].startswith("scaled:pixel1: this machine's timings x")
    assert "what-if" in result["devices"]["pixel1:quota"]
    assert result["energy"] == "estimated:pixel1"
    assert result["cloud"] == "measured"
    assert result["factor"] > 0
