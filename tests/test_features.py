"""Feature-matrix update in ``rfm_dask.core.feature_matrix`` against direct NumPy/SciPy computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from seeds import seeds

from rfm_dask.core.feature_matrix import agop_feature_matrix, matrix_sqrt, normalise, psd_power

D = 6


def random_psd(rng, d=D, rank=None):
    A = rng.standard_normal((d, rank or d))
    return A @ A.T / d


def with_spectrum(rng, vals):
    Q, _ = np.linalg.qr(rng.standard_normal((len(vals), len(vals))))
    return (Q * vals) @ Q.T, Q


# --------------------------------------------------------------------------------------------- psd_power


@pytest.mark.parametrize("power, expected", [(1.0, lambda A: A), (2.0, lambda A: A @ A), (0.0, lambda A: np.eye(len(A)))])
def test_psd_power_integer_powers(power, expected):
    A = random_psd(np.random.default_rng(0))
    np.testing.assert_allclose(psd_power(A, power), expected(A), rtol=1e-12, atol=1e-12 * np.abs(A).max())


def test_psd_power_half_matches_scipy_sqrtm():
    A = random_psd(np.random.default_rng(1))
    np.testing.assert_allclose(psd_power(A, 0.5), scipy.linalg.sqrtm(A).real, rtol=1e-10, atol=1e-12)


def test_psd_power_fractional_matches_eigen_definition():
    rng = np.random.default_rng(2)
    vals = np.array([3.0, 1.5, 0.7, 0.2, 0.05, 0.01])
    A, Q = with_spectrum(rng, vals)
    np.testing.assert_allclose(psd_power(A, 0.3), (Q * vals**0.3) @ Q.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", seeds(3))
def test_psd_power_clips_negative_eigenvalues(seed):
    """A^(1/2) with eigenvalues 0 and below clipped. eigh finds each eigenvalue to within about d eps ||A||, and the
    square root turns an error e near 0 into sqrt(e): the result is exact only to sqrt(d eps ||A||) (~1e-7)."""
    rng = np.random.default_rng(seed)
    vals = np.array([2.0, 1.0, 0.5, -0.3, -1e-3, 0.0])
    A, Q = with_spectrum(rng, vals)
    expected = (Q * np.maximum(vals, 0) ** 0.5) @ Q.T
    out = psd_power(A, 0.5)
    assert np.all(np.isfinite(out))
    eps = np.finfo(np.float64).eps
    np.testing.assert_allclose(out, expected, rtol=0, atol=2 * np.sqrt(D * eps * np.abs(vals).max()))
    assert np.min(np.linalg.eigvalsh(out)) > -D * eps * np.abs(out).max()


def test_psd_power_symmetrises_input():
    rng = np.random.default_rng(4)
    A = random_psd(rng)
    E = 1e-3 * rng.standard_normal((D, D))
    E -= E.T  # antisymmetric perturbation: (A + E + (A + E)^T) / 2 == A
    np.testing.assert_allclose(psd_power(A + E, 0.5), psd_power(A, 0.5), rtol=1e-12, atol=1e-14)


def test_psd_power_diagonal_elementwise():
    a = np.array([4.0, 0.25, 0.0, -1.0, 9.0])
    np.testing.assert_array_equal(psd_power(a, 0.5), [2.0, 0.5, 0.0, 0.0, 3.0])
    np.testing.assert_array_equal(psd_power(a, 1.0), [4.0, 0.25, 0.0, 0.0, 9.0])


# --------------------------------------------------------------------------------------------- matrix_sqrt


@pytest.mark.parametrize("rank", [D, 3])
def test_matrix_sqrt_squares_back(rank):
    M = random_psd(np.random.default_rng(5), rank=rank)
    S = matrix_sqrt(M)
    assert S.shape == (D, D)
    np.testing.assert_allclose(S, S.T, rtol=0, atol=1e-14)
    np.testing.assert_allclose(S @ S, M, rtol=1e-10, atol=1e-12 * np.abs(M).max())
    assert np.min(np.linalg.eigvalsh(S)) > -1e-7  # PSD root (rank-deficient: zero eigenvalues up to sqrt(eps))


def test_matrix_sqrt_diagonal():
    m = np.array([0.1, 1.0, 0.5, 2.0])
    s = matrix_sqrt(m)
    assert s.shape == (4,)
    np.testing.assert_allclose(s * s, m, rtol=1e-15)
    np.testing.assert_allclose(np.diag(s) @ np.diag(s), np.diag(m), rtol=1e-15)


# --------------------------------------------------------------------------------------------- normalise


def test_normalise_divides_by_largest_absolute_entry():
    M = np.array([[1.0, -4.0], [-4.0, 2.0]])
    out = normalise(M)
    np.testing.assert_array_equal(out, M / 4.0)
    assert np.max(np.abs(out)) == 1.0
    np.testing.assert_array_equal(M, [[1.0, -4.0], [-4.0, 2.0]])  # input untouched


def test_normalise_full_and_diag():
    M = random_psd(np.random.default_rng(6))
    np.testing.assert_allclose(normalise(M), M / np.abs(M).max(), rtol=1e-15)
    v = np.array([0.5, 3.0, 1.5])
    np.testing.assert_allclose(normalise(v), [1 / 6, 1.0, 0.5], rtol=1e-15)
    np.testing.assert_allclose(normalise(7.5 * M), normalise(M), rtol=1e-15)


@pytest.mark.parametrize("shape", [(3, 3), (3,)])
def test_normalise_leaves_zero_alone(shape):
    out = normalise(np.zeros(shape))
    assert np.all(out == 0)
    assert not np.any(np.isnan(out))


# --------------------------------------------------------------------------------------------- agop_feature_matrix


def partial_sums(G, diag):
    flat = G.reshape(-1, G.shape[-1])
    outer = (flat**2).sum(axis=0) if diag else flat.T @ flat
    return outer, G.sum(axis=0)


def direct_feature_matrix(G, power, centre, diag):
    """normalise(AGOP^power) straight from the gradients G (n, c, d)."""
    if centre:
        G = G - G.mean(axis=0, keepdims=True)
    n = G.shape[0]
    agop = np.einsum("ila,ilb->ab", G, G) / n
    if diag:
        out = np.diag(agop) ** power
    elif power == 1.0:
        out = agop
    else:
        out = scipy.linalg.sqrtm(agop).real if power == 0.5 else scipy.linalg.fractional_matrix_power(agop, power).real
    return out / np.abs(out).max()


@pytest.mark.parametrize("diag", [False, True], ids=["full", "diag"])
@pytest.mark.parametrize("centre", [False, True], ids=["raw", "centred"])
@pytest.mark.parametrize("power", [1.0, 0.5])
def test_agop_feature_matrix_matches_direct(power, centre, diag):
    rng = np.random.default_rng(8)
    n, c = 50, 3
    # give the gradients a non-zero mean so centring matters
    G = rng.standard_normal((n, c, D)) + rng.standard_normal((1, c, D))
    outer, gsum = partial_sums(G, diag)
    M = agop_feature_matrix(outer, gsum, n, power=power, centre=centre)
    expected = direct_feature_matrix(G, power, centre, diag)
    assert M.shape == ((D,) if diag else (D, D))
    np.testing.assert_allclose(M, expected, rtol=1e-10, atol=1e-12)
    assert np.isclose(np.max(np.abs(M)), 1.0, rtol=0, atol=1e-15)
    if not diag:
        np.testing.assert_allclose(M, M.T, rtol=0, atol=1e-14)
        assert np.min(np.linalg.eigvalsh(M)) > -1e-12


def test_agop_feature_matrix_centring_differs():
    rng = np.random.default_rng(9)
    G = rng.standard_normal((40, 2, D)) + 3.0
    outer, gsum = partial_sums(G, False)
    raw = agop_feature_matrix(outer, gsum, 40, centre=False)
    centred = agop_feature_matrix(outer, gsum, 40, centre=True)
    assert not np.allclose(raw, centred)


def test_agop_feature_matrix_power_one_is_normalised_agop():
    """With power 1 and no centring the result is just AGOP / max|AGOP|, independent of n."""
    rng = np.random.default_rng(10)
    G = rng.standard_normal((30, 1, D))
    outer, gsum = partial_sums(G, False)
    M = agop_feature_matrix(outer, gsum, 30)
    np.testing.assert_allclose(M, outer / np.abs(outer).max(), rtol=1e-13)
    np.testing.assert_allclose(agop_feature_matrix(outer, gsum, 999), M, rtol=1e-13)
