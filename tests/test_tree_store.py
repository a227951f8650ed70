"""The leaf-ordered stores of streamed rows (``tree.store``): the rows each leaf reads back, against NumPy, and the
memory dask's shuffle holds while it writes them."""

from __future__ import annotations

import dask.array as da
import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin

from rfm_dask.parallel.row_blocks import fetch_rows, stream_rows
from rfm_dask.tree import store


class _PeakHeld(SchedulerPlugin):
    """Peak bytes of task results the cluster holds at once, as the scheduler records them (managed memory)."""

    def __init__(self, scheduler) -> None:
        self.scheduler, self.sizes, self.peak = scheduler, {}, 0

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "memory":
            self.sizes[key] = self.scheduler.tasks[key].nbytes
            self.peak = max(self.peak, sum(self.sizes.values()))
        elif start == "memory":
            self.sizes.pop(key, None)


def _disjoint_groups(n: int, sizes: list[int], seed: int) -> list[np.ndarray]:
    rows = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([0, *sizes])
    return [np.sort(rows[lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:])]


def test_each_leaf_reads_back_its_rows_in_order(client, tmp_path):
    """Groups far longer than each block's share of them (700 rows against ~24 per block of 100): dask's shuffle
    would wrap its uint8 index (dask/dask#12590) if its input chunks were the blocks' picks."""
    X = np.arange(6000 * 3, dtype=np.float32).reshape(6000, 3)
    rows = stream_rows(da.from_array(X, chunks=(100, 3)))
    groups = _disjoint_groups(6000, [700, 1, 300, 450], seed=0)
    out = store.leaf_ordered_rows(client, rows, groups, tmp_path)
    assert [r.n for r in out] == [g.size for g in groups]
    for g, r in zip(groups, out):
        np.testing.assert_array_equal(fetch_rows(client, r), X[g])


def test_the_shuffle_holds_the_rows_it_moves_not_their_blocks(client, tmp_path):
    """16 groups of 50 rows from 200 blocks of 100 rows: what the workers hold at once follows the 800 rows moved (a
    few copies of them, and the blocks being read), not the 200 blocks, which every group draws from. Before each
    block was cut to its picked rows first, the peak here was 94 blocks (599 KB against 68 KB): the scheduler loaded
    the blocks for the first group's chunk before the shuffle had taken the other groups' rows from any."""
    X = np.random.default_rng(1).standard_normal((20_000, 16)).astype(np.float32)
    rows = stream_rows(da.from_array(X, chunks=(100, 16)))
    groups = _disjoint_groups(20_000, [50] * 16, seed=2)
    held = _PeakHeld(client.cluster.scheduler)
    client.cluster.scheduler.add_plugin(held, name="peak-held")
    try:
        out = store.leaf_ordered_rows(client, rows, groups, tmp_path)
    finally:
        client.cluster.scheduler.remove_plugin(name="peak-held")
    np.testing.assert_array_equal(np.concatenate([fetch_rows(client, r) for r in out]), X[np.concatenate(groups)])
    block, moved = X[:100].nbytes, X[:800].nbytes
    assert held.peak <= 4 * block + 4 * moved, (held.peak, block, moved)
