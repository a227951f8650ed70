"""One BLAS thread inside block tasks, so results do not depend on how many BLAS threads a worker has.

A float32 GEMM's rounding depends on how BLAS splits it across threads, and an ill-conditioned kernel solve
amplifies that ulp-level difference (about 1e-4 relative in predictions at reg=1e-3). Worker processes already run
BLAS single-threaded (distributed sets OMP_NUM_THREADS=1); this applies the same rule to the threads of an
in-process cluster, and keeps Dask's threads from oversubscribing the cores.

OpenBLAS's thread count is process-wide, and a task that starts while another holds the limit records 1 as the
count to restore: concurrent tasks can leave the process at one BLAS thread. ``restore_blas_threads`` resets the
count to what it was when this module was imported; the estimators call it when a fit or a prediction ends.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, TypeVar

from threadpoolctl import ThreadpoolController

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_controller: ThreadpoolController | None = None


def _blas_controller() -> ThreadpoolController:
    global _controller
    with _lock:
        if _controller is None:
            _controller = ThreadpoolController()
        return _controller


_ORIGINAL_THREADS = max((info["num_threads"] for info in ThreadpoolController().select(user_api="blas").info()), default=1)


def restore_blas_threads() -> None:
    """Put BLAS back to the thread count it had at import (call when no block task is running in this process)."""
    _blas_controller().limit(limits=_ORIGINAL_THREADS, user_api="blas")


def single_blas_thread(fn: F) -> F:
    """Decorator: run ``fn`` with BLAS limited to one thread in the calling thread, restored afterwards."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _blas_controller().limit(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper
