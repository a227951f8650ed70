"""Where row blocks live: CuPy arrays on workers with a CUDA device, NumPy elsewhere (setting ``rfm.device``).

CuPy and dask-cuda are imported inside functions only: importing rfm_dask creates no CUDA context, which would
otherwise put every worker process on device 0.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

from distributed import Client

from rfm_dask import config

#: Values of ``rfm.device``: "auto" (CuPy where the process has a CUDA device), "cpu" (NumPy), "gpu" (CuPy or error).
DEVICES = ("auto", "cpu", "gpu")


def device_setting() -> str:
    """The ``rfm.device`` setting, checked."""
    mode = str(config.get("device")).lower()
    if mode not in DEVICES:
        raise ValueError(f"rfm.device must be one of {DEVICES}, got {mode!r}")
    return mode


@functools.cache
def cuda_problem() -> str | None:
    """Why this process cannot compute with CuPy (no CuPy, no CUDA device, a driver error), or None if it can.

    Only counts the devices (cudaGetDeviceCount), which creates no CUDA context. Cached for the process.
    """
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install 'rfm_dask[gpu]')"
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - a missing driver or library surfaces as many exception types
        return f"no usable CUDA device ({type(exc).__name__}: {exc})"
    return None if count > 0 else "no CUDA device"


def cuda_available() -> bool:
    """Whether this process has CuPy and at least one CUDA device."""
    return cuda_problem() is None


def to_device(block: Any, device: str | None = None) -> Any:
    """A (b, d) row block where this process computes: ``cupy.asarray(block)`` when ``device`` (default: the
    ``rfm.device`` setting) is "gpu", or "auto" and this process has a CUDA device; the block itself otherwise."""
    mode = device or device_setting()
    if mode == "cpu" or (mode == "auto" and not cuda_available()):
        return block
    problem = cuda_problem()
    if problem is not None:
        raise RuntimeError(f"rfm.device is 'gpu' but this process cannot use the GPU: {problem}")
    import cupy

    return cupy.asarray(block)


def block_device(client: Client) -> str:
    """The ``to_device`` mode for row blocks placed through ``client``: the ``rfm.device`` setting, or "cpu" when it
    is "auto" and no worker has a CUDA device (then the blocks get no extra task and stay NumPy).

    Decided here on the client and handed to the workers, so they follow the client's setting.
    """
    mode = device_setting()
    if mode == "auto" and not any(client.run(cuda_available).values()):
        return "cpu"
    return mode


def use_local_gpus() -> bool:
    """Whether the shared local cluster is a LocalCUDACluster: ``rfm.device`` "gpu", or "auto" with dask-cuda
    installed and a CUDA device in this process."""
    mode = device_setting()
    if mode == "gpu":
        return True
    return mode == "auto" and importlib.util.find_spec("dask_cuda") is not None and cuda_available()


def local_cuda_client(**cluster_options: Any) -> Client:
    """A client of a new dask-cuda LocalCUDACluster: one worker process per visible GPU, the default protocol, no
    dashboard (``cluster_options`` go to LocalCUDACluster). Close the client and then its ``cluster`` when done."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise RuntimeError(
            "a local GPU cluster needs dask-cuda: pip install 'rfm_dask[gpu]' (or set rfm.device to 'cpu')"
        ) from exc
    cluster = LocalCUDACluster(**{"dashboard_address": None, **cluster_options})
    return Client(cluster, set_as_default=False)
