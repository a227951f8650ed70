"""Give a worker's freed heap memory back to the operating system after its tasks (glibc's ``malloc_trim``).

A worker process that interleaves large temporaries (a leaf's kernel, a split's sampled rows) with many small
allocations from its other threads (comms, Zarr's decoding threads) fragments glibc's heaps: memory the tasks have
freed stays in the process's RSS, which Dask counts as unmanaged memory against the worker's pause threshold.
Distributed's ``MALLOC_TRIM_THRESHOLD_`` only trims the top of a heap; on the tree's out-of-core fit the freed but
kept memory reached ~150 MiB per worker (BENCHMARKS.md, "The tree of leaf RFMs on out-of-core input").

``releases_freed_memory`` calls ``malloc_trim(0)`` (every arena, every free page) when a decorated task returns, at
most once per ``MIN_INTERVAL_S`` per process, so that short streamed tasks do not pay for it on every block. Where
the C library has no ``malloc_trim`` (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds between two trims in one process (a trim of a few hundred MiB of heap takes milliseconds).
MIN_INTERVAL_S = 0.5

_lock = threading.Lock()
_last = -float("inf")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:  # int malloc_trim(size_t pad): declared, so ctypes passes a full-width size_t
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory(min_interval: float = MIN_INTERVAL_S) -> bool:
    """Return the process's free heap pages to the operating system, unless this was done less than
    ``min_interval`` seconds ago or the C library cannot. True if a trim ran."""
    global _last
    trim = _malloc_trim()
    if trim is None:
        return False
    with _lock:
        now = time.monotonic()
        if now - _last < min_interval:
            return False
        _last = now
    trim(0)
    return True


def releases_freed_memory(fn: F) -> F:
    """Decorator: ``release_freed_memory()`` when a call of ``fn`` returns (or raises)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            release_freed_memory()

    return wrapper
