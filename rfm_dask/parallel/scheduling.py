"""Bounded task submission and fixed-tree sums on a Dask cluster: how every pass over row blocks (kernel products,
statistics, digests, a fitted model's outputs, batch jobs) submits its tasks and reduces their results."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from distributed import Client, Future, wait

from rfm_dask import config
from rfm_dask.core.backend import identity, to_host
from rfm_dask.core.blas_threads import single_blas_thread
from rfm_dask.parallel.cluster import worker_threads
from rfm_dask.parallel.row_blocks import (
    RowBlocks,
    column_stats,
    materialise,
    mean_of_stats,
    merge_stats,
    worker_memory_limits,
)


def _add(*parts: Any) -> Any:
    """Sum of partial results: arrays, or tuples of arrays summed elementwise."""
    if isinstance(parts[0], tuple):
        return tuple(sum(items) for items in zip(*parts))
    return sum(parts)


class Submitter:
    """Submits a pass's tasks in order with at most a few per worker unfinished at a time (its capacity).

    Before a task is submitted past the cluster's capacity, one of the unfinished ones is waited for. So the workers
    never hold more than that many of a pass's tasks (each with its arguments: a streamed block's recipe and row
    selection, target slices) however many blocks there are, whatever the scheduler's queuing decides. The order of
    the calls, and so of every sum over them, is unchanged.

    A worker's capacity is ``rfm.tasks-per-thread`` per thread, but no more tasks than fit ``rfm.task-memory-fraction``
    of its memory limit at ``task_bytes`` each (at least one): fewer tasks at a time when blocks are large.

    Tasks on held blocks go where their block is. Tasks on streamed blocks have no such home, and the scheduler
    would run them all where the pass's small shared keys happen to live: with ``spread`` each is sent to the worker
    with the fewest unfinished tasks for its capacity (any other worker may still take it, e.g. if that one is lost).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.threads = worker_threads(client)
        self.memory = worker_memory_limits(client)
        self.per_thread = int(config.get("tasks-per-thread"))
        self.fraction = float(config.get("task-memory-fraction"))

    def capacity(self, task_bytes: int = 0) -> dict[str, int]:
        """Tasks of ``task_bytes`` each (0: not known) that each worker may hold unfinished at a time."""
        capacity = {}
        for worker, threads in self.threads.items():
            most = self.per_thread * threads
            budget = int(self.fraction * self.memory.get(worker, 0))
            capacity[worker] = min(most, max(1, budget // task_bytes)) if budget and task_bytes else most
        return capacity

    def limit(self, task_bytes: int = 0) -> int:
        """Tasks of ``task_bytes`` each the cluster may hold unfinished at a time (at least one)."""
        return max(1, sum(self.capacity(task_bytes).values()))

    def stream(self, calls: Iterable[tuple], spread: bool = False, task_bytes: int = 0) -> Iterator[Future]:
        """Futures of ``(fn, *args)`` calls of about ``task_bytes`` each, submitted in order as the iterator is
        consumed."""
        capacity, limit = self.capacity(task_bytes), self.limit(task_bytes)
        pending: list[tuple[Future, str | None]] = []  # submitted, not known to be finished, and where they were sent
        for fn, *args in calls:
            if len(pending) >= limit:  # returns at once if one of them has finished already
                with self.client.as_current():  # distributed.wait uses the current client
                    wait([f for f, _ in pending], return_when="FIRST_COMPLETED")
            pending = [(f, where) for f, where in pending if not f.done()]
            where = None
            if spread and capacity:
                busy = Counter(where for _, where in pending)
                where = min(sorted(capacity), key=lambda w: busy[w] / capacity[w])
            placement = {"workers": [where], "allow_other_workers": True} if where else {}
            future = self.client.submit(fn, *args, pure=False, **placement)
            pending.append((future, where))
            yield future


def tree_sum(client: Client, futures: Iterable[Future], fan_in: int = 8, combine: Callable = _add) -> Any:
    """Sum futures' results on the cluster in a fixed tree, as they are submitted, gathering only the last few.

    Every ``fan_in`` consecutive futures of a level are folded by one reduction task as soon as they exist
    (reductions outrank the leaves, so partial results do not pile up on the workers); the tree depends on the
    number of futures only, so the total is the same bit for bit on any cluster. The at most ``fan_in`` partial
    sums left at the end are gathered and added here, which saves a scheduling round trip per pass. ``combine``
    (associative, any number of arguments) replaces the sum for other reductions.
    """
    levels: list[list[Future]] = [[]]
    for future in futures:
        levels[0].append(future)
        k = 0
        while len(levels[k]) == fan_in:
            if k + 1 == len(levels):
                levels.append([])
            levels[k + 1].append(client.submit(combine, *levels[k], priority=1, pure=False))
            levels[k] = []
            k += 1
    rest = [f for level in levels for f in level]
    while len(rest) > fan_in:
        rest = [client.submit(combine, *rest[i : i + fan_in], priority=1, pure=False)
                for i in range(0, len(rest), fan_in)]
    return combine(*client.gather(rest))


def column_means(client: Client, rows: RowBlocks) -> np.ndarray:
    """Mean of the rows (d,) float64, from one task per block (see ``row_blocks.mean_of_stats`` for the checks)."""
    calls = ((column_stats, f) for f in rows.futures)
    futures = Submitter(client).stream(calls, spread=rows.streamed, task_bytes=rows.streamed_block_bytes)
    return mean_of_stats(tree_sum(client, futures, combine=merge_stats), rows.n)


def block_digest(block: Any) -> bytes:
    """SHA-256 of one row block (b, d): its dtype, shape and bytes, on the host."""
    block = np.ascontiguousarray(to_host(materialise(block)))
    digest = hashlib.sha256(f"{block.dtype.str}{block.shape}".encode())
    digest.update(block.data)
    return digest.digest()


def rows_digest(client: Client, rows: RowBlocks) -> np.ndarray:
    """Per-block SHA-256 digests of all the rows, computed on the workers (one task per block, a bounded number in
    flight) and listed in block order: (n_blocks, 32) uint8. Any changed value, reordered rows or other block
    split changes it; it costs one read of the rows."""
    calls = ((block_digest, block) for block in rows.futures)
    digests = client.gather(list(Submitter(client).stream(calls, spread=rows.streamed)))
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 32)


@single_blas_thread
def _decision_task(model: Any, block: Any) -> np.ndarray:
    """A fitted model's outputs (b, c) float64 on one row block (held or streamed); single-threaded BLAS, so they do
    not depend on the worker."""
    return model.decision(materialise(block))


def scores_on_rows(client: Client, model: Any, rows: RowBlocks) -> np.ndarray:
    """The outputs of a fitted model (``KernelModel`` or ``TreeModel``) on rows held on the cluster: one task per
    block, gathered here as (n, c) float64 in row order."""
    shared = client.submit(identity, model, pure=False)
    calls = ((_decision_task, shared, block) for block in rows.futures)
    futures = list(Submitter(client).stream(calls, spread=rows.streamed, task_bytes=rows.streamed_block_bytes))
    return np.concatenate(client.gather(futures) or [np.zeros((0, model.n_outputs))])
