"""Client-side solvers: preconditioned CG, the Nystrom preconditioner and the dense Cholesky solve."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.linalg

import reference as ref
from seeds import seeds
from rfm_dask.core.errors import NumericalError
from rfm_dask.solvers.cg import conjugate_gradient
from rfm_dask.solvers import direct
from rfm_dask.solvers.direct import cholesky_solve, direct_solve, tiled_cholesky
from rfm_dask.solvers.preconditioner import NystromPreconditioner

N, DIM, BANDWIDTH, REG, N_LANDMARKS = 200, 5, 10.0, 1e-2, 40


@pytest.fixture(scope="module")
def system():
    """Dense float64 Laplace kernel K (n, n) on random rows, the SPD matrix A = K + reg I, and landmarks."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, DIM))
    K = ref.kernel(X, X, np.eye(DIM), "laplace", BANDWIDTH, 1.0)
    A = K + REG * np.eye(N)
    landmarks = rng.choice(N, N_LANDMARKS, replace=False)
    return K, A, landmarks, rng


def rel_err(x, expected):
    return np.linalg.norm(x - expected) / np.linalg.norm(expected)


def operator_of(A):
    calls = []

    def op(V):
        assert V.ndim == 2  # the solver always hands the operator an (n, c) block
        calls.append(V.shape)
        return A @ V

    op.calls = calls
    return op


# --------------------------------------------------------------------------------------------- conjugate_gradient


@pytest.mark.parametrize("seed", seeds(3))
@pytest.mark.parametrize("precondition", [False, True], ids=["plain", "nystrom"])
@pytest.mark.parametrize("n_rhs", [None, 1, 3], ids=["vector", "one-column", "three-columns"])
def test_cg_matches_dense_solve(system, n_rhs, precondition, seed):
    K, A, landmarks, _ = system
    rng = np.random.default_rng(1 + seed)
    b = rng.standard_normal(N if n_rhs is None else (N, n_rhs))
    P = NystromPreconditioner(K[:, landmarks], K[np.ix_(landmarks, landmarks)], REG) if precondition else None
    res = conjugate_gradient(operator_of(A), b, preconditioner=P, tol=1e-10, max_iter=500)
    assert res.x.shape == b.shape
    assert res.iterations < 500
    expected = np.linalg.solve(A, b)
    assert rel_err(res.x, expected) < 1e-6
    # the reported residual is the true relative residual, max over columns, and below tol: both are computed
    # with rounding of about N eps (|A| |x| + |b|) per entry, large against a residual of 1e-10
    B, Xs = b.reshape(N, -1), res.x.reshape(N, -1)
    true = np.max(np.linalg.norm(B - A @ Xs, axis=0) / np.linalg.norm(B, axis=0))
    noise = np.max(np.linalg.norm(np.abs(A) @ np.abs(Xs) + np.abs(B), axis=0) / np.linalg.norm(B, axis=0))
    assert abs(res.residual - true) <= 2 * N * np.finfo(np.float64).eps * noise, (res.residual, true, noise)
    assert res.residual <= 1e-10


def test_nystrom_preconditioner_reduces_iterations(system):
    K, A, landmarks, _ = system
    b = np.random.default_rng(2).standard_normal((N, 2))
    plain = conjugate_gradient(operator_of(A), b, tol=1e-10)
    pre = conjugate_gradient(
        operator_of(A), b, preconditioner=NystromPreconditioner(K[:, landmarks], K[np.ix_(landmarks, landmarks)], REG), tol=1e-10
    )
    assert pre.residual <= 1e-10 and plain.residual <= 1e-10
    assert pre.iterations < plain.iterations


def test_nystrom_preconditioner_is_spd(system):
    K, _, landmarks, _ = system
    P = NystromPreconditioner(K[:, landmarks], K[np.ix_(landmarks, landmarks)], REG)
    Pinv = P.apply(np.eye(N))
    np.testing.assert_array_equal(P.apply_t(np.eye(N)), Pinv)
    np.testing.assert_allclose(Pinv, Pinv.T, rtol=0, atol=1e-12)
    assert np.min(np.linalg.eigvalsh(Pinv)) > 0


def test_nystrom_preconditioner_with_all_landmarks_is_near_exact(system):
    """With every row a landmark the Nystrom approximation is K itself, so P^-1 (K + mu I) ~ const * I on the
    retained eigenspace and CG needs only a handful of iterations."""
    K, A, _, _ = system
    P = NystromPreconditioner(K, K, REG)
    b = np.random.default_rng(3).standard_normal((N, 2))
    res = conjugate_gradient(operator_of(A), b, preconditioner=P, tol=1e-10)
    assert res.iterations <= 5
    assert rel_err(res.x, np.linalg.solve(A, b)) < 1e-6


@pytest.mark.parametrize("max_iter", [1, 5, 17])
def test_cg_respects_max_iter(system, max_iter):
    _, A, _, _ = system
    b = np.random.default_rng(4).standard_normal((N, 2))
    op = operator_of(A)
    res = conjugate_gradient(op, b, tol=1e-14, max_iter=max_iter)
    assert res.iterations == max_iter
    assert res.residual > 1e-14
    assert np.all(np.isfinite(res.x))
    # one operator call per iteration, plus at most one residual refresh per refresh_every and the final check
    assert len(op.calls) <= max_iter + max_iter // 10 + 1


