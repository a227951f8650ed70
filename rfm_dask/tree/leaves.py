"""Fitting one leaf's RFM (see ``tree.fit``): in one task on a worker (``tasks.leaf_task``: ``local.fit_local``,
exact direct solve) where its dense solve fits the worker's memory, else on the distributed operator."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from distributed import Client

from rfm_dask.parallel.cluster_engine import ClusterEngine
from rfm_dask.parallel.row_blocks import RowBlocks, smallest_worker_memory
from rfm_dask.rfm_loop import FitResult, RFMSettings, run_rfm
from rfm_dask.solvers.dispatch import dense_solve_fits
from rfm_dask.tree import tasks


def fits_one_worker(client: Client, n_rows: int) -> bool:
    """Whether a leaf of ``n_rows`` rows may be fitted in one task: its dense solve (``DIRECT_BYTES_PER_ENTRY`` per
    kernel entry) within half the smallest worker's memory limit (always, when no limit is known)."""
    return dense_solve_fits(n_rows, smallest_worker_memory(client))


def fit_now(
    client: Client, train: RowBlocks, settings: RFMSettings, rng: np.random.Generator, val: RowBlocks, args: tuple,
) -> FitResult:
    """One RFM fitted as a leaf is (``args`` as ``fit_on_cluster`` takes them), in one task where it fits a worker."""
    if fits_one_worker(client, train.n):
        return client.submit(tasks.leaf_task, replace(settings, solver="direct"), rng, *args, len(train.futures),
                             *train.futures, *val.futures, pure=False).result()
    return fit_on_cluster(client, train, settings, rng, val, args)


def fit_on_cluster(
    client: Client, train: RowBlocks, settings: RFMSettings, rng: np.random.Generator, val: RowBlocks | None,
    args: tuple,
) -> FitResult:
    """A leaf too large for one worker: the RFM loop on the distributed operator (``training.run_rfm``)."""
    Y, Y_val, metrics, scaling, weights, initial_M = args
    return run_rfm(ClusterEngine(client, settings.options), train, Y, settings, rng, val, Y_val, metrics,
                   scaling=scaling, weights=weights, initial_M=initial_M)
