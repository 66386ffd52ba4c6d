"""The output folder of a run: both profiles, the analysis, every cut as CSV, and plots.

Layout of a run folder (default ``./dnntune-runs/<model>-<UTC time>/``)::

    device.json      profile measured on the phone (dnntune.profiling.profile schema)
    cloud.json       profile measured on the cloud server
    analysis.json    the analyzer's JSON, as ``dnntune analyze --format json``
    cuts.csv         one row per link x cut with every cut field
    plots/<link>-{latency,energy,pareto,uplink}.png

:func:`write_run` writes it; :func:`save_partial_profile` keeps one side's profile when
the run fails before the other side is measured; :func:`load_run` reads a folder back
for notebooks, with pandas DataFrames.

Example:
    >>> # files = write_run(default_run_dir("mobilenet_v2"), device, cloud, analysis)
    >>> # run = load_run(files.directory); run.summary()
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnntune.analysis.partition import CUT_FIELDS, Analysis
from dnntune.errors import DnntuneError
from dnntune.profiling.profile import Profile, load_profile, profile_to_dataframe, save_profile

if TYPE_CHECKING:
    import pandas as pd

RUNS_ROOT = "dnntune-runs"
SIDES = ("device", "cloud")
ANALYSIS_FILE = "analysis.json"
CUTS_FILE = "cuts.csv"
PLOTS_DIR = "plots"
RUN_ENTRIES = frozenset({*(f"{side}.json" for side in SIDES), ANALYSIS_FILE, CUTS_FILE,
                         PLOTS_DIR})
CSV_FIRST = ("link", *CUT_FIELDS, "bytes_down", "call_mj", "up_mj", "down_mj", "wait_mj",
             "tail_mj", "idle_mj", "best", "pareto", "radio", "up_power_label",
             "down_power_label")


@dataclass(frozen=True)
class RunFiles:
    """What :func:`write_run` wrote (absolute paths)."""

    directory: Path
    device: Path
    cloud: Path
    analysis: Path
    cuts: Path
    plots: tuple[Path, ...] = ()

    def all(self) -> list[Path]:
        """Every file written, data first, then plots."""
        return [self.device, self.cloud, self.analysis, self.cuts, *self.plots]


def default_run_dir(model_name: str, root: str | Path = RUNS_ROOT,
                    now: datetime | None = None) -> Path:
    """``<root>/<model>-<UTC time YYYYmmddTHHMMSSZ>``, not yet created.

    A folder of that name that already exists gets a ``-2``, ``-3``... suffix, so two
    runs in the same second do not mix their files.

    Example:
        >>> default_run_dir("mobilenet_v2", now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
        PosixPath('dnntune-runs/mobilenet_v2-20260102T030405Z')
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._") or "model"
    base = Path(root) / f"{safe}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def save_partial_profile(out_dir: str | Path, profile: Profile, side: str) -> Path:
    """Write one side's profile as ``<out_dir>/<side>.json`` as soon as it is measured.

    Call it after each side is profiled, so that a run that fails later (the cloud
    server dies, a link file is bad) keeps what was measured; :func:`write_run`
    later writes the same file names.

    Args:
        out_dir: The run folder (created if missing).
        profile: The profile just measured.
        side: ``"device"`` or ``"cloud"``: the role, which names the file.

    Returns:
        The path written.

    Example:
        >>> # save_partial_profile(out, device_profile, "device")  # out/device.json
    """
    if side not in SIDES:
        raise DnntuneError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    return save_profile(profile, Path(out_dir) / f"{side}.json").resolve()


def write_run(out_dir: str | Path, device: Profile, cloud: Profile, analysis: Analysis,
              *, plots: bool = True, staging: str | Path | None = None) -> RunFiles:
    """Write a complete run folder (see the module docstring for the layout), whole or
    not at all.

    Everything is written into a staging folder beside ``out_dir`` (profiles first), which
    then takes ``out_dir``'s place: a reader never sees half a run, and an earlier run in
    ``out_dir`` is replaced whole, never mixed with this one. If writing fails, the
    staging folder stays and the error names it.

    Args:
        out_dir: The run folder: new, empty, or an earlier run folder (replaced whole); a
            folder holding anything else is refused (:func:`check_run_target`).
        device, cloud: The profiles the analysis was made from.
        analysis: The result of :func:`~dnntune.analysis.partition.analyze_profiles`.
        plots: Also draw every plot of :mod:`dnntune.report.plots` for every link.
        staging: The staging folder (from :func:`staging_dir`) if the caller already
            keeps partial profiles there; a new one otherwise.

    Returns:
        The paths written, inside ``out_dir``.

    Example:
        >>> # files = write_run("out", device, cloud, analysis); files.all()
    """
    target = Path(out_dir).resolve()
    check_run_target(target, "run folder")
    stage = Path(staging) if staging is not None else staging_dir(target)
    try:
        save_partial_profile(stage, device, "device")
        save_partial_profile(stage, cloud, "cloud")
        _write_text(stage / ANALYSIS_FILE,
                    json.dumps(analysis.to_dict(), indent=1, allow_nan=False))
        write_cuts_csv(analysis, stage / CUTS_FILE)
        plot_paths: list[Path] = []
        if plots:
            from dnntune.report.plots import plot_analysis

            plot_paths = plot_analysis(analysis, stage / PLOTS_DIR)
        publish_run(stage, target)
    except OSError as exc:
        raise DnntuneError(f"run folder {target}: writing failed ({exc.strerror}); what was "
                           f"written is in {stage}") from None
    return RunFiles(target, target / "device.json", target / "cloud.json",
                    target / ANALYSIS_FILE, target / CUTS_FILE,
                    tuple(target / PLOTS_DIR / p.name for p in plot_paths))


def staging_dir(out_dir: str | Path) -> Path:
    """A new folder ``<out_dir>.incomplete-<pid>[-N]`` beside ``out_dir``, where a run is
    written (and its partial profiles kept) until :func:`publish_run` moves it in place."""
    target = Path(out_dir).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = target.with_name(f"{target.name}.incomplete-{os.getpid()}"
                                     + (f"-{n}" if n > 1 else ""))
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise DnntuneError(f"{target.parent}: no free name for a staging folder")


def check_run_target(out_dir: str | Path, flag: str) -> Path:
    """``out_dir`` may receive a run: absent, empty, or holding only a run's files (which
    a new run replaces whole). A folder with anything else in it is refused, so a run is
    never mixed into (or replaces) a folder of other files."""
    target = Path(out_dir)
    if target.is_dir():
        others = sorted(p.name for p in target.iterdir() if p.name not in RUN_ENTRIES)
        if others:
            more = f" and {len(others) - 1} more" if len(others) > 1 else ""
            raise DnntuneError(f"{flag} {out_dir}: holds {others[0]!r}{more}, which no "
                               "dnntune run writes; name a new folder, an empty one, or an "
                               "earlier run's folder (replaced whole)")
    return target


def publish_run(staging: Path, out_dir: Path) -> Path:
    """Move the finished ``staging`` folder to ``out_dir``; an earlier run there is
    replaced whole (renamed aside first, removed once the new run is in place)."""
    check_run_target(out_dir, "run folder")  # again: the folder may have changed since
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
        os.rename(out_dir, old)
        os.rename(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out_dir)
    return out_dir


def cut_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """One dict per link x cut: the cut fields plus ``link``, ``best`` and ``pareto``."""
    rows = []
    for la in analysis.links:
        front = set(la.pareto)
        for i in range(len(la.inputs.after)):
            rows.append({"link": la.link.name, **la.cut(i), "best": i == la.best,
                         "pareto": i in front, "radio": analysis.options.radio,
                         "up_power_label": la.link.up_power_label(),
                         "down_power_label": la.link.down_power_label()})
    return rows


def write_cuts_csv(analysis: Analysis, path: str | Path) -> Path:
    """Write :func:`cut_rows` as CSV (cut 0's ``after`` is empty: nothing on the device)."""
    rows = cut_rows(analysis)
    extra = sorted({k for row in rows for k in row} - set(CSV_FIRST))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*CSV_FIRST, *extra])
        writer.writeheader()
        writer.writerows(rows)
    return tmp.replace(path)


