"""What the store keeps of each kind of record, and how a run folder is loaded.

The columns are the metadata notebooks filter on; the whole record is kept as JSON too.
:func:`record_quietly` is what the commands call after writing their files: a store
failure is one line on stderr, never a failed run.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dnntune.errors import DnntuneError
from dnntune.store.backends import StoreError
from dnntune.store.database import Store, open_store

PRECISIONS = ("fp32", "fp16", "int8")
RUN_FILES = ("device.json", "cloud.json", "analysis.json", "validation.json", "study.json")


def profile_columns(body: Mapping[str, Any]) -> dict[str, Any]:
    """The filterable metadata of a profile dict; KeyError names a missing field."""
    meta = body["meta"]
    emulation = meta.get("emulation") or {}
    framework, precision = "tensorflow", "fp32"
    cuts = body.get("measured_cuts")
    if cuts:  # "litert 2.3.0 fp32 (XNNPACK)", "LiteRT benchmark_model int8" (imported)
        words = str(cuts["framework"]).lower().split()
        framework = words[0] if words else framework
        precision = next((w for w in words if w in PRECISIONS), precision)
    return {"model_name": meta["model_name"], "model_sha256": meta["model_hash"],
            "side": meta["side"], "device_label": str(emulation.get("label", "measured")),
            "num_threads": int(meta["num_threads"]), "host": meta["host"],
            "tensorflow_version": meta["tensorflow_version"],
            "keras_version": meta["keras_version"], "dnntune_version": meta["dnntune_version"],
            "created_utc": meta["created_utc"],
            "end_to_end_mean_ms": float(body["end_to_end"]["mean_ms"]),
            "framework": framework, "precision": precision}


def validation_columns(body: Mapping[str, Any]) -> dict[str, Any]:
    links = body["links"]
    errors = sorted(float(link["median_abs_error_pct"]) for link in links)
    return {"model_name": str(body["model"]),
            "device_label": str(body.get("device_label", "measured")),
            "num_runs": int(body["num_runs"]),
            "links": ",".join(str(link["name"]) for link in links),
            "median_abs_error_pct": errors[len(errors) // 2] if errors else None}


def kind_of(body: Any) -> str | None:
    """Which record a JSON document is, by its keys (None: not one of ours)."""
    if not isinstance(body, Mapping):
        return None
    if "meta" in body and "layers" in body:
        return "profile"
    if "links" in body and "num_runs" in body and "model" in body:
        return "validation"
    if "rows" in body:
        return "study"
    if "model" in body and "objective" in body and "links" in body:
        return "analysis"
    return None


def record(store: Store, body: Mapping[str, Any], kind: str,
           profiles: Sequence[Mapping[str, Any]] = ()) -> int:
    """Store one record; an analysis first stores the device and cloud profiles it read."""
    if kind == "profile":
        return store.add_profile(body).id
    if kind == "analysis":
        ids = [store.add_profile(p).id for p in profiles] + [None, None]
        return store.add_analysis(body, ids[0], ids[1]).id
    if kind == "validation":
        return store.add_validation(body).id
    if kind == "study":  # "study": "deployment" in the body, else a frameworks study
        return store.add_study(body, str(body.get("study", "frameworks"))).id
    raise StoreError(f"store {store.url}: unknown record kind {kind!r}")


def record_quietly(body: Mapping[str, Any], url: str | None = None, kind: str = "profile",
                   profiles: Sequence[Mapping[str, Any]] = ()) -> int | None:
    """Record ``body``; on any store failure print one line on stderr and go on.

    ``$DNNTUNE_NO_STORE`` (any value) turns recording off.
    """
    if os.environ.get("DNNTUNE_NO_STORE"):
        return None
    try:
        with open_store(url) as store:
            return record(store, body, kind, profiles)
    except (DnntuneError, OSError, KeyError, TypeError, ValueError) as exc:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        detail = str(exc) if isinstance(exc, DnntuneError) else f"{kind}: {exc!r}"
        print(f"dnntune: {stamp} not recorded in the store: {detail}", file=sys.stderr)
        return None


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DnntuneError(f"{path}: not a readable JSON file ({exc})") from None


def import_path(store: Store, path: str | Path) -> list[tuple[str, str, int, bool]]:
    """Load one JSON file or a run folder (``analyze --out``, ``validate --out``,
    ``study --out``): ``(file, kind, id, created)`` per record stored."""
    path = Path(path)
    if path.is_dir():
        files = [path / name for name in RUN_FILES if (path / name).is_file()]
        if not files:
            raise DnntuneError(f"{path}: no run files in it (expected one of "
                               f"{', '.join(RUN_FILES)})")
    else:
        files = [path]
    done: list[tuple[str, str, int, bool]] = []
    ids: dict[str, int] = {}
    for file in files:
        body = load_json(file)
        kind = kind_of(body)
        if kind is None:
            raise DnntuneError(f"{file}: not a dnntune profile, analysis, validation or "
                               "study (expected the keys 'meta' and 'layers', 'rows', or "
                               "'model' and 'links')")
        try:
            if kind == "analysis":
                stored = store.add_analysis(body, ids.get("device.json"), ids.get("cloud.json"))
            elif kind == "profile":
                stored = store.add_profile(body)
            elif kind == "validation":
                stored = store.add_validation(body)
            else:
                stored = store.add_study(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise DnntuneError(f"{file}: not a dnntune {kind} (bad or missing {exc})") from None
        ids[file.name] = stored.id
        done.append((str(file), kind, stored.id, stored.created))
    return done
