"""The block functions and the worker tasks on CuPy arrays agree with NumPy, the fused CUDA tiles agree with a dense
float64 reference, and a fit on a dask-cuda cluster agrees with the CPU fit (GPU only; skipped without CuPy or a
CUDA device). CI has no GPU: these run on a GPU machine with ``pytest -m gpu``."""

from __future__ import annotations

import dask
import numpy as np
import pytest

import reference as ref
from rfm_dask import cuda_tiles, devices
from rfm_dask import gradients as gr
from rfm_dask import kernels as kn
from rfm_dask import worker_tasks as wt
from rfm_dask.features import matrix_sqrt

cupy = pytest.importorskip("cupy")
try:
    if cupy.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError
except Exception:  # noqa: BLE001 - no driver, no device: skip the module
    pytest.skip("no CUDA device", allow_module_level=True)

pytestmark = pytest.mark.gpu
SPECS = [kn.KernelSpec("laplace", 3.0), kn.KernelSpec("laplace", 2.0, 1.5), kn.KernelSpec("gaussian", 2.5)]


def _data(b=300, m=120, d=16, c=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(b, d)).astype(np.float32)
    C = np.concatenate([X[:20], rng.normal(size=(m - 20, d))]).astype(np.float32)  # self-terms included
    A = rng.normal(size=(d, d))
    S = matrix_sqrt(A @ A.T / d).astype(np.float32)
    shift = X.mean(axis=0).astype(np.float32)
    return X, C, S, shift, rng.normal(size=(m, c)), rng.normal(size=(b, c))


def _both(fn, *arrays, **kw):
    """fn on NumPy arrays and on CuPy copies; returns (numpy result, cupy result on the host)."""
    out_np = fn(np, *arrays, **kw)
    out_cp = fn(cupy, *(cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays), **kw)
    to_host = lambda r: tuple(map(cupy.asnumpy, r)) if isinstance(r, tuple) else cupy.asnumpy(r)  # noqa: E731
    return out_np, to_host(out_cp)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.exponent}")
def test_kernel_functions_match_numpy(spec):
    X, C, S, shift, beta, Y = _data()
    tile = 4096  # several row tiles

    def matvec(xp, X, C, S, shift, beta):
        Xt, Ct = kn.transform(xp, X, S, shift), kn.transform(xp, C, S, shift)
        return kn.kernel_matvec(xp, Xt, Ct, kn.sq_norms(xp, Ct), beta, spec, tile)

    def gram(xp, X, C, S, shift, beta):
        Xt, Ct = kn.transform(xp, X, S, shift), kn.transform(xp, C, S, shift)
        return kn.kernel_gram_matvec(xp, Xt, Ct, kn.sq_norms(xp, Ct), beta, spec, tile)

    def rmatvec(xp, X, C, S, shift, Y):
        Xt, Ct = kn.transform(xp, X, S, shift), kn.transform(xp, C, S, shift)
        return kn.kernel_rmatvec(xp, Xt, Ct, kn.sq_norms(xp, Ct), Y, spec, tile)

    def gradients(xp, X, C, S, shift, beta):
        Ct = kn.transform(xp, C, S, shift)
        return gr.predictor_gradients(xp, X, S, Ct, kn.sq_norms(xp, Ct), beta, spec, tile, shift=shift)

    for fn, args in ((matvec, (X, C, S, shift, beta)), (gram, (X, C, S, shift, beta)),
                     (rmatvec, (X, C, S, shift, Y)), (gradients, (X, C, S, shift, beta))):
        expected, got = _both(fn, *args)
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max(), err_msg=fn.__name__)


@pytest.mark.parametrize("q", [1.0, 0.7])
def test_l1_kernel_functions_on_cupy(q):
    """The L1 kernel takes the tiled CuPy path (no fused tile): products and gradients agree with NumPy, the product
    with a float64 reference, and the self-terms are exact."""
    X, C, _, shift, beta, Y = _data()
    S = np.random.default_rng(2).uniform(0.2, 1.0, X.shape[1]).astype(np.float32)
    spec, tile = kn.KernelSpec("l1_laplace", 3.0, q), 4096
    Xg, Cg = cupy.asarray(X), cupy.asarray(C)
    assert kn.gpu_route(cupy, Xg, Cg, cupy.asarray(beta), spec) is None

    def products(xp, X, C, S, shift, beta, Y):
        Xt, Ct = kn.transform(xp, X, S, shift), kn.transform(xp, C, S, shift)
        c_sq = kn.sq_norms(xp, Ct)
        return (kn.kernel_matvec(xp, Xt, Ct, c_sq, beta, spec, tile),
                kn.kernel_gram_matvec(xp, Xt, Ct, c_sq, beta, spec, tile),
                kn.kernel_rmatvec(xp, Xt, Ct, c_sq, Y, spec, tile),
                gr.predictor_gradients(xp, X, S, Ct, c_sq, beta, spec, tile, shift=shift), kn.l1_distances(xp, Xt, Xt))

    expected, got = _both(products, X, C, S, shift, beta, Y)
    for e, g in zip(expected[:4], got[:4]):
        np.testing.assert_allclose(g, e, rtol=2e-4, atol=2e-4 * np.abs(e).max())
    assert np.all(np.diag(got[4]) == 0)
    K = ref.kernel(X, C, S.astype(np.float64) ** 2, "l1_laplace", 3.0, q)
    _close(got[0], K @ beta)


