"""Resident memory of this process, and its peak over a stretch of work (Linux).

The peak of a stretch (an inference loop) needs the kernel's high-water mark to be reset
first: writing ``5`` to ``/proc/self/clear_refs`` sets ``VmHWM`` back to the current
``VmRSS`` (Linux 4.0+). Where that is refused, the process-lifetime peak
(``ru_maxrss``) is all there is, and :class:`PeakWindow` says so.

Example:
    >>> window = PeakWindow.start()
    >>> _ = bytearray(1 << 20)
    >>> window.growth_bytes() >= 0
    True
"""

from __future__ import annotations

import re
import resource
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kb(key: str) -> int | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def rss_bytes() -> int:
    """Resident memory now (``VmRSS``; ``ru_maxrss`` where /proc is missing)."""
    kb = _status_kb("VmRSS")
    return 1024 * (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_bytes() -> int:
    """Peak resident memory since the last reset (``VmHWM``), else since the process began."""
    kb = _status_kb("VmHWM")
    return 1024 * (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS; ``False`` where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class PeakWindow:
    """RSS when a stretch of work began; :meth:`growth_bytes` is its peak growth since."""

    start_rss_bytes: int
    reset: bool

    @classmethod
    def start(cls) -> PeakWindow:
        reset = reset_peak()
        return cls(rss_bytes(), reset)

    def growth_bytes(self) -> int:
        return max(peak_rss_bytes() - self.start_rss_bytes, 0)

    @property
    def note(self) -> str:
        return ("" if self.reset else "the peak RSS could not be reset (/proc/self/clear_refs "
                "refused), so the peak is the process's since it began")