def test_cg_zero_max_iter_returns_start(system):
    _, A, _, _ = system
    b = np.random.default_rng(5).standard_normal(N)
    res = conjugate_gradient(operator_of(A), b, max_iter=0)
    assert res.iterations == 0
    np.testing.assert_array_equal(res.x, np.zeros(N))


@pytest.mark.parametrize("shape", [(N,), (N, 3)])
def test_cg_zero_rhs_returns_zeros(system, shape):
    _, A, _, _ = system
    op = operator_of(A)
    res = conjugate_gradient(op, np.zeros(shape), tol=1e-10)
    assert res.x.shape == shape
    np.testing.assert_array_equal(res.x, 0.0)
    assert res.iterations == 0
    assert res.residual == 0.0
    assert not np.any(np.isnan(res.x))


def test_cg_zero_column_among_others(system):
    _, A, _, _ = system
    b = np.random.default_rng(6).standard_normal((N, 3))
    b[:, 1] = 0.0
    res = conjugate_gradient(operator_of(A), b, tol=1e-10)
    np.testing.assert_array_equal(res.x[:, 1], 0.0)
    expected = np.linalg.solve(A, b)
    assert rel_err(res.x[:, [0, 2]], expected[:, [0, 2]]) < 1e-6


def _failing_systems() -> dict:
    """name -> (A, b, text of the error): systems on which CG must stop with ``NumericalError``."""
    rng = np.random.default_rng(8)
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    indefinite = (Q * np.linspace(-1.0, 1.0, N)) @ Q.T
    singular = (Q[:, : N // 2] * np.linspace(1.0, 2.0, N // 2)) @ Q[:, : N // 2].T  # rank N/2, PSD
    return {
        "indefinite": (indefinite, rng.standard_normal(N), "p^T A p <= 0"),
        "singular, b outside the range": (singular, Q[:, -1] + 1e-3 * Q[:, 0], "diverged"),
        "NaN in the operator": (np.where(np.eye(N) > 0, np.nan, 1.0), rng.standard_normal(N), "diverged"),
    }


@pytest.mark.parametrize("case", _failing_systems())
def test_cg_stops_on_a_system_that_is_not_positive_definite(case):
    A, b, match = _failing_systems()[case]
    with pytest.raises(NumericalError, match=re.escape(match)):
        conjugate_gradient(operator_of(A), b, tol=1e-12, max_iter=10 * N)


def test_cholesky_solve_refuses_non_finite_values(system):
    K, _, _, _ = system
    with pytest.raises(NumericalError, match="kernel matrix holds non-finite"):
        cholesky_solve(np.where(np.eye(N) > 0, np.inf, K), np.ones((N, 1)), REG)
    with pytest.raises(NumericalError, match="non-finite coefficients"):
        cholesky_solve(K, np.full((N, 1), np.inf), REG)


def test_cg_warm_start(system):
    _, A, _, _ = system
    rng = np.random.default_rng(7)
    b = rng.standard_normal((N, 2))
    exact = np.linalg.solve(A, b)
    res = conjugate_gradient(operator_of(A), b, tol=1e-10, x0=exact)
    assert res.iterations == 0
    np.testing.assert_allclose(res.x, exact, rtol=1e-12)
    res = conjugate_gradient(operator_of(A), b, tol=1e-10, x0=exact + 1e-3 * rng.standard_normal((N, 2)))
    assert rel_err(res.x, exact) < 1e-6


# --------------------------------------------------------------------------------------------- cholesky_solve


@pytest.mark.parametrize("n_rhs", [None, 1, 3], ids=["vector", "one-column", "three-columns"])
def test_cholesky_solve_matches_dense_solve(system, n_rhs):
    K, A, _, _ = system
    Y = np.random.default_rng(8).standard_normal(N if n_rhs is None else (N, n_rhs))
    K_before = K.copy()
    out = cholesky_solve(K, Y, REG)
    assert out.shape == Y.shape
    assert rel_err(out, np.linalg.solve(A, Y)) < 1e-10
    np.testing.assert_array_equal(K, K_before)  # input not overwritten


@pytest.fixture
def count_factorisations(monkeypatch):
    """Wrap scipy.linalg.cho_factor to record the diagonal shift each attempt used (A_ii - K_ii)."""
    real = scipy.linalg.cho_factor
    shifts = []

    def wrapped(a, *args, **kwargs):
        shifts.append(a.copy())
        return real(a, *args, **kwargs)

    monkeypatch.setattr(scipy.linalg, "cho_factor", wrapped)
    return shifts


def test_cholesky_solve_jitter_retry_on_singular_kernel(count_factorisations):
    rng = np.random.default_rng(9)
    B = rng.standard_normal((60, 4))
    K = B @ B.T  # PSD, rank 4 of 60: plain Cholesky with reg=0 fails
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(K)
    Y = K @ rng.standard_normal((60, 2))  # in the range of K, so K A = Y is consistent
    out = cholesky_solve(K, Y, reg=0.0)
    assert np.all(np.isfinite(out))
    assert len(count_factorisations) >= 2  # the first attempt failed and a jittered one succeeded
    jitters = [np.mean(np.diag(a) - np.diag(K)) for a in count_factorisations]
    assert jitters[0] == 0.0 and jitters[-1] > 0
    scale = np.mean(np.diag(K))
    np.testing.assert_allclose(jitters[1], 1e-10 * scale, rtol=1e-6)
    # (K + j I) A = Y with tiny j: K A reproduces Y up to ~ j
    assert np.linalg.norm(K @ out - Y) / np.linalg.norm(Y) < 1e-4


def test_cholesky_solve_gives_up_on_indefinite_matrix():
    K = np.diag([1.0, 1.0, -1.0])
    with pytest.raises(np.linalg.LinAlgError):
        cholesky_solve(K, np.ones((3, 1)), reg=0.0)


def test_cholesky_solve_error_reports_largest_jitter_tried(count_factorisations):
    K = np.diag([1.0, 1.0, -1.0])
    with pytest.raises(np.linalg.LinAlgError) as info:
        cholesky_solve(K, np.ones((3, 1)), reg=0.0, max_tries=3)
    tried = max(np.mean(np.diag(a) - np.diag(K)) for a in count_factorisations)
    reported = float(re.search(r"jitter ([0-9.eE+-]+)", str(info.value)).group(1))
    assert reported == pytest.approx(tried, rel=1e-2)


# --------------------------------------------------------------------------------------------- direct_solve


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 64 rows, so the N = 200 test system spans 4 tile rows (the last one of 8)."""
    monkeypatch.setattr(direct, "TILE", 64)


@pytest.mark.parametrize("n_rhs", [1, 3])
def test_direct_solve_matches_dense_solve(system, small_tiles, n_rhs):
    K, A, _, _ = system
    Y = np.random.default_rng(10).standard_normal((N, n_rhs))
    K_before = K.copy()
    sol = direct_solve(K, Y, REG, threads=2)
    assert sol.precision == "float32" and 0 < sol.iterations < direct.DIRECT_MAX_ITER
    assert sol.x.shape == Y.shape and sol.residual <= direct.DIRECT_TOL
    # the float64 Cholesky solve's accuracy: its residual, and so its forward error up to the condition number
    assert rel_err(sol.x, np.linalg.solve(A, Y)) <= np.linalg.cond(A) * 2 * direct.DIRECT_TOL
    assert np.linalg.norm(A @ sol.x - Y) / np.linalg.norm(Y) <= 2 * direct.DIRECT_TOL
    np.testing.assert_array_equal(K, K_before)


def test_direct_solve_is_bitwise_independent_of_threads(system, small_tiles):
    K, _, _, _ = system
    Y = np.random.default_rng(11).standard_normal((N, 2))
    first = direct_solve(K, Y, REG, threads=1).x
    for threads in (2, 3, 8):
        np.testing.assert_array_equal(direct_solve(K, Y, REG, threads=threads).x, first)


def test_tiled_cholesky_matches_lapack(system, small_tiles):
    from concurrent.futures import ThreadPoolExecutor

    _, A, _, _ = system
    with ThreadPoolExecutor(2) as pool:
        L = np.tril(tiled_cholesky(A.copy(), pool))
    np.testing.assert_allclose(L, np.linalg.cholesky(A), rtol=0, atol=1e-13 * np.abs(L).max())
    with ThreadPoolExecutor(2) as pool, pytest.raises(np.linalg.LinAlgError):
        tiled_cholesky(np.diag([1.0, 1.0, -1.0]), pool)


def test_direct_solve_falls_back_to_float64_cholesky(system, small_tiles, monkeypatch):
    """When the preconditioned CG does not converge in DIRECT_MAX_ITER steps, the float64 Cholesky solve is used."""
    K, _, _, _ = system
    Y = np.random.default_rng(12).standard_normal((N, 2))
    monkeypatch.setattr(direct, "DIRECT_MAX_ITER", 1)
    sol = direct_solve(K, Y, REG, threads=2)
    assert sol.precision == "float64" and sol.iterations == 0
    np.testing.assert_array_equal(sol.x, cholesky_solve(K, Y, REG))
    assert sol.residual < 1e-12


@pytest.mark.parametrize("n", [60, 200])
def test_direct_solve_on_a_singular_kernel(small_tiles, n):
    """reg = 0 on a rank-deficient PSD kernel: the jittered float32 factor (or the float64 fallback) still gives a
    solution that reproduces consistent targets (n = 200: the retries re-cast K over several tiles)."""
    rng = np.random.default_rng(9)
    B = rng.standard_normal((n, 4))
    K = B @ B.T
    Y = K @ rng.standard_normal((n, 2))
    sol = direct_solve(K, Y, reg=0.0, threads=2)
    assert np.all(np.isfinite(sol.x))
    assert np.linalg.norm(K @ sol.x - Y) / np.linalg.norm(Y) < 1e-4
