"""Memory reserved by the calls in progress, so their sum stays within the budget.

Every call that builds or runs a model reserves its estimate
(:func:`dnntune.model.memory.estimate_memory`) for as long as it runs. One request over
the limit, or one that would take the calls in progress past it, is refused with
RESOURCE_EXHAUSTED before anything is built; the message names the estimate and the
limit. Thread-safe.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from dnntune.model.memory import MemoryEstimate
from dnntune.rpc.limits import LimitError

MIB = 1 << 20


class MemoryBudget:
    """At most ``limit_bytes`` of estimated model memory, per call and in all."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._held

    @contextlib.contextmanager
    def reserve(self, estimate: MemoryEstimate, what: str) -> Iterator[None]:
        """Hold ``estimate`` while the block runs; LimitError if it does not fit."""
        need = estimate.peak_bytes
        limit = f"{self.limit_bytes // MIB:,} MiB (--max-request-memory-mb)"
        if need > self.limit_bytes:
            raise LimitError(f"{what} needs an estimated {estimate.describe()}; this "
                             f"server's limit is {limit}")
        with self._lock:
            if self._held + need > self.limit_bytes:
                raise LimitError(f"{what} needs an estimated {need // MIB:,} MiB and calls in "
                                 f"progress hold {self._held // MIB:,} MiB of this server's "
                                 f"{limit}; retry when they have finished")
            self._held += need
        try:
            yield
        finally:
            with self._lock:
                self._held -= need
