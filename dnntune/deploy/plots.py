"""The policy as a picture: bandwidth on x, the chosen cut on y, one line per RTT."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dnntune.deploy.policy import Policy


def plot_policy(policy: Policy, path: str | Path, after: Sequence[str | None] = ()) -> Path:
    """One panel per objective; the y axis counts layers on the phone (the cut index)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(policy.choice)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for row, rtt in enumerate(policy.rtt_ms):
            ax.step(policy.up_mbps, policy.choice[metric][row], where="post",
                    label=f"RTT {rtt:g} ms")
        ax.set_xscale("log")
        ax.set_xlabel("uplink bandwidth (Mbit/s)")
        ax.set_ylabel("cut (layers on the phone)")
        ax.set_title(f"{metric}-first on {policy.link} ({policy.radio} radio)")
        ax.set_yticks(list(policy.cuts))
        if after:
            last = len(after) - 1
            names = {0: "cloud-only", last: "mobile-only"}
            ax.set_yticklabels([f"{c} {names.get(c) or after[c]}"[:28] for c in policy.cuts],
                               fontsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