def _write_text(path: Path, text: str) -> Path:
    """Write via a temporary file, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    return tmp.replace(path)


@dataclass(frozen=True, eq=False)
class Run:
    """A run folder read back by :func:`load_run`.

    Attributes:
        analysis: The analyzer's JSON document (``analysis.json``) as a dict.
        cuts: ``cuts.csv``: one row per link x cut.
        plots: The PNG files in ``plots/``.
    """

    directory: Path
    device: Profile
    cloud: Profile
    analysis: dict[str, Any]
    cuts: pd.DataFrame
    plots: tuple[Path, ...]

    @property
    def model(self) -> str:
        return str(self.analysis.get("model", self.device.meta.model_name))

    def layers(self) -> pd.DataFrame:
        """Per layer: device and cloud latency statistics side by side, device energy."""
        device = profile_to_dataframe(self.device)
        cloud = profile_to_dataframe(self.cloud)
        timings = [c for c in cloud.columns if c.startswith("latency_")]
        return device.rename(columns={c: f"{c}_device" for c in timings}).join(
            cloud[timings].rename(columns={c: f"{c}_cloud" for c in timings}))

    def summary(self) -> pd.DataFrame:
        """One row per link: best cut, T, E, baselines and gains (:func:`summary_frame`)."""
        return summary_frame(self.analysis)

    def plot(self, link: str, kind: str) -> Path:
        """The PNG of one link and kind (``latency``, ``energy``, ``pareto``, ``uplink``)."""
        from dnntune.report.plots import plot_filename

        path = self.directory / PLOTS_DIR / plot_filename(link, kind)
        if path not in self.plots:
            raise DnntuneError(f"{path}: no such plot in the run folder")
        return path


def load_run(directory: str | Path) -> Run:
    """Read a run folder written by :func:`write_run`.

    Raises:
        DnntuneError: naming the folder and the missing or unreadable file.

    Example:
        >>> # run = load_run("dnntune-runs/mobilenet_v2-20260102T030405Z")
        >>> # run.cuts.query("best")
    """
    import pandas as pd

    directory = Path(directory)
    if not directory.is_dir():
        raise DnntuneError(f"{directory}: no such run folder")
    for name in ("device.json", "cloud.json", ANALYSIS_FILE, CUTS_FILE):
        if not (directory / name).is_file():
            raise DnntuneError(f"{directory}: {name} is missing (an incomplete run? "
                               "profiles alone can be read with load_profile)")
    try:
        doc = json.loads((directory / ANALYSIS_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DnntuneError(f"{directory / ANALYSIS_FILE}: cannot read ({exc})") from None
    cuts = pd.read_csv(directory / CUTS_FILE, dtype={"after": "string", "link": "string"})
    cuts.attrs.update(model=doc.get("model"), objective=doc.get("objective_description"),
                      energy_label=doc.get("energy_label"))
    plots = tuple(sorted((directory / PLOTS_DIR).glob("*.png")))
    return Run(directory, load_profile(directory / "device.json"),
               load_profile(directory / "cloud.json"), doc, cuts, plots)


def summary_frame(analysis: Analysis | Mapping[str, Any]) -> pd.DataFrame:
    """One row per link: the best cut, its T and E, the baselines and the gains.

    Gains are percentages in the objective's metric (latency for latency-first):
    positive means the best cut beats the baseline. ``dag_*`` columns hold the
    DAG-optimal partition, when it was computed.

    Example:
        >>> # summary_frame(analysis)[["link", "best_after", "latency_ms", "energy_mj"]]
    """
    import pandas as pd

    doc = analysis.to_dict() if isinstance(analysis, Analysis) else analysis
    metric = "latency" if doc["objective"] == "latency-first" else "energy"
    rows = []
    for link in doc["links"]:
        best = link["best"] or {}
        last = link["mobile_only"]["index"]
        index = best.get("index")
        row: dict[str, Any] = {
            "link": link["name"], "up_mbps": link["up_mbps"], "objective": doc["objective"],
            "best_index": index,
            "best_after": (None if index is None else "cloud-only" if index == 0 else
                           "mobile-only" if index == last else best["after"]),
            "latency_ms": best.get("latency_ms"), "energy_mj": best.get("energy_mj"),
            "bytes_up": best.get("bytes_up")}
        for base in ("mobile_only", "cloud_only"):
            row[f"{base}_latency_ms"] = link[base]["latency_ms"]
            row[f"{base}_energy_mj"] = link[base]["energy_mj"]
            row[f"gain_vs_{base}_pct"] = best.get(f"{metric}_gain_vs_{base}_pct")
        dag = link.get("dag_optimal")
        if dag is not None:
            row["dag_latency_ms"], row["dag_energy_mj"] = dag["latency_ms"], dag["energy_mj"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs.update(model=doc["model"], objective=doc.get("objective_description"))
    return frame
