"""Out-of-core fits: a Zarr data set several times larger than the workers' total memory limit."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from pipelines.datasets import low_rank_projection_lazy
from pipelines.diagnostics import PeakWorkerMemory
from rfm_dask import RFMRegressor, open_zarr, write_zarr
from rfm_dask.core import kernels as kn
from rfm_dask.parallel import tasks as wt
from rfm_dask.parallel.distributed_operator import Submitter, task_bytes
from rfm_dask.parallel.row_blocks import stream_rows

MIB = 1 << 20


def _fit_out_of_core(tmp_path, n: int, d: int, chunk_rows: int, memory_limit: int, n_workers: int = 2, **params):
    X, y = low_rank_projection_lazy(n, d, chunk_rows)
    with dask.config.set(scheduler="threads"):
        write_zarr(tmp_path / "data.zarr", X, y, chunk_rows=chunk_rows)
    data = open_zarr(tmp_path / "data.zarr")
    with LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit=memory_limit, dashboard_address=None
    ) as cluster, Client(cluster, set_as_default=False) as client:
        workers_before = set(client.scheduler_info()["workers"])
        params = {"solver": "nystrom", "iters": 1, "patience": None, "random_state": 0, **params}
        model = RFMRegressor(client=client, **params)
        with PeakWorkerMemory(client, interval=0.1) as memory:
            model.fit(data.X, data.y)
        workers_after = set(client.scheduler_info()["workers"])
        logs = "\n".join(line for entries in client.get_worker_logs().values() for _, line in entries)
    return data.X.nbytes, model, memory, workers_before, workers_after, logs


@pytest.mark.slow
@pytest.mark.timeout(3000)  # ~25 min on 2 cores shared with a benchmark since tasks in flight follow the
# workers' memory (was ~7 min); a paused worker would stall the fit instead of failing it
def test_fit_on_zarr_four_times_larger_than_cluster_memory(tmp_path):
    limit = 400 * MIB
    nbytes, model, memory, before, after, logs = _fit_out_of_core(
        tmp_path, n=13_200_000, d=64, chunk_rows=16384, memory_limit=limit, diag=True, n_centers=32, tol=1e-3
    )
    print(f"peak worker RSS {memory.peak / MIB:.0f} MiB of {limit / MIB:.0f} MiB limit ({memory.samples} samples)")
    assert nbytes >= 4 * 2 * limit, "the data set must be at least 4x the cluster's total memory limit"
    assert len(model.history_) == 2
    assert before == after, "a worker was restarted (killed) during the fit"
    assert "Pausing worker" not in logs
    assert memory.peak < limit


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the fit took 471 s on 2 idle cores (BENCHMARKS.md, "The tree of leaf RFMs on
# out-of-core input"); a paused worker could stall it
def test_tree_fit_on_zarr_larger_than_a_workers_memory(tmp_path):
    """The tree of leaf RFMs on out-of-core input (820 MB of rows, each worker limited to 600 MiB): routing passes
    stream the blocks, the split samples are read and the leaves written to leaf-ordered Zarr stores by dask's shuffle
    in batches within the working-rows budget, and each leaf is read by its own task, so worker memory follows the
    chunk, tile, leaf and budget sizes, not n."""
    limit = 600 * MIB
    nbytes, model, memory, before, after, logs = _fit_out_of_core(
        tmp_path, n=420_000, d=512, chunk_rows=2048, memory_limit=limit, leaf_size=2000, split_samples=1000,
        reg=1e-3, bandwidth=20.0
    )
    print(f"tree of {model.n_leaves_} leaves: peak worker RSS {memory.peak / MIB:.0f} MiB of {limit / MIB:.0f} MiB "
          f"limit ({memory.samples} samples)")
    assert nbytes > limit, "the data set must be larger than a worker's memory limit"
    assert nbytes > 0.5 * 2 * limit, "the data must be streamed (larger than rfm.persist-fraction of the cluster)"
    assert model.n_leaves_ >= 200 and model.leaf_sizes_.max() <= 2000
    assert before == after, "a worker was restarted (killed) during the fit"
    assert "Pausing worker" not in logs
    assert memory.peak < limit


def _traced_peak(fn, *args) -> int:
    """Peak bytes allocated (traced by tracemalloc, which sees NumPy's buffers) while ``fn(*args)`` runs."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn(*args)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_streamed_task_peak_does_not_grow_with_the_chunk_size(tmp_path):
    """A streamed task on a 16 MB chunk holds the chunk and then what it holds on a 4 MB chunk (rows are transformed
    by sub-blocks), within the outputs' size; and never more than the Submitter's estimate."""
    d, m, c, tile = 40, 500, 2, kn.DEFAULT_TILE
    rng = np.random.default_rng(0)
    fmap = (np.eye(d, dtype=np.float32), np.zeros(d, np.float32))
    centres = wt.transformed_centres(fmap, rng.normal(size=(m, d)).astype(np.float32))
    spec, W = kn.KernelSpec("laplace", 10.0), np.ones((m, c))
    beyond_block = {}
    for rows in (25_000, 100_000):  # 4 MB and 16 MB chunks
        X = da.random.default_rng(1).standard_normal((rows, d), chunks=(rows, d), dtype=np.float32)
        with dask.config.set(scheduler="sync"):
            write_zarr(tmp_path / f"{rows}.zarr", X, chunk_rows=rows)
        blocks = stream_rows(open_zarr(tmp_path / f"{rows}.zarr").X)
        block, Y = blocks.futures[0], np.ones((rows, c))
        _traced_peak(block.load)  # imports and caches of the first read out of the way
        peaks = {
            "matvec": _traced_peak(wt.matvec, block, fmap, centres, W, spec, tile),
            "gram_matvec": _traced_peak(wt.gram_matvec, block, fmap, centres, W, spec, tile),
            "rmatvec": _traced_peak(wt.rmatvec, block, Y, fmap, centres, spec, tile),
        }
        print(rows, {k: f"{v / MIB:.1f} MiB" for k, v in peaks.items()})
        assert max(peaks.values()) <= task_bytes(blocks, tile), (peaks, task_bytes(blocks, tile))
        beyond_block[rows] = {k: v - 4 * rows * d for k, v in peaks.items()}
    # The 4 MB chunk is one sub-block and the 16 MB chunk four. With more than one, the next sub-block is transformed
    # while the previous one's rows are still referenced, so up to one more sub-block (SUB_BLOCK_BYTES) is live: a
    # constant, where transforming the whole chunk at once would add the chunk's growth (12 MB here).
    for task, small in beyond_block[25_000].items():
        outputs = 2 * 8 * 100_000 * c if task == "matvec" else 0  # per-row results and their concatenation
        assert beyond_block[100_000][task] <= small + outputs + wt.SUB_BLOCK_BYTES, (task, beyond_block)


def test_submitter_capacity_follows_the_workers_memory_limits():
    """Tasks in flight per worker: rfm.tasks-per-thread per thread, fewer where the memory limit holds fewer tasks of
    the estimated size, at least one, and the per-thread count where no limit or size is known."""
    workers = {"a": (2, 300 * MIB), "b": (2, 8 << 30), "c": (1, 0)}
    client = SimpleNamespace(
        nthreads=lambda: {w: t for w, (t, _) in workers.items()},
        scheduler_info=lambda: {"workers": {w: {"memory_limit": mem} for w, (_, mem) in workers.items()}},
    )
    with dask.config.set({"rfm.tasks-per-thread": 3, "rfm.task-memory-fraction": 0.25}):
        submitter = Submitter(client)
    assert submitter.capacity() == {"a": 6, "b": 6, "c": 3}
    assert submitter.capacity(30 * MIB) == {"a": 2, "b": 6, "c": 3}  # 75 MiB of a's 300 MiB hold 2 tasks of 30 MiB
    assert submitter.capacity(80 * MIB) == {"a": 1, "b": 6, "c": 3}
    assert submitter.limit(80 * MIB) == 10


def test_zarr_store_round_trip_and_refusals(tmp_path):
    X = np.random.default_rng(0).normal(size=(1000, 5))
    y = np.arange(1000.0)
    path = write_zarr(tmp_path / "s.zarr", X, y, chunk_rows=300)
    data = open_zarr(path)
    assert data.X.dtype == np.float32 and data.X.chunks == ((300, 300, 300, 100), (5,))
    np.testing.assert_array_equal(data.X.compute(), X.astype(np.float32))
    np.testing.assert_array_equal(data.y.compute(), y)
    with pytest.raises(FileExistsError):
        write_zarr(path, X)
    with pytest.raises(ValueError, match="rows"):
        write_zarr(tmp_path / "bad.zarr", X, y[:10])
    with pytest.raises(FileNotFoundError):
        open_zarr(tmp_path / "missing.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # failed writes left nothing behind


def test_streamed_fit_matches_persisted_fit(tmp_path, client):
    """With a zero memory budget the data is streamed from Zarr every pass; the model is the same."""
    X, y = low_rank_projection_lazy(3000, 8, chunk_rows=500)
    write_zarr(tmp_path / "d.zarr", X, y, chunk_rows=500)
    data = open_zarr(tmp_path / "d.zarr")
    params = dict(solver="nystrom", n_centers=200, iters=2, random_state=0, client=client)
    persisted = RFMRegressor(**params).fit(data.X, data.y)
    with dask.config.set({"rfm.persist-fraction": 1e-12}):
        streamed = RFMRegressor(**params).fit(data.X, data.y)
    X_test = data.X[:400].compute()
    expected = persisted.predict(X_test)
    # same seed, but streamed blocks are computed per pass: the two fits agree to float32 rounding
    np.testing.assert_allclose(streamed.predict(X_test), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
