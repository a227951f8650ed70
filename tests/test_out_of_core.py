"""Out-of-core fits: a Zarr data set several times larger than the workers' total memory limit."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from rfm_dask import RFMRegressor, open_zarr, write_zarr
from rfm_dask.diagnostics import PeakWorkerMemory

MIB = 1 << 20


def _low_rank_task(n: int, d: int, chunk_rows: int, seed: int = 0):
    """x ~ N(0, I_d) float32 in dask chunks, y = 5 z0 z1 + sin(3 z0) with z = U^T x (U fixed by its own seed)."""
    U = np.random.default_rng(1234).normal(size=(d, 2)).astype(np.float32) / np.sqrt(d)
    X = da.random.default_rng(seed).standard_normal((n, d), chunks=(chunk_rows, d), dtype=np.float32)
    Z = X @ U
    return X, 5 * Z[:, 0] * Z[:, 1] + da.sin(3 * Z[:, 0])


def _fit_out_of_core(tmp_path, n: int, d: int, chunk_rows: int, memory_limit: int, n_workers: int = 2):
    X, y = _low_rank_task(n, d, chunk_rows)
    with dask.config.set(scheduler="threads"):
        write_zarr(tmp_path / "data.zarr", X, y, chunk_rows=chunk_rows)
    data = open_zarr(tmp_path / "data.zarr")
    assert data.X.nbytes >= 4 * n_workers * memory_limit
    with LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit=memory_limit, dashboard_address=None
    ) as cluster, Client(cluster, set_as_default=False) as client:
        workers_before = set(client.scheduler_info()["workers"])
        model = RFMRegressor(solver="nystrom", n_centers=64, iters=1, tol=1e-4, patience=None, random_state=0)
        model.set_params(client=client)
        with PeakWorkerMemory(client, interval=0.1) as memory:
            model.fit(data.X, data.y)
        workers_after = set(client.scheduler_info()["workers"])
        logs = "\n".join(line for entries in client.get_worker_logs().values() for _, line in entries)
    return model, memory, workers_before, workers_after, logs


@pytest.mark.slow
def test_fit_on_zarr_four_times_larger_than_cluster_memory(tmp_path):
    limit = 256 * MIB
    model, memory, before, after, logs = _fit_out_of_core(
        tmp_path, n=1_050_000, d=512, chunk_rows=4096, memory_limit=limit
    )
    print(f"peak worker RSS {memory.peak / MIB:.0f} MiB of {limit / MIB:.0f} MiB limit ({memory.samples} samples)")
    assert len(model.history_) == 2
    assert before == after, "a worker was restarted (killed) during the fit"
    assert "Pausing worker" not in logs
    assert memory.peak < limit