def test_self_terms_are_exact_on_the_gpu():
    X, C, S, shift, *_ = _data()
    Xt = kn.transform(cupy, cupy.asarray(X), cupy.asarray(S), cupy.asarray(shift))
    d2 = cupy.asnumpy(kn.sq_distances(cupy, Xt, kn.sq_norms(cupy, Xt), Xt, kn.sq_norms(cupy, Xt)))
    assert np.all(np.diag(d2) == 0) and np.all(d2 >= 0)


@pytest.mark.parametrize("diag", [False, True])
def test_agop_and_fact_partials_match_numpy(diag):
    X, C, S, shift, beta, Y = _data()
    G = np.random.default_rng(1).normal(size=(50, 3, 16))
    expected, got = _both(gr.agop_partial, G, diag=diag)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-10)
    expected, got = _both(gr.fact_partial, G, Y[:50], X[:50].astype(np.float64), diag=diag)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_worker_tasks_take_cupy_blocks_and_return_numpy():
    X, C, S, shift, beta, Y = _data()
    spec, fmap = SPECS[0], (S, shift)
    centres_np, centres_cp = wt.transformed_centres(fmap, C), wt.transformed_centres(fmap, cupy.asarray(C))
    for task, args in ((wt.matvec, (fmap, None, beta, spec, 4096)), (wt.gram_matvec, (fmap, None, beta, spec, 4096))):
        expected = task(X, args[0], centres_np, *args[2:])
        got = task(cupy.asarray(X), args[0], centres_cp, *args[2:])
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())
    rows = np.arange(0, 300, 7)
    expected = wt.agop_sums(X, rows, fmap, centres_np, beta, spec, False, 4096)
    got = wt.agop_sums(cupy.asarray(X), rows, fmap, centres_cp, beta, spec, False, 4096)
    assert all(isinstance(g, np.ndarray) for g in got)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-3, atol=1e-3 * np.abs(expected[0]).max())


def test_fit_on_cupy_chunks_matches_numpy(client):
    import dask.array as da

    from rfm_dask import RFMRegressor
    from rfm_dask.datasets import low_rank_golden

    X, y, X_test, _ = low_rank_golden(n_train=1500, n_test=200, seed=3)
    params = dict(iters=2, solver="cg", random_state=0, client=client)
    with dask.config.set({"rfm.device": "cpu"}):  # "auto" would move NumPy blocks to the GPU on this machine
        on_cpu = RFMRegressor(**params).fit(X, y)
    X_gpu = da.from_array(X, chunks=(300, -1)).map_blocks(cupy.asarray, dtype=np.float32)
    on_gpu = RFMRegressor(**params).fit(X_gpu, y)
    p, q = on_gpu.predict(X_test), on_cpu.predict(X_test)
    np.testing.assert_allclose(p, q, rtol=0, atol=1e-3 * np.abs(q).max())


# -- fused CUDA tiles ------------------------------------------------------------------------------------------------
# (b, m, d): b and m not multiples of the 64-row and 128-centre tiles, d of the 16-feature stages
FUSED_SHAPES = [(1, 1, 1), (70, 130, 1), (300, 257, 20), (129, 300, 100), (1000, 129, 20)]


