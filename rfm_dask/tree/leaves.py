"""Fitting one leaf's RFM (see ``tree.fit``): in one task on a worker (``tasks.leaf_task``: ``local.fit_local``,
exact direct solve) where its dense solve fits the worker's memory, else on the distributed operator."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice

import numpy as np
from distributed import Client

from rfm_dask.parallel.cluster_engine import ClusterEngine
from rfm_dask.parallel.row_blocks import RowBlocks, smallest_worker_memory
from rfm_dask.parallel.scheduling import Submitter
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
        return client.submit(*leaf_call(train, settings, rng, val, args), pure=False).result()
    return fit_on_cluster(client, train, settings, rng, val, args)


def leaf_call(
    train: RowBlocks, settings: RFMSettings, rng: np.random.Generator, val: RowBlocks | None, args: tuple,
) -> tuple:
    """A leaf's one-task fit as a call (``tasks.leaf_task`` and its arguments, the exact direct solve), for
    ``client.submit`` or the ``Submitter``: ``args`` as ``fit_on_cluster`` takes them."""
    blocks = train.futures + ([] if val is None else val.futures)
    return (tasks.leaf_task, replace(settings, solver="direct"), rng, *args, len(train.futures), *blocks)


def fit_on_cluster(
    client: Client, train: RowBlocks, settings: RFMSettings, rng: np.random.Generator, val: RowBlocks | None,
    args: tuple,
) -> FitResult:
    """A leaf too large for one worker: the RFM loop on the distributed operator (``training.run_rfm``)."""
    Y, Y_val, metrics, scaling, weights, initial_M = args
    return run_rfm(ClusterEngine(client, settings.options), train, Y, settings, rng, val, Y_val, metrics,
                   scaling=scaling, weights=weights, initial_M=initial_M)


def fit_in_order(
    client: Client, order: list[int], calls: list[tuple], on_cluster: dict[int, tuple], task_bytes: int,
) -> Iterator[tuple[int, FitResult]]:
    """Fit the leaves ``order`` names, yielding ``(k, result)`` in that order whatever order they finish in.

    Parameters
    ----------
    order : the leaves' keys.
    calls : for the keys not in ``on_cluster``, in their order: each leaf's one-task call (function and arguments).
    on_cluster : key -> the arguments of ``fit_on_cluster`` for a leaf too large for one worker.
    task_bytes : the memory of the largest one-task leaf, by which the ``Submitter`` bounds the tasks running.

    Leaves are submitted only as far ahead as the Submitter runs them, and each result (its centres and M) is
    collected, and so released on the workers, before the next leaf is submitted: the workers hold the results of a
    bounded number of leaves, not of all of them. Closing the generator early (an error, an interrupt) cancels the
    leaves submitted and not collected, so a failed fit leaves no leaf running on the cluster.
    """
    submitter = Submitter(client)
    stream = submitter.stream(calls, task_bytes=task_bytes)
    ahead = deque(islice(stream, submitter.limit(task_bytes)))
    try:
        for k in order:
            if k in on_cluster:
                yield k, fit_on_cluster(client, *on_cluster[k])
            else:
                result = ahead.popleft().result()
                ahead.extend(islice(stream, 1))
                yield k, result
    except BaseException:
        client.cancel(list(ahead))
        raise
