"""glibc's allocator, told to keep multi-MB buffers that are freed and allocated again.

A tensor crossing gRPC is several fresh multi-MB buffers per call (gRPC's slices, the
Python ``bytes`` of each message). Above glibc's mmap threshold each is new pages from the
kernel and each page faults on first touch; freed, it goes back at once (and buffers in
the threads' arenas are trimmed back too). On loopback a 5 MB echo faulted 1,751-4,194
pages a call, and took 1.5-2.7x as long as with the buffers kept (docs/transport.md).

:func:`keep_transfer_buffers` raises the mmap threshold to glibc's maximum (32 MiB) and
the trim threshold to :data:`TRIM_THRESHOLD_BYTES`: freed buffers stay in the heap and
are reused by the next call, with no fault. The price is memory: up to that much free
memory per arena may stay resident (figures: docs/transport.md). Allocations over
32 MiB are still fresh pages, given back when freed. A profile's memory fields are
measured as before (peak resident growth over what the process holds); a server that
kept freed buffers may hold some of what an inference then reuses (measured on
MobileNetV2: no change, docs/transport.md).

On a libc without ``mallopt`` (musl, macOS) this does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's ceiling on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 128 << 20

_lock = threading.Lock()
_kept: list[bool] = []  # whether keep_transfer_buffers took effect, once called


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def keep_transfer_buffers() -> bool:
    """Keep freed multi-MB buffers for reuse in this process (once); ``True`` if the
    allocator took both settings."""
    with _lock:
        if not _kept:
            libc = _libc()
            _kept.append(libc is not None
                         and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                         and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
        return _kept[0]
