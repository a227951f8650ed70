"""The distributed engine: CG over row blocks against dense solves, bounded task graphs, multi-process clusters."""

from __future__ import annotations

import time

import dask
import dask.array as da
import numpy as np
import pytest

from pipelines.datasets import low_rank_golden
from rfm_dask import RFMRegressor
from rfm_dask.core import kernels as kn
from rfm_dask.core.feature_matrix import matrix_sqrt
from rfm_dask.parallel.cluster_engine import ClusterEngine
from rfm_dask.solvers.dispatch import choose_solver, solve_krr
from rfm_dask.options import SolverOptions
from rfm_dask.parallel.distributed_operator import KernelPasses
from rfm_dask.parallel.row_blocks import put_rows, take_rows


def _dense_kernel(X: np.ndarray, M: np.ndarray, spec: kn.KernelSpec) -> np.ndarray:
    diff = X[:, None, :] - X[None, :, :]
    r = np.sqrt(np.maximum(np.einsum("ijk,kl,ijl->ij", diff, M, diff), 0))
    return np.exp(-((r / spec.bandwidth) ** spec.exponent))


def _problem(n=400, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    A = rng.normal(size=(d, d))
    M = A @ A.T / d
    Y = np.column_stack([np.sin(X[:, 0]) + X[:, 1] * X[:, 2], X[:, 3] ** 2])
    return X, M, Y


def test_distributed_cg_matches_dense_solve(client):
    """Exact-kernel CG over float64 row blocks agrees with numpy.linalg.solve to 1e-6 relative."""
    X, M, Y = _problem()
    spec = kn.KernelSpec("laplace", bandwidth=2.0)
    reg = 1e-2
    rows = put_rows(client, X, rows_per_block=70)
    passes = KernelPasses(client, rows, matrix_sqrt(M), X.mean(axis=0), spec)
    options = SolverOptions.from_config()
    sol = solve_krr(passes, rows, Y, reg, "cg", tol=1e-10, rng=np.random.default_rng(0), options=options)
    K = _dense_kernel(X, M, spec)
    expected = np.linalg.solve(K + reg * np.eye(len(X)), Y)
    assert sol.iterations > 0 and sol.residual < 1e-9
    np.testing.assert_allclose(sol.coef, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    direct = solve_krr(passes, rows, Y, reg, "direct", tol=0, rng=np.random.default_rng(0), options=options)
    np.testing.assert_allclose(direct.coef, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_centre_kernel_is_the_same_on_any_number_of_threads(monkeypatch):
    """The centre kernel's tiles on and below the diagonal, spread over the worker's threads, give the same exactly
    symmetric K bit for bit whatever the number of threads (3 tiles of CENTRE_TILE_ROWS = 64 rows and one of 8), equal
    to the dense float64 kernel of the same transformed centres; a duplicate row in another tile gets exactly 1."""
    from rfm_dask.parallel import tasks as wt

    X, M, _ = _problem(n=200)
    X[150] = X[5]
    S = matrix_sqrt(M).astype(np.float32)
    centres = wt.transformed_centres((S, X.mean(axis=0).astype(np.float32)), X.astype(np.float32))
    spec = kn.KernelSpec("laplace", bandwidth=2.0)
    Ct = centres[0].astype(np.float64)
    expected = _dense_kernel(Ct, np.eye(Ct.shape[1]), spec)
    monkeypatch.setattr(wt, "CENTRE_TILE_ROWS", 64)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(wt, "_worker_threads", lambda: threads)
        results.append(wt.centre_kernel(centres, spec))
    for K in results[1:]:
        np.testing.assert_array_equal(K, results[0])
    K = results[0]
    np.testing.assert_array_equal(K, K.T)
    assert K[5, 150] == K[150, 5] == 1.0 and np.all(np.diag(K) == 1.0)
    # the GEMM formula's float64 error on r^2, ~eps (|x|^2 + |c|^2) <= 1e-14 here (squared norms <= 18.3), is at most
    # ~1e-13 on r for the pairs at least 0.1 apart (all but the duplicate): kernel values agree to 1e-12
    np.testing.assert_allclose(K, expected, rtol=0, atol=1e-12)


def test_task_graph_does_not_grow_with_cg_iterations(client):
    """Each CG step is one flat map over the row blocks: the scheduler holds the same number of tasks throughout."""
    X, M, Y = _problem(n=300)
    rows = put_rows(client, X, rows_per_block=50)
    passes = KernelPasses(client, rows, matrix_sqrt(M), X.mean(axis=0), kn.KernelSpec(bandwidth=2.0))
    counts: list[int] = []
    matvec = passes.matvec

    def scheduler_tasks() -> int:
        return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))

    def settled_task_count() -> int:
        """The scheduler's task count once the last pass's release messages have arrived (stable for 3 polls)."""
        seen = [scheduler_tasks()]
        for _ in range(100):
            time.sleep(0.01)
            seen.append(scheduler_tasks())
            if len(set(seen[-3:])) == 1 and len(seen) >= 3:
                break
        return seen[-1]

    def counting_matvec(block_rows, V):
        out = matvec(block_rows, V)
        counts.append(settled_task_count())
        return out

    passes.matvec = counting_matvec
    with dask.config.set({"rfm.cg.preconditioner-rank": 5}):  # a weak preconditioner: many CG steps
        options = SolverOptions.from_config()
    sol = solve_krr(passes, rows, Y[:, :1], 1e-6, "cg", tol=1e-14, rng=np.random.default_rng(0), options=options)
    assert sol.iterations >= 30, "the test needs a long CG run"
    n_blocks = len(rows.futures)
    # Held: the data blocks, S, the centres, and at most one pass's tasks still being released.
    assert max(counts) <= 2 * n_blocks + 4
    # A leak adds at least one task per step (>= 20 over the run); a release still in flight on a loaded machine
    # can add one to a single reading, so the settled floor is compared, not the single highest reading.
    assert min(counts[-10:]) <= min(counts[:10])


def test_two_worker_processes_match_in_process_fit(client, process_client):
    X_train, y_train, X_test, _ = low_rank_golden(n_train=1500, n_test=300, seed=1)
    params = dict(iters=2, random_state=0)
    local = RFMRegressor(client=client, **params).fit(X_train, y_train)
    spread = RFMRegressor(client=process_client, **params).fit(X_train, y_train)
    np.testing.assert_allclose(spread.predict(X_test), local.predict(X_test), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spread.feature_matrix_, local.feature_matrix_, rtol=1e-5, atol=1e-7)


def test_cg_solver_matches_direct_solver_through_the_estimator(client):
    X_train, y_train, X_test, _ = low_rank_golden(n_train=1200, n_test=200, seed=2)
    # a fixed bandwidth: the solvers are compared on one system (a tuned one may be far worse conditioned)
    params = dict(iters=1, bandwidth=10.0, reg=1e-1, random_state=0, client=client, tol=1e-8)
    direct = RFMRegressor(solver="direct", **params).fit(X_train, y_train)
    cg = RFMRegressor(solver="cg", **params).fit(X_train, y_train)
    assert all(h["solver"] == "cg" and h["cg_iterations"] > 0 for h in cg.history_)
    assert all(h["residual"] < 1e-7 for h in cg.history_)
    np.testing.assert_allclose(cg.predict(X_test), direct.predict(X_test), rtol=1e-4, atol=1e-5)


NYSTROM_PATHS = {  # (rfm.one-worker-bytes, rfm.kernel-cache-fraction)
    "pass-per-cg-step": (0, 0.0),
    "cached-kernel-blocks": (0, 1.0),
    "one-worker": (2**30, 0.0),
}


@pytest.mark.parametrize("path", NYSTROM_PATHS)
def test_distributed_nystrom_matches_dense_falkon_system(client, path):
    """FALKON over float64 row blocks solves (K_nm^T K_nm + reg K_mm) beta = K_nm^T Y to 1e-6 relative, with a pass
    over the blocks per CG step (recomputing or reusing cached kernel blocks) and as one task on one worker."""
    one_worker_bytes, cache_fraction = NYSTROM_PATHS[path]
    X, M, Y = _problem(n=500)
    spec = kn.KernelSpec("laplace", bandwidth=2.0)
    reg = 1e-2
    rows = put_rows(client, X, rows_per_block=90)
    index = np.sort(np.random.default_rng(1).choice(len(X), 120, replace=False))
    centres = take_rows(client, rows, index)
    settings = {"rfm.one-worker-bytes": one_worker_bytes, "rfm.kernel-cache-fraction": cache_fraction}
    with dask.config.set(settings):
        options = SolverOptions.from_config()
    passes = ClusterEngine(client, options).operator(centres, matrix_sqrt(M), X.mean(axis=0), spec)
    sol = solve_krr(passes, rows, Y, reg, "nystrom", tol=1e-11, rng=np.random.default_rng(0), options=options)
    K = _dense_kernel(X, M, spec)
    K_nm, K_mm = K[:, index], K[np.ix_(index, index)]
    expected = np.linalg.solve(K_nm.T @ K_nm + reg * K_mm, K_nm.T @ Y)
    assert sol.solver == "nystrom" and sol.iterations > 0
    np.testing.assert_allclose(sol.coef, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_cached_kernel_blocks_change_no_bit(client):
    """The kernel cache is a speed choice only (it depends on the cluster's memory): the fit is identical with it."""
    X_train, y_train, X_test, _ = low_rank_golden(n_train=1200, n_test=200, seed=3)
    models = []
    for fraction in (0.0, 1.0):
        settings = {"rfm.one-worker-bytes": 0, "rfm.kernel-cache-fraction": fraction}
        with dask.config.set(settings):
            model = RFMRegressor(solver="nystrom", n_centers=300, iters=2, random_state=0, client=client)
            models.append(model.fit(X_train, y_train))
    np.testing.assert_array_equal(models[0].feature_matrix_, models[1].feature_matrix_)
    np.testing.assert_array_equal(models[0].predict(X_test), models[1].predict(X_test))


def test_nystrom_estimator_keeps_m_centres(client):
    X_train, y_train, X_test, y_test = low_rank_golden(n_train=3000, n_test=1000, seed=4)
    model = RFMRegressor(solver="nystrom", n_centers=800, iters=3, random_state=0, client=client)
    model.fit(X_train, y_train, X_val=X_test, y_val=y_test)
    assert model.model_.centres.shape == (800, X_train.shape[1])
    assert all(h["solver"] == "nystrom" and h["cg_iterations"] > 0 for h in model.history_)
    mse = [h["val_mse"] for h in model.history_]
    assert min(mse[1:]) < 0.6 * mse[0]  # feature learning helps on the low-rank task with Nystrom too


def test_auto_solver_picks_by_size():
    options = SolverOptions.from_config()
    assert choose_solver("auto", 100, options) == "direct"
    assert choose_solver("auto", 8000, options) == "direct"
    assert choose_solver("auto", 8001, options) == "nystrom"
    assert choose_solver("auto", 50000, options) == "nystrom"
    with dask.config.set({"rfm.cg-max-rows": 12000}):
        assert choose_solver("auto", 10000, SolverOptions.from_config()) == "cg"
    assert choose_solver("nystrom", 100, options) == "nystrom"
    # the dense solve (about 24 n^2 bytes) only where it fits half the smallest worker's memory limit
    assert choose_solver("auto", 8000, options, worker_memory=4 * 2**30) == "direct"
    assert choose_solver("auto", 8000, options, worker_memory=400 * 2**20) == "cg"
    assert choose_solver("auto", 2000, options, worker_memory=400 * 2**20) == "direct"
    assert choose_solver("auto", 6000, options, worker_memory=400 * 2**20) == "cg"


def _busy_tasks(seconds: float) -> tuple[str, int]:
    """Sleep, then report this worker's address and how many tasks it holds that are not yet finished."""
    from distributed import get_worker

    time.sleep(seconds)
    worker = get_worker()
    unfinished = sum(ts.state in ("waiting", "ready", "executing", "fetch", "flight") for ts in worker.state.tasks.values())
    return worker.address, unfinished


@pytest.mark.parametrize("spread", [False, True])
def test_submitter_bounds_unfinished_tasks_and_spreads_streamed_ones(process_client, spread):
    """However many calls a pass makes, the workers hold at most the Submitter's limit of them unfinished; with
    ``spread`` (streamed blocks) every worker gets a share even though no data pins the tasks anywhere."""
    from rfm_dask.parallel.distributed_operator import Submitter

    with dask.config.set({"rfm.tasks-per-thread": 2}):
        submitter = Submitter(process_client)
    assert submitter.limit() == 2 * sum(process_client.nthreads().values())
    futures = list(submitter.stream(((_busy_tasks, 0.02) for _ in range(60)), spread=spread))
    seen = process_client.gather(futures)
    assert max(unfinished for _, unfinished in seen) <= submitter.limit()
    if spread:
        counts = {address: sum(a == address for a, _ in seen) for address in process_client.nthreads()}
        assert min(counts.values()) >= 15, counts


def test_streamed_nystrom_fit_uses_every_worker(process_client, tmp_path):
    """A fit on streamed Zarr blocks runs its passes on both worker processes, also in the later RFM iterations,
    where the pass's shared keys (feature map, centres) live on one worker and would otherwise pin every task there."""
    from distributed import get_task_stream

    from rfm_dask import open_zarr, write_zarr

    X, _, Y = _problem(n=4000, d=5)
    write_zarr(tmp_path / "d.zarr", X, Y[:, 0], chunk_rows=250)
    data = open_zarr(tmp_path / "d.zarr")
    settings = {"rfm.persist-fraction": 1e-12, "rfm.kernel-cache-fraction": 0}  # streamed, kernel recomputed
    with dask.config.set(settings), get_task_stream(client=process_client) as stream:
        RFMRegressor(solver="nystrom", n_centers=100, iters=2, random_state=0, client=process_client).fit(
            data.X, data.y
        )
    grams = sorted(
        (r for r in stream.data if r["key"].startswith("gram_matvec")),
        key=lambda r: min(s["start"] for s in r["startstops"]),
    )
    last = grams[-len(grams) // 3 :]  # the last RFM iteration's CG steps
    shares = {w: sum(r["worker"] == w for r in last) / len(last) for w in process_client.nthreads()}
    assert min(shares.values()) >= 0.25, shares


def test_one_worker_nystrom_only_where_it_fits_the_smallest_worker(process_client):
    """The one-task FALKON solve gathers all rows and K_nm on one worker: it is chosen only when they fit half the
    smallest worker's memory limit (and ``rfm.one-worker-bytes``), never for streamed rows."""
    from types import SimpleNamespace

    from rfm_dask.parallel.row_blocks import LazyBlock, RowBlocks, smallest_worker_memory

    limit = smallest_worker_memory(process_client)
    assert limit > 0
    passes = SimpleNamespace(client=process_client, n_centres=100)
    fits_one_worker = KernelPasses._fits_one_worker.__get__(passes)
    per_row = 12 * 100 + 8 * 4
    fits, too_big = limit // 2 // per_row, limit // 2 // per_row + 1
    assert fits_one_worker(RowBlocks([None], [fits], 4), 2**62)
    assert not fits_one_worker(RowBlocks([None], [too_big], 4), 2**62)
    lazy = LazyBlock(da.zeros((10, 4), chunks=(10, 4)))
    assert not fits_one_worker(RowBlocks([lazy], [10], 4), 2**62)
    assert not fits_one_worker(RowBlocks([None], [10], 4), 8 * 100 * 10 - 1)


def test_gather_rows_joins_blocks_on_the_client_not_on_a_worker(process_client):
    """Targets and scores of a lazy array come back block by block: no task joins all n rows on one worker."""
    from distributed import get_task_stream

    from rfm_dask.parallel.inputs import gather_rows

    a = da.arange(10_000, chunks=250).astype(np.float64)
    b = da.stack([a, -a], axis=1).rechunk((300, 1))
    with get_task_stream(client=process_client) as stream:
        np.testing.assert_array_equal(gather_rows(a, scheduler=process_client), np.arange(10_000.0))
        np.testing.assert_array_equal(gather_rows(b, scheduler=process_client), b.compute(scheduler="sync"))
    # no task's result is larger than one block of b (a plain compute's join task would hold all 80 000 bytes of a)
    largest = max(r["nbytes"] for r in stream.data)
    assert largest <= 300 * 2 * 8, largest
    assert gather_rows(a[:0]).shape == (0,)