def _fused_case(b, m, d, c, seed=0):
    """Rows X (b, d), centres C (m, d) sharing a third of the rows (self-terms), V (m, c) and U (b, c)."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(b, d)) / np.sqrt(d)).astype(np.float32)
    C = (rng.normal(size=(m, d)) / np.sqrt(d)).astype(np.float32)
    shared = min(b, m) // 3
    C[:shared] = X[:shared]
    return X, C, rng.normal(size=(m, c)), rng.normal(size=(b, c))


def _dense_kernel(X, C, spec):
    """K(X, C) (b, m) in float64 by the independent reference (identity M)."""
    return ref.kernel(X, C, np.ones(X.shape[1]), spec.kind, spec.bandwidth, spec.exponent)


def _close(got, expected, rtol=1e-5):
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.exponent}")
@pytest.mark.parametrize("b, m, d", FUSED_SHAPES)
def test_fused_products_match_a_float64_reference(spec, b, m, d):
    X, C, V, U = _fused_case(b, m, d, 6)
    K = _dense_kernel(X, C, spec)
    Xg, Cg = cupy.asarray(X), cupy.asarray(C)
    for c in (1, 3, 6):  # 6: two launches of cuda_tiles.COLUMNS columns
        Vc, Uc = V[:, :c], U[:, :c]
        _close(cupy.asnumpy(cuda_tiles.matvec(Xg, Cg, cupy.asarray(Vc), spec)), K @ Vc)
        _close(cupy.asnumpy(cuda_tiles.rmatvec(Xg, Cg, cupy.asarray(Uc), spec)), K.T @ Uc)
        _close(cupy.asnumpy(cuda_tiles.gram_matvec(Xg, Cg, cupy.asarray(Vc), spec)), K.T @ (K @ Vc))


@pytest.mark.parametrize("target_blocks", [1, 8, cuda_tiles.TARGET_BLOCKS])  # 1 x 12, 4 x 3 and 12 x 1 tiles
def test_fused_products_are_bitwise_repeatable(monkeypatch, target_blocks):
    monkeypatch.setattr(cuda_tiles, "TARGET_BLOCKS", target_blocks)
    spec = SPECS[0]
    X, C, V, _ = _fused_case(100, 1500, 20, 3, seed=1)
    Xg, Cg, Vg = cupy.asarray(X), cupy.asarray(C), cupy.asarray(V)
    first, second = (cupy.asnumpy(cuda_tiles.matvec(Xg, Cg, Vg, spec)) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    _close(first, _dense_kernel(X, C, spec) @ V)


def test_kernel_products_take_the_fused_route_on_cupy():
    spec = SPECS[1]
    X, C, V, U = _fused_case(300, 257, 20, 2)
    Xg, Cg, Vg, Ug = (cupy.asarray(a) for a in (X, C, V, U))
    c_sq = kn.sq_norms(cupy, Cg)
    assert kn.gpu_route(cupy, Xg, Cg, Vg, spec) == "fused" and kn.gpu_route(np, X, C, V, spec) is None
    pairs = [
        (kn.kernel_matvec(cupy, Xg, Cg, c_sq, Vg, spec), cuda_tiles.matvec(Xg, Cg, Vg, spec)),
        (kn.kernel_rmatvec(cupy, Xg, Cg, c_sq, Ug, spec), cuda_tiles.rmatvec(Xg, Cg, Ug, spec)),
        (kn.kernel_gram_matvec(cupy, Xg, Cg, c_sq, Vg, spec), cuda_tiles.gram_matvec(Xg, Cg, Vg, spec)),
    ]
    for routed, fused in pairs:
        np.testing.assert_array_equal(cupy.asnumpy(routed), cupy.asnumpy(fused))
    with dask.config.set({"rfm.gpu.fused": False}):
        assert kn.gpu_route(cupy, Xg, Cg, Vg, spec) is None
    assert kn.gpu_route(cupy, Xg.astype(np.float64), Cg.astype(np.float64), Vg, spec) is None


def test_tf32_route_is_close_and_restores_float32_gemms():
    from cupy._core import _routines_linalg as linalg

    spec = SPECS[0]
    X, C, V, _ = _fused_case(300, 257, 64, 1)
    Xg, Cg, Vg = cupy.asarray(X), cupy.asarray(C), cupy.asarray(V)
    before = linalg.get_compute_type(np.float32)
    with dask.config.set({"rfm.gpu.precision": "tf32"}):
        assert kn.gpu_route(cupy, Xg, Cg, Vg, spec) == "tf32"
        got = cupy.asnumpy(kn.kernel_matvec(cupy, Xg, Cg, kn.sq_norms(cupy, Cg), Vg, spec))
    assert linalg.get_compute_type(np.float32) == before
    _close(got, _dense_kernel(X, C, spec) @ V, rtol=1e-2)  # TF32: an opt-in, less accurate


def test_to_device_moves_blocks_to_the_gpu():
    block = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert devices.cuda_available()
    for mode in ("auto", "gpu"):
        with dask.config.set({"rfm.device": mode}):
            moved = devices.to_device(block)
        assert isinstance(moved, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(moved), block)
    assert devices.to_device(block, "cpu") is block


def test_fit_on_a_local_cuda_cluster_matches_the_cpu_fit(client):
    pytest.importorskip("dask_cuda")
    from rfm_dask import RFMRegressor
    from rfm_dask.datasets import low_rank_golden

    X, y, X_test, _ = low_rank_golden(n_train=3000, n_test=500, seed=5)
    params = dict(iters=2, solver="nystrom", n_centers=600, random_state=0)
    # distributed CG passes with kernels recomputed each step, i.e. the fused tiles on the GPU workers
    with dask.config.set({"rfm.one-worker-bytes": 0, "rfm.kernel-cache-fraction": 0}):
        with dask.config.set({"rfm.device": "cpu"}):
            on_cpu = RFMRegressor(client=client, **params).fit(X, y)
        with dask.config.set({"rfm.device": "gpu"}):
            gpu_client = devices.local_cuda_client()
            try:
                on_gpu = RFMRegressor(client=gpu_client, **params).fit(X, y)
            finally:
                cluster = gpu_client.cluster
                gpu_client.close()
                cluster.close()
    p, q = on_gpu.predict(X_test), on_cpu.predict(X_test)
    assert on_gpu.best_iter_ == on_cpu.best_iter_
    assert np.linalg.norm(p - q) / np.linalg.norm(q) < 1e-4
