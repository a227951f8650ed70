"""Which Dask client a fit runs on: the one given, the current default, or a shared in-process LocalCluster."""

from __future__ import annotations

import atexit
import os
import threading

from distributed import Client, LocalCluster, default_client

_lock = threading.Lock()
_local: Client | None = None


def close_local_client() -> None:
    """Shut down the shared in-process cluster, if one was started (it is also closed at interpreter exit)."""
    global _local
    if _local is not None:
        cluster = _local.cluster
        _local.close()
        if cluster is not None:
            cluster.close()
        _local = None


def local_client() -> Client:
    """A process-wide in-process LocalCluster client (threads, no dashboard), started on first use."""
    global _local
    with _lock:
        if _local is None or _local.status not in ("running", "connecting"):
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            cluster = LocalCluster(
                n_workers=1, threads_per_worker=threads, processes=False, dashboard_address=None
            )
            _local = Client(cluster, set_as_default=False)
            atexit.register(close_local_client)
        return _local


def resolve_client(client: Client | None = None) -> Client:
    """``client`` if given, else the active default client, else the shared in-process LocalCluster."""
    if client is not None:
        return client
    try:
        return default_client()
    except ValueError:
        return local_client()


def total_threads(client: Client) -> int:
    """Worker threads across the cluster (at least 1)."""
    return max(1, sum(client.nthreads().values()))
