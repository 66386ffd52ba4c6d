"""A deployment bundle on disk: its manifest, and loading it with every hash checked.

Layout (``dnntune export --out DIR``)::

    manifest.json             versioned schema; every file below with its sha256
    policy.json               the run-time policy (dnntune.deploy.policy)
    policy.png                the policy as a plot
    device/model.tflite       the whole model in LiteRT (mobile-only, and the fallback)
    device/head_<cut>.tflite  the phone half of each cut the policy can choose
    cloud/<sha256>.keras      the model the cloud server runs tails of (RunTail, by sha256)

A client in another language needs only ``proto/`` and this manifest: for each cut, the
head file, its outputs in order (crossing tensors first, then model outputs computed on
the phone), and the crossing tensors' names, shapes, dtypes and wire encoding to put in
a ``RunTail`` request for ``ModelSpec.sha256`` and ``cut_index``.

This module reads JSON and hashes files; it imports no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnntune.deploy.policy import Policy, PolicyError
from dnntune.errors import DnntuneError

MANIFEST_SCHEMA = 1
MANIFEST_FILE = "manifest.json"
POLICY_FILE = "policy.json"


class BundleError(DnntuneError):
    """A bundle that is incomplete, inconsistent or tampered with."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CrossingTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    wire: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "wire": self.wire}


