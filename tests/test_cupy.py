"""The block functions and the worker tasks on CuPy arrays agree with NumPy (GPU only; skipped without CuPy or a
CUDA device). CI has no GPU: these run on a GPU machine with ``pytest -m gpu``."""

from __future__ import annotations

import numpy as np
import pytest

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
        return kn.predictor_gradients(xp, X, S, Ct, kn.sq_norms(xp, Ct), beta, spec, tile, shift=shift)

    for fn, args in ((matvec, (X, C, S, shift, beta)), (gram, (X, C, S, shift, beta)),
                     (rmatvec, (X, C, S, shift, Y)), (gradients, (X, C, S, shift, beta))):
        expected, got = _both(fn, *args)
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max(), err_msg=fn.__name__)


def test_self_terms_are_exact_on_the_gpu():
    X, C, S, shift, *_ = _data()
    Xt = kn.transform(cupy, cupy.asarray(X), cupy.asarray(S), cupy.asarray(shift))
    d2 = cupy.asnumpy(kn.sq_distances(cupy, Xt, kn.sq_norms(cupy, Xt), Xt, kn.sq_norms(cupy, Xt)))
    assert np.all(np.diag(d2) == 0) and np.all(d2 >= 0)


@pytest.mark.parametrize("diag", [False, True])
def test_agop_and_fact_partials_match_numpy(diag):
    X, C, S, shift, beta, Y = _data()
    G = np.random.default_rng(1).normal(size=(50, 3, 16))
    expected, got = _both(kn.agop_partial, G, diag=diag)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-10)
    expected, got = _both(kn.fact_partial, G, Y[:50], X[:50].astype(np.float64), diag=diag)
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
    on_cpu = RFMRegressor(**params).fit(X, y)
    X_gpu = da.from_array(X, chunks=(300, -1)).map_blocks(cupy.asarray, dtype=np.float32)
    on_gpu = RFMRegressor(**params).fit(X_gpu, y)
    p, q = on_gpu.predict(X_test), on_cpu.predict(X_test)
    np.testing.assert_allclose(p, q, rtol=0, atol=1e-3 * np.abs(q).max())
