"""``dnntune export``: from profiles to a bundle an app and a server can run.

The phone halves are LiteRT models of each cut (:func:`dnntune.litert.profile.head_tflite`,
the same replayed heads the LiteRT profiler converts); only cuts that exist in LiteRT
(the layer map of the whole model's conversion) are candidates. The cloud half is the
model file itself: the server builds the tail of any cut from it (``RunTail`` with
``ModelSpec.sha256`` and ``cut_index``). At export every shipped cut is run once, LiteRT
head then Keras tail, and its largest difference from the unsplit model is recorded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dnntune.analysis.costs import CostOptions, prefix_table
from dnntune.analysis.links import Link
from dnntune.analysis.partition import Objective, analyze_profiles, best_indices
from dnntune.deploy.bundle import (
    POLICY_FILE,
    BundleCut,
    CrossingTensor,
    Manifest,
    sha256_file,
    write_manifest,
)
from dnntune.deploy.policy import (
    DEFAULT_HYSTERESIS,
    DEFAULT_RTT_MS,
    DEFAULT_UP_MBPS,
    build_policy,
    chosen_cuts,
)
from dnntune.errors import DnntuneError


def export_bundle(loaded: Any, device: Any, cloud: Any, out: str | Path, *,
                  precision: str = "fp32", policy_link: Link, links: Sequence[Link],
                  objective: Objective, options: CostOptions,
                  up_mbps: Sequence[float] = DEFAULT_UP_MBPS,
                  rtt_ms: Sequence[float] = DEFAULT_RTT_MS,
                  hysteresis: float = DEFAULT_HYSTERESIS,
                  progress: Callable[[str], None] | None = None) -> Manifest:
    """Write a bundle into ``out`` (created; must not exist or be empty).

    Args:
        loaded: The :class:`~dnntune.model.loading.LoadedModel` the profiles are of.
        device, cloud: Its device and cloud profiles.
        policy_link: The preset whose downlink and radio power the policy assumes.
        links: Presets to predict each shipped cut's T and E on (manifest).

    Raises:
        DnntuneError: the model is not the profiled one, a profile holds only measured
            cuts, or a conversion fails.
    """
    from dnntune.litert.convert import check_precision, convert_model
    from dnntune.litert.profile import head_tflite
    from dnntune.model.loading import model_hash
    from dnntune.model.split import Splitter
    from dnntune.model.tf_graph import require_keras

    require_keras(loaded, "export")
    say = progress or (lambda _text: None)
    check_precision(precision)
    if device.measured_cuts is not None:
        raise DnntuneError("export needs a device profile with per-layer times (dnntune "
                           "profile); a profile measured at chosen cuts is not supported yet")
    if model_hash(loaded.model) != device.meta.model_hash:
        raise DnntuneError(f"the model {loaded.name} is not the one the device profile was "
                           f"measured on (model hash differs); export with the same model "
                           f"file, input shape and seed")
    target = _empty_dir(out)
    analysis = analyze_profiles(device, cloud, list(links) or [policy_link], objective,
                                options, dag=False)
    inputs, options = analysis.inputs, analysis.options
    layers = len(loaded.graph.layers)

    say(f"converting {loaded.name} to LiteRT ({precision})")
    whole = convert_model(loaded, precision)
    candidates = sorted(set(whole.layer_map.surviving) | {0, layers})
    policy = build_policy(inputs, policy_link, options, candidates, up_mbps, rtt_ms,
                          hysteresis=hysteresis)
    per_link = {link.name: _best(inputs, link, options, objective, candidates)
                for link in links}
    shipped = sorted(set(chosen_cuts(policy)) | set(per_link.values()) | {0, layers})
    policy = dataclasses.replace(policy, cuts=tuple(shipped))

    (target / "device").mkdir()
    (target / "cloud").mkdir()
    files: dict[str, bytes | Path] = {"device/model.tflite": whole.tflite}
    splitter = Splitter(loaded.model, loaded.graph)
    heads: dict[int, str] = {layers: "device/model.tflite"}
    for index in shipped:
        if 0 < index < layers:
            say(f"converting the head at cut {index} ({inputs.after[index]})")
            name = f"device/head_{index:04d}.tflite"
            files[name] = head_tflite(loaded, splitter, index, precision)
            heads[index] = name
    model_file = _model_file(loaded, target)
    digest = sha256_file(target / model_file)
    final = target / "cloud" / f"{digest}.keras"
    (target / model_file).rename(final)
    model_file = f"cloud/{final.name}"
    for name, data in files.items():
        (target / name).write_bytes(data if isinstance(data, bytes) else data.read_bytes())

    say("checking every shipped cut against the unsplit model")
    reference_in = loaded.example_inputs()
    reference = splitter.split(0).run(reference_in)
    cuts = []
    for index in shipped:
        split = splitter.split(index)
        error = _composed_error(split, heads.get(index), target, reference_in, reference)
        predicted = {}
        for link in links:
            table = prefix_table(inputs, link, options)
            predicted[link.name] = {"latency_ms": round(float(table.latency_ms[index]), 3),
                                    "energy_mj": round(float(table.energy_mj[index]), 3)}
        crossing = tuple(CrossingTensor(t.name, tuple(t.shape), t.dtype)
                         for t in split.cut.tensors) if index < layers else ()
        head_outputs = (split.head_outputs if 0 < index < layers
                        else tuple(loaded.graph.model_outputs) if index == layers else ())
        cuts.append(BundleCut(index, inputs.after[index], heads.get(index), head_outputs,
                              crossing, tuple(n for n in split.model_outputs
                                              if n not in split.tail_outputs)
                              if index > 0 else (), predicted, error))

    policy_doc = policy.to_dict()
    (target / POLICY_FILE).write_text(json.dumps(policy_doc, separators=(",", ":")) + "\n")
    from dnntune.deploy.plots import plot_policy

    plot_policy(policy, target / "policy.png", inputs.after)
    listed = [model_file, *files, POLICY_FILE, "policy.png"]
    manifest = Manifest(
        model={"name": loaded.name, "file": model_file, "sha256": digest,
               "model_hash": device.meta.model_hash, "layers": layers,
               "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in
                          zip(loaded.graph.model_inputs, loaded.input_shapes,
                              loaded.input_dtypes, strict=True)],
               "outputs": list(loaded.graph.model_outputs), "seed": loaded.seed},
        precision=precision, cuts=tuple(cuts),
        recommended={"objective": objective.primary, "link": policy_link.name,
                     "index": _best(inputs, policy_link, options, objective, candidates),
                     "per_link": per_link, "radio": options.radio},
        files={name: sha256_file(target / name) for name in listed},
        versions=_versions(),
        profiles={"device": device.meta.device_label, "device_note": device.meta.device_note,
                  "device_created_utc": device.meta.created_utc,
                  "cloud_created_utc": cloud.meta.created_utc,
                  "energy": device.energy.label},
        created_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    write_manifest(target, manifest)
    return manifest


def _best(inputs: Any, link: Link, options: CostOptions, objective: Objective,
          candidates: Sequence[int]) -> int:
    table = prefix_table(inputs, link, options)
    mask = np.full(len(inputs.after), np.inf)
    mask[list(candidates)] = 0.0
    return int(best_indices(table.latency_ms + mask, table.energy_mj + mask, objective))


def _model_file(loaded: Any, target: Path) -> str:
    """Copy the model's file into the bundle (or save the in-memory model there)."""
    name = "cloud/model.keras"
    if loaded.file and str(loaded.file).endswith(".keras"):
        shutil.copyfile(loaded.file, target / name)
    else:
        loaded.model.save(target / name)
    return name


def _composed_error(split: Any, head: str | None, target: Path, inputs: list[np.ndarray],
                    reference: list[np.ndarray]) -> float:
    from dnntune.litert.convert import interpreter
    from dnntune.litert.profile import run_litert

    held = dict(zip(split.model_inputs, inputs, strict=True))
    if head is not None:
        outs = run_litert(interpreter((target / head).read_bytes()), inputs)
        names = split.head_outputs if split.tail is not None else split.model_outputs
        held.update(zip(names, outs, strict=True))
    if split.tail is not None:
        held.update(zip(split.tail_outputs,
                        split.run_tail([held[n] for n in split.tail_inputs]), strict=True))
    return float(max(np.max(np.abs(np.asarray(held[n], dtype=np.float64)
                                   - np.asarray(r, dtype=np.float64)))
                     for n, r in zip(split.model_outputs, reference, strict=True)))


def _empty_dir(out: str | Path) -> Path:
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DnntuneError(f"--out {target}: exists and is not an empty folder; a bundle is "
                           "written into a new folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DnntuneError(f"--out {target}: cannot create it ({exc.strerror})") from None
    return target


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("dnntune", "tensorflow", "keras", "ai-edge-litert", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


__all__ = ["export_bundle"]
