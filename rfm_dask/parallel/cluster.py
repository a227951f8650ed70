"""Which Dask client a fit runs on: the one given, the current default, or a shared local cluster (in-process
threads, or one dask-cuda worker process per GPU where ``rfm.device`` asks for GPUs).

The shared local cluster listens on 127.0.0.1 only: its scheduler's HTTP server (which serves the dashboard when
``rfm.dashboard`` is true, and health routes always) takes a free loopback port, never every interface's 8787.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

from distributed import Client, LocalCluster, default_client
from distributed.utils import format_dashboard_link

from rfm_dask import config
from rfm_dask.parallel.devices import local_cuda_client, use_local_gpus

logger = logging.getLogger("rfm_dask")

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


def loopback_options() -> dict[str, Any]:
    """LocalCluster options that keep its HTTP servers on 127.0.0.1, on free ports: the scheduler's (with the
    dashboard only when ``rfm.dashboard`` is true) and the workers'. An in-process cluster talks over ``inproc://``
    (no socket); a cluster of processes also needs ``host="127.0.0.1"`` for its TCP listeners."""
    return {"dashboard_address": None, "worker_dashboard_address": "127.0.0.1:0",
            "scheduler_kwargs": {"dashboard": bool(config.get("dashboard")), "dashboard_address": "127.0.0.1:0"}}


def _local_cpu_client() -> Client:
    """An in-process LocalCluster client: one worker with a thread per CPU, listening on loopback only."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cluster = LocalCluster(n_workers=1, threads_per_worker=threads, processes=False, **loopback_options())
    return Client(cluster, set_as_default=False)


def local_client() -> Client:
    """A process-wide local cluster client, started on first use: a dask-cuda LocalCUDACluster (one worker process
    per GPU) when ``rfm.device`` is "gpu", or "auto" with dask-cuda and a CUDA device here; else an in-process
    LocalCluster (threads). Either listens on 127.0.0.1 only (``loopback_options``); with ``rfm.dashboard`` true the
    dashboard's link is logged (logger ``rfm_dask``, INFO)."""
    global _local
    with _lock:
        if _local is None or _local.status not in ("running", "connecting"):
            _local = local_cuda_client(host="127.0.0.1", **loopback_options()) if use_local_gpus() else _local_cpu_client()
            atexit.register(close_local_client)
            if config.get("dashboard"):
                logger.info("Dask dashboard at %s", dashboard_link(_local))
        return _local


def dashboard_link(client: Client) -> str:
    """The dashboard's address on 127.0.0.1 (``Client.dashboard_link`` names the host of the scheduler's address,
    which for an in-process cluster is not where its HTTP server listens)."""
    return format_dashboard_link("127.0.0.1", client.scheduler_info()["services"]["dashboard"])


def resolve_client(client: Client | None = None) -> Client:
    """``client`` if given, else the active default client, else the shared local cluster (``local_client``)."""
    if client is not None:
        return client
    try:
        return default_client()
    except ValueError:
        return local_client()


def worker_threads(client: Client) -> dict[str, int]:
    """Threads of each worker by address (at least 1 each)."""
    return {worker: max(1, int(threads)) for worker, threads in client.nthreads().items()}


def total_threads(client: Client) -> int:
    """Worker threads across the cluster (at least 1)."""
    return max(1, sum(worker_threads(client).values()))
