"""How a validation reads: a table per link and a predicted-against-measured plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from dnntune.report.tables import sig3
from dnntune.validation.validate import LinkValidation, Validation


def print_validation(validation: Validation, console: Console | None = None) -> None:
    console = console or Console()
    if validation.predicted_note:
        console.print(f"predicted from the {validation.predicted_note}")
    for link in validation.links:
        s = link.shaping
        device = ("" if validation.device_label == "measured"
                  else f", device {validation.device_label}")
        table = Table(title=f"{validation.model}{device} on {link.name} (target up/down "
                            f"{sig3(link.up_mbps)}/{sig3(link.down_mbps)} Mbit/s, RTT "
                            f"{sig3(link.rtt_ms)} ms; emulated "
                            f"{sig3(s.get('achieved_up_mbps', 0))}/"
                            f"{sig3(s.get('achieved_down_mbps', 0))} Mbit/s, RTT "
                            f"{sig3(s.get('achieved_rtt_ms', 0))} ms)", title_justify="left")
        wired = any(c.encoding for c in link.cuts)
        columns = ["cut", "after", "bytes up", "predicted ms", "measured ms", "p90 ms", "error"]
        if wired:  # --wire: the encoding, the bytes sent and the codec times measured
            columns[2:3] = ["encoding", "bytes up (pred/sent)"]
            columns.append("enc/dec ms")
        for column in columns:
            table.add_column(column, justify="left" if column in ("after", "encoding")
                             else "right")
        best = link.predicted_best
        for c in link.cuts:
            mark = " ◀ predicted best" if c is best else ""
            cells = [str(c.index), (c.after or "(input)") + mark, f"{c.bytes_up:,}",
                     sig3(c.predicted_ms), sig3(c.measured_ms), sig3(c.measured_p90_ms),
                     f"{c.error_pct:+.1f}%"]
            if wired:
                cells[2:3] = [c.encoding, f"{c.bytes_up:,} / {c.measured_bytes_up or 0:,}"]
                cells.append(f"{sig3(c.encode_ms)} / {sig3(c.decode_ms)}")
            table.add_row(*cells)
        console.print(table)
        error = max(c.max_abs_error for c in link.cuts)
        console.print(f"{link.name}: median |error| {link.median_abs_error_pct:.1f}%, regret "
                      f"{link.regret_pct:.1f}% (predicted best {link.label(best)}, measured "
                      f"best {link.label(link.measured_best)}); outputs "
                      + (f"within {error:.2g} of the unsplit float32 model (lossy encodings "
                         "included)" if wired else
                         f"match the unsplit model within {error:.2g}"))


def plot_validation(model: str, link: LinkValidation, path: str | Path) -> Path:
    """Predicted and measured latency per cut (log scale), p90 as error bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    # one series per encoding with --wire (mobile-only, "none", joins each); else one
    encodings = list(dict.fromkeys(c.encoding for c in link.cuts if c.encoding != "none"))
    for k, encoding in enumerate(encodings):
        rows = [c for c in link.cuts if c.encoding in (encoding, "none")]
        color = f"C{k}" if len(encodings) > 1 else None
        tag = f" as {encoding}" if encoding else ""
        x = [c.index for c in rows]
        ax.plot(x, [c.predicted_ms for c in rows], "o-", color=color,
                label=f"predicted T = Tm + Tt + Tc{tag}")
        upper = np.array([c.measured_p90_ms - c.measured_ms for c in rows])
        ax.errorbar(x, [c.measured_ms for c in rows], yerr=np.vstack([upper * 0, upper]),
                    fmt="s--", capsize=3, color=color, label=f"measured mean (bar to p90){tag}")
    best = link.predicted_best
    ax.axvline(best.index, color="tab:red", linestyle=":",
               label=f"predicted best: {link.label(best)} ({best.after or 'input'})")
    ax.set_yscale("log")
    ax.set_xlabel("cut point (number of layers on the device)")
    ax.set_ylabel("end-to-end latency, ms (log scale)")
    ax.set_title(f"{model} on {link.name}: predicted vs measured; median |error| "
                 f"{link.median_abs_error_pct:.1f}%, regret {link.regret_pct:.1f}%")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = Path(path)
    fig.savefig(path)
    return path
