"""One BLAS thread inside block tasks, so results do not depend on how many BLAS threads a worker has.

A float32 GEMM's rounding depends on how BLAS splits it across threads, and an ill-conditioned kernel solve
amplifies that ulp-level difference (about 1e-4 relative in predictions at reg=1e-3). Worker processes already run
BLAS single-threaded (distributed sets OMP_NUM_THREADS=1); this applies the same rule to the threads of an
in-process cluster, and keeps Dask's threads from oversubscribing the cores.

OpenBLAS's thread count is process-wide (pthreads layer), so the limit is reference-counted: the first task to start
sets one thread, and the count in force before it is restored only when the last running task ends. (A per-call
limit would let one task's exit restore several threads while another task is still mid-GEMM, and threadpoolctl
ignores limits set by any thread but the first one to set one.)
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, TypeVar

from threadpoolctl import ThreadpoolController

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_controller: ThreadpoolController | None = None
_running = 0
_restore_to: int = 1


def _blas() -> ThreadpoolController:
    global _controller
    _controller = _controller or ThreadpoolController()
    return _controller.select(user_api="blas")


def _release_ownership(blas: ThreadpoolController) -> None:
    for lib in blas.lib_controllers:
        release = getattr(type(lib), "clear_controlling_thread", None)
        if release is not None:
            release(force=True)


def _set_blas_threads(blas: ThreadpoolController, count: int) -> None:
    """Set the process's BLAS thread count (call under ``_lock``).

    threadpoolctl lets only one "controlling" thread change a process-wide (pthreads) OpenBLAS pool and silently
    ignores the others; Dask's worker threads take turns here, so the ownership is released around each change.
    """
    _release_ownership(blas)
    blas.limit(limits=count)
    _release_ownership(blas)


def _enter() -> None:
    global _running, _restore_to
    with _lock:
        if _running == 0:
            blas = _blas()
            _restore_to = max((lib["num_threads"] for lib in blas.info()), default=1)
            _set_blas_threads(blas, 1)
        _running += 1


def _exit() -> None:
    global _running
    with _lock:
        _running -= 1
        if _running == 0:
            _set_blas_threads(_blas(), _restore_to)


def single_blas_thread(fn: F) -> F:
    """Decorator: BLAS runs on one thread in this process while any call of a decorated function is running."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _enter()
        try:
            return fn(*args, **kwargs)
        finally:
            _exit()

    return wrapper
