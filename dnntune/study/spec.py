"""What a deployment study runs (:class:`StudySpec`) and its ``deployment:`` config section.

Pure: no TensorFlow, no gRPC; the CLI and the device agent both build a spec here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

FRAMEWORKS = ("tf", "litert")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class StudySpec:
    """What to run: every model × (tf fp32, litert × precisions) × threads × affinities."""

    models: tuple[str, ...]
    frameworks: tuple[str, ...] = FRAMEWORKS
    precisions: tuple[str, ...] = ("fp32", "int8")
    threads: tuple[int, ...] = (1,)
    affinities: tuple[str, ...] = ("all",)
    num_runs: int = 10
    warmup_runs: int = 2
    energy: str = "auto"
    energy_seconds: float = 1.0
    rounds: int = 1

    def variants(self) -> list[tuple[str, str]]:
        """(framework, precision) pairs: TensorFlow runs at fp32 only."""
        out = [("tf", "fp32")] if "tf" in self.frameworks else []
        return out + [("litert", p) for p in self.precisions if "litert" in self.frameworks]


SPEC_KEYS = {"models": "a list of zoo names or model files", "frameworks": "a list of tf, litert",
             "precisions": "a list of fp32, fp16, int8", "threads": "a list of integers >= 1",
             "affinities": "a list of all, big, little, mid, cores:K or CPU lists",
             "num_runs": "an integer >= 1", "warmup_runs": "an integer >= 0",
             "energy": "an --energy spec", "energy_seconds": "a number > 0",
             "rounds": "an integer >= 1"}


def load_study_spec(path: str | Path, overrides: dict[str, Any]) -> StudySpec:
    """A ``deployment:`` section of a YAML file, flags in ``overrides`` winning.

    Raises:
        ConfigError: an unknown key or a value of the wrong kind, naming file and key.
    """
    import yaml

    from dnntune.errors import ConfigError

    where = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(where, f"cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(where, f"not YAML ({str(exc).splitlines()[0]})") from None
    section = data.get("deployment") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(where, "expected a 'deployment:' mapping")
    unknown = sorted(set(section) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(where, f"unknown key 'deployment.{unknown[0]}' (expected "
                                 f"{', '.join(SPEC_KEYS)})")
    values: dict[str, Any] = {}
    for key, value in section.items():
        values[key] = _spec_value(where, key, value)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if not values.get("models"):
        raise ConfigError(where, "key 'deployment.models' is required (or --model)")
    return StudySpec(**values)


def _spec_value(where: str, key: str, value: Any) -> Any:
    from dnntune.errors import ConfigError

    bad = ConfigError(where, f"key 'deployment.{key}' must be {SPEC_KEYS[key]}, got {value!r}")
    if key in ("models", "frameworks", "precisions", "affinities"):
        if not isinstance(value, list) or not value or \
                not all(isinstance(v, str) for v in value):
            raise bad
        allowed = {"frameworks": FRAMEWORKS, "precisions": ("fp32", "fp16", "int8")}.get(key)
        if allowed and not set(value) <= set(allowed):
            raise bad
        return tuple(value)
    if key == "threads":
        if not isinstance(value, list) or not value or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise bad
        return tuple(value)
    if key in ("num_runs", "warmup_runs", "rounds"):
        if not isinstance(value, int) or isinstance(value, bool) or value < (key != "warmup_runs"):
            raise bad
        return value
    if key == "energy_seconds":
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise bad
        return float(value)
    if not isinstance(value, str):
        raise bad
    return value
