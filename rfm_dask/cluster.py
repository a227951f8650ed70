"""Which Dask client a fit runs on: the one given, the current default, or a shared local cluster (in-process
threads, or one dask-cuda worker process per GPU where ``rfm.device`` asks for GPUs)."""

from __future__ import annotations

import atexit
import os
import threading

from distributed import Client, LocalCluster, default_client

from .devices import local_cuda_client, use_local_gpus

_lock = threading.Lock()
_local: Client | None = None


def close_local_client() -> None:
    """Shut down the shared local cluster, if one was started (it is also closed at interpreter exit)."""
    global _local
    if _local is not None:
        cluster = _local.cluster
        _local.close()
        if cluster is not None:
            cluster.close()
        _local = None


def _local_cpu_client() -> Client:
    """An in-process LocalCluster client: one worker with a thread per CPU, no dashboard."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cluster = LocalCluster(n_workers=1, threads_per_worker=threads, processes=False, dashboard_address=None)
    return Client(cluster, set_as_default=False)


def local_client() -> Client:
    """A process-wide local cluster client, started on first use: a dask-cuda LocalCUDACluster (one worker process
    per GPU) when ``rfm.device`` is "gpu", or "auto" with dask-cuda and a CUDA device here; else an in-process
    LocalCluster (threads, no dashboard)."""
    global _local
    with _lock:
        if _local is None or _local.status not in ("running", "connecting"):
            _local = local_cuda_client() if use_local_gpus() else _local_cpu_client()
            atexit.register(close_local_client)
        return _local


def resolve_client(client: Client | None = None) -> Client:
    """``client`` if given, else the active default client, else the shared local cluster (``local_client``)."""
    if client is not None:
        return client
    try:
        return default_client()
    except ValueError:
        return local_client()


def total_threads(client: Client) -> int:
    """Worker threads across the cluster (at least 1)."""
    return max(1, sum(client.nthreads().values()))
