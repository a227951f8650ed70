"""One BLAS thread inside block tasks, so results do not depend on how many BLAS threads a worker has.

A float32 GEMM's rounding depends on how BLAS splits it across threads, and an ill-conditioned kernel solve
amplifies that ulp-level difference (about 1e-4 relative in predictions at reg=1e-3). Worker processes already run
BLAS single-threaded (distributed sets OMP_NUM_THREADS=1); this applies the same rule to threads of an in-process
cluster, and keeps Dask's threads from oversubscribing the cores. The limit is process-wide, so it is reference
counted: it is set when the first task enters and restored when the last one leaves.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, TypeVar

from threadpoolctl import ThreadpoolController

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_active = 0
_restore: Any = None
_controller: ThreadpoolController | None = None


def _enter() -> None:
    global _active, _restore, _controller
    with _lock:
        if _active == 0:
            _controller = _controller or ThreadpoolController()
            _restore = _controller.limit(limits=1, user_api="blas")
        _active += 1


def _exit() -> None:
    global _active, _restore
    with _lock:
        _active -= 1
        if _active == 0 and _restore is not None:
            _restore.restore_original_limits()
            _restore = None


def single_blas_thread(fn: F) -> F:
    """Decorator: run ``fn`` with BLAS limited to one thread (reference counted across concurrent tasks)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _enter()
        try:
            return fn(*args, **kwargs)
        finally:
            _exit()

    return wrapper