@dataclass(frozen=True)
class BundleCut:
    """One cut the bundle ships.

    Attributes:
        index: The cut's index in the model (0 = cloud-only, ``layers`` = mobile-only).
        after: The last layer on the phone (``None`` for cloud-only).
        head: The head's file in the bundle (``None`` for cloud-only).
        head_outputs: Names of the head's outputs, in the file's output order.
        crossing: What RunTail receives, in order (empty for mobile-only).
        outputs_on_device: Model outputs the head computes (returned with the tail's).
        predicted: Predicted ``{"latency_ms", "energy_mj"}`` per link preset.
        max_abs_error: Head + tail against the unsplit model, measured at export.
    """

    index: int
    after: str | None
    head: str | None
    head_outputs: tuple[str, ...]
    crossing: tuple[CrossingTensor, ...]
    outputs_on_device: tuple[str, ...]
    predicted: Mapping[str, Mapping[str, float]]
    max_abs_error: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "after": self.after, "head": self.head,
                "head_outputs": list(self.head_outputs),
                "crossing": [t.to_dict() for t in self.crossing],
                "outputs_on_device": list(self.outputs_on_device),
                "predicted": {k: dict(v) for k, v in self.predicted.items()},
                "max_abs_error": self.max_abs_error}


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` (see module docstring)."""

    model: Mapping[str, Any]
    precision: str
    cuts: tuple[BundleCut, ...]
    recommended: Mapping[str, Any]
    files: Mapping[str, str]
    versions: Mapping[str, str]
    profiles: Mapping[str, Any]
    created_utc: str

    @property
    def model_sha256(self) -> str:
        return str(self.model["sha256"])

    @property
    def model_file(self) -> str:
        return str(self.model["file"])

    @property
    def mobile_only(self) -> BundleCut:
        return max(self.cuts, key=lambda c: c.index)

    def cut(self, index: int) -> BundleCut:
        for c in self.cuts:
            if c.index == index:
                return c
        raise BundleError(f"cut {index} is not in the bundle (it has "
                          f"{', '.join(str(c.index) for c in self.cuts)})")

    def to_dict(self) -> dict[str, Any]:
        return {"schema": MANIFEST_SCHEMA, "model": dict(self.model),
                "precision": self.precision, "cuts": [c.to_dict() for c in self.cuts],
                "recommended": dict(self.recommended), "files": dict(self.files),
                "versions": dict(self.versions), "profiles": dict(self.profiles),
                "created_utc": self.created_utc}


@dataclass(frozen=True)
class Bundle:
    directory: Path
    manifest: Manifest
    policy: Policy

    def path(self, name: str) -> Path:
        return self.directory / name

    def read(self, name: str) -> bytes:
        """A bundle file's bytes, checked against the manifest's sha256 again."""
        data = self.path(name).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.manifest.files.get(name):
            raise BundleError(f"bundle {self.directory}: {name} changed since it was loaded "
                              "(sha256 differs from the manifest)")
        return data


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(manifest.to_dict(), indent=1, allow_nan=False) + "\n")
    return path


def load_bundle(directory: str | Path) -> Bundle:
    """Read a bundle and check it whole: schema, every file's sha256, the policy's cuts.

    Raises:
        BundleError: one line naming the bundle and the file or key that is wrong.
    """
    root = Path(directory)
    where = f"bundle {root}"
    if not root.is_dir():
        raise BundleError(f"{where}: not a folder")
    manifest_path = root / MANIFEST_FILE
    try:
        doc = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{where}: no {MANIFEST_FILE} (made by 'dnntune export'?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: cannot read {MANIFEST_FILE}: {exc}") from None
    manifest = parse_manifest(doc, f"{where}: {MANIFEST_FILE}")
    for name, digest in manifest.files.items():
        path = root / name
        if not path.is_file() or path.is_symlink():
            raise BundleError(f"{where}: {name} is missing (listed in {MANIFEST_FILE})")
        actual = sha256_file(path)
        if actual != digest:
            raise BundleError(f"{where}: {name} has sha256 {actual[:16]}..., the manifest "
                              f"says {digest[:16]}...: the file was changed or damaged")
    try:
        policy = Policy.from_dict(json.loads((root / POLICY_FILE).read_text()),
                                  f"{where}: {POLICY_FILE}")
    except json.JSONDecodeError as exc:
        raise BundleError(f"{where}: {POLICY_FILE} is not JSON: {exc}") from None
    except PolicyError as exc:
        raise BundleError(str(exc)) from None
    shipped = {c.index for c in manifest.cuts}
    missing = sorted(set(policy.cuts) - shipped)
    if missing:
        raise BundleError(f"{where}: {POLICY_FILE} chooses cut {missing[0]}, which the "
                          "bundle does not ship")
    return Bundle(root, manifest, policy)


def parse_manifest(doc: Any, where: str) -> Manifest:
    if not isinstance(doc, Mapping):
        raise BundleError(f"{where}: expected a JSON object")
    if doc.get("schema") != MANIFEST_SCHEMA:
        raise BundleError(f"{where}: schema must be {MANIFEST_SCHEMA}, got {doc.get('schema')!r}")
    model = _mapping(doc, "model", where)
    for key in ("name", "file", "sha256", "layers"):
        if key not in model:
            raise BundleError(f"{where}: model.{key} is missing")
    files = _mapping(doc, "files", where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise BundleError(f"{where}: files must map names to sha256 strings")
    for name in files:
        if name.startswith("/") or ".." in Path(name).parts:
            raise BundleError(f"{where}: files.{name}: a name inside the bundle was expected")
    if model["file"] not in files:
        raise BundleError(f"{where}: model.file {model['file']!r} is not in files")
    if files[model["file"]] != model["sha256"]:
        raise BundleError(f"{where}: model.sha256 is not the sha256 of model.file")
    raw_cuts = doc.get("cuts")
    if not isinstance(raw_cuts, list) or not raw_cuts:
        raise BundleError(f"{where}: cuts must be a non-empty list")
    layers = model["layers"]
    cuts = tuple(_cut(c, f"{where}: cuts[{i}]", layers, files) for i, c in enumerate(raw_cuts))
    if len({c.index for c in cuts}) != len(cuts):
        raise BundleError(f"{where}: cuts lists a cut twice")
    if max(c.index for c in cuts) != layers:
        raise BundleError(f"{where}: the bundle has no mobile-only cut ({layers}), "
                          "which the fallback needs")
    return Manifest(model, str(doc.get("precision", "")), cuts,
                    _mapping(doc, "recommended", where), files,
                    _mapping(doc, "versions", where), _mapping(doc, "profiles", where),
                    str(doc.get("created_utc", "")))


def _mapping(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key)
    if not isinstance(value, Mapping):
        raise BundleError(f"{where}: {key} must be an object")
    return value


def _cut(raw: Any, where: str, layers: Any, files: Mapping[str, str]) -> BundleCut:
    if not isinstance(raw, Mapping):
        raise BundleError(f"{where}: expected an object")
    index = raw.get("index")
    if not isinstance(index, int) or not isinstance(layers, int) or not 0 <= index <= layers:
        raise BundleError(f"{where}: index must be a cut of the model (0 to {layers}), "
                          f"got {index!r}")
    head = raw.get("head")
    if (head is None) != (index == 0):
        raise BundleError(f"{where}: head must name a file for every cut but cloud-only")
    if head is not None and head not in files:
        raise BundleError(f"{where}: head {head!r} is not in files")
    crossing = []
    for k, t in enumerate(raw.get("crossing") or []):
        try:
            crossing.append(CrossingTensor(str(t["name"]), tuple(int(d) for d in t["shape"]),
                                           str(t["dtype"]), str(t.get("wire", "fp32"))))
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"{where}: crossing[{k}] needs name, shape and dtype") from None
    error = raw.get("max_abs_error", 0.0)
    if not isinstance(error, (int, float)) or not math.isfinite(error):
        raise BundleError(f"{where}: max_abs_error must be a number")
    return BundleCut(index, raw.get("after"), head, tuple(raw.get("head_outputs") or ()),
                     tuple(crossing), tuple(raw.get("outputs_on_device") or ()),
                     dict(raw.get("predicted") or {}), float(error))
