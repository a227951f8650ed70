"""Block kernel functions in ``rfm_dask.kernels`` against the dense float64 reference in ``reference.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest

import reference as ref
from seeds import seeds
from rfm_dask.gradients import agop_partial, predictor_gradients
from rfm_dask.kernel_spec import KernelSpec
from rfm_dask.kernels import (
    kernel_gram_matvec,
    kernel_matvec,
    kernel_rmatvec,
    kernel_tile,
    kernel_tiles,
    l1_distances,
    sq_distances,
    sq_norms,
    tiles_gram_matvec,
    transform,
)

BANDWIDTH = 2.5
N_EVAL, N_CENTRES, DIM, N_OUT = 40, 30, 5, 3

KERNEL_CASES = [
    pytest.param("laplace", 1.0, id="laplace-q1"),
    pytest.param("laplace", 0.7, id="laplace-q0.7"),
    pytest.param("laplace", 2.0, id="laplace-q2"),
    pytest.param("gaussian", 1.0, id="gaussian"),
]
M_KINDS = ["full", "diag"]
L1_CASES = [pytest.param("l1_laplace", q, id=f"l1-q{q}") for q in (1.0, 0.7, 1.5)]
# (M kind, kernel, q): every kernel under a diagonal M, the L2 kernels under a full M as well (the L1 kernel is
# defined for a diagonal M only)
CASES = [
    pytest.param(mkind, *case.values, id=f"{case.id}-{mkind}")
    for mkind in M_KINDS
    for case in KERNEL_CASES + (L1_CASES if mkind == "diag" else [])
]
# dtype of the inputs handed to the package -> relative tolerance against the float64 reference
DTYPES = [pytest.param(np.float64, 1e-10, id="f64"), pytest.param(np.float32, 1e-5, id="f32")]
# Finite differences (h = 1e-5, float64) carry ~1e-10 truncation/rounding error of their own, so the float64
# gradient comparison against them cannot be tighter than this; float32 stays at 1e-5.
FD_RTOL64 = 1e-9


def random_m(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "diag":
        return rng.uniform(0.2, 1.0, DIM)
    A = rng.standard_normal((DIM, DIM))
    M = A @ A.T / DIM
    return M / np.max(np.abs(M))


@pytest.fixture
def problem(request):
    """X (evaluation rows), C (centres), beta, M; float64, X disjoint from C."""
    mkind = request.param
    rng = np.random.default_rng(1234 + M_KINDS.index(mkind))
    X = rng.standard_normal((N_EVAL, DIM))
    C = rng.standard_normal((N_CENTRES, DIM))
    # the L1 kernel has a kink where a coordinate of x equals a centre's: keep the finite differences off them
    while np.any(close := (np.abs(X[:, None, :] - C[None]) < 100 * ref.FD_STEP).any(axis=1)):
        X[close] += 200 * ref.FD_STEP
    beta = rng.standard_normal((N_CENTRES, N_OUT))
    return X, C, beta, random_m(mkind, rng)


def assert_rel_close(actual, expected, rtol):
    """Elementwise |a - e| <= rtol * (|e| + max|e|): relative, with a floor at the array's scale."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape
    assert np.all(np.isfinite(actual))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.max(np.abs(expected)))


def package_inputs(X, C, M, dtype):
    """Cast to ``dtype`` and transform with S = M^(1/2) as the package expects; also the inputs the reference must
    use (the cast values, back in float64) so input rounding is not counted as error."""
    Xd, Cd = X.astype(dtype), C.astype(dtype)
    S = ref.sqrtm_psd(M).astype(dtype)
    Xt, Ct = transform(np, Xd, S), transform(np, Cd, S)
    return Xd, Cd, S, Xt, Ct, Xd.astype(np.float64), Cd.astype(np.float64)


# --------------------------------------------------------------------------------------------- kernel_tile


@pytest.mark.parametrize("dtype, rtol", DTYPES)
@pytest.mark.parametrize("problem, kind, q", CASES, indirect=["problem"])
def test_kernel_tile_matches_reference(problem, kind, q, dtype, rtol):
    X, C, _, M = problem
    spec = KernelSpec(kind, BANDWIDTH, q)
    _, _, _, Xt, Ct, X64, C64 = package_inputs(X, C, M, dtype)
    K = kernel_tile(np, Xt, sq_norms(np, Xt), Ct, sq_norms(np, Ct), spec)
    assert K.dtype == dtype
    assert_rel_close(K, ref.kernel(X64, C64, M, kind, BANDWIDTH, q), rtol)


# --------------------------------------------------------------------------------------------- kernel_matvec


@pytest.mark.parametrize("n_cols", [1, N_OUT])
@pytest.mark.parametrize("dtype, rtol", DTYPES)
@pytest.mark.parametrize("problem, kind, q", CASES, indirect=["problem"])
def test_kernel_matvec_matches_reference(problem, kind, q, dtype, rtol, n_cols):
    X, C, beta, M = problem
    spec = KernelSpec(kind, BANDWIDTH, q)
    V = beta[:, :n_cols]
    _, _, _, Xt, Ct, X64, C64 = package_inputs(X, C, M, dtype)
    # tile=7 over 30 centres: tiles of 7, 7, 7, 7, 2
    out = kernel_matvec(np, Xt, Ct, sq_norms(np, Ct), V, spec, tile=7)
    assert out.dtype == np.float64
    assert out.shape == (N_EVAL, n_cols)
    assert_rel_close(out, ref.kernel(X64, C64, M, kind, BANDWIDTH, q) @ V, rtol)


@pytest.mark.parametrize("seed", seeds(3))
def test_kernel_matvec_independent_of_tile(seed):
    """Tiles change which rows share a distance GEMM, so BLAS may round each row's distances differently: the
    products may differ by twice the float64 rounding bound of K beta, |dK| |beta| plus the sum's m eps |K| |beta|
    (beta has mixed signs, so no relative tolerance on K beta itself is safe)."""
    rng = np.random.default_rng(seed)
    X, C, beta = rng.standard_normal((N_EVAL, DIM)), rng.standard_normal((N_CENTRES, DIM)), rng.standard_normal(
        (N_CENTRES, N_OUT))
    M = random_m("full", rng)
    spec = KernelSpec("laplace", BANDWIDTH, 1.0)
    _, _, _, Xt, Ct, _, _ = package_inputs(X, C, M, np.float64)
    c_sq = sq_norms(np, Ct)
    whole = kernel_matvec(np, Xt, Ct, c_sq, beta, spec)
    eps = np.finfo(np.float64).eps
    K = ref.kernel(X, C, M, "laplace", BANDWIDTH)
    dK = ref.float32_kernel_error(X, C, M, "laplace", BANDWIDTH, eps=eps, shift=np.zeros(DIM))
    bound = 2 * (4 * dK @ np.abs(beta) + N_CENTRES * eps * K @ np.abs(beta))
    for tile in (1, 7, N_CENTRES, 1000):
        assert np.all(np.abs(kernel_matvec(np, Xt, Ct, c_sq, beta, spec, tile=tile) - whole) <= bound)


@pytest.mark.parametrize("dtype, rtol", DTYPES)
@pytest.mark.parametrize("problem, kind, q", CASES, indirect=["problem"])
def test_gram_and_rmatvec_match_reference(problem, kind, q, dtype, rtol):
    """K^T (K W), K^T Y and the held tiles' K^T (K W) against the dense reference kernel."""
    X, C, beta, M = problem
    spec = KernelSpec(kind, BANDWIDTH, q)
    Y = np.random.default_rng(5).standard_normal((N_EVAL, 2))
    _, _, _, Xt, Ct, X64, C64 = package_inputs(X, C, M, dtype)
    K = ref.kernel(X64, C64, M, kind, BANDWIDTH, q)
    c_sq = sq_norms(np, Ct)
    gram = kernel_gram_matvec(np, Xt, Ct, c_sq, beta, spec, tile=7)
    assert gram.dtype == np.float64 and gram.shape == (N_CENTRES, N_OUT)
    assert_rel_close(gram, K.T @ (K @ beta), rtol)
    np.testing.assert_array_equal(tiles_gram_matvec(np, kernel_tiles(np, Xt, Ct, c_sq, spec, tile=7), beta, N_CENTRES),
                                  gram)
    assert_rel_close(kernel_rmatvec(np, Xt, Ct, c_sq, Y, spec, tile=7), K.T @ Y, rtol)


# --------------------------------------------------------------------------------------------- predictor_gradients


@pytest.mark.parametrize("dtype, rtol", [pytest.param(np.float64, FD_RTOL64, id="f64"), DTYPES[1]])
@pytest.mark.parametrize("problem, kind, q", CASES, indirect=["problem"])
def test_predictor_gradients_match_finite_differences(problem, kind, q, dtype, rtol):
    X, C, beta, M = problem
    spec = KernelSpec(kind, BANDWIDTH, q)
    Xd, _, S, _, Ct, X64, C64 = package_inputs(X, C, M, dtype)
    G = predictor_gradients(np, Xd, S, Ct, sq_norms(np, Ct), beta, spec, tile=7)
    assert G.dtype == np.float64
    assert G.shape == (N_EVAL, N_OUT, DIM)
    assert_rel_close(G, ref.fd_gradients(X64, C64, beta, M, kind, BANDWIDTH, q), rtol)


@pytest.mark.parametrize("dtype, rtol", [pytest.param(np.float64, FD_RTOL64, id="f64"), DTYPES[1]])
@pytest.mark.parametrize("problem, kind, q", CASES, indirect=["problem"])
def test_predictor_gradients_mask_self_term(problem, kind, q, dtype, rtol):
    """At the centres themselves the self-term is dropped: grad f at c_i == grad of the predictor without c_i."""
    _, C, beta, M = problem
    spec = KernelSpec(kind, BANDWIDTH, q)
    _, Cd, S, _, Ct, _, C64 = package_inputs(C, C, M, dtype)
    c_sq = sq_norms(np, Ct)
    G = predictor_gradients(np, Cd, S, Ct, c_sq, beta, spec, tile=7)
    assert np.all(np.isfinite(G))

    expected = np.empty_like(G)
    for i in range(N_CENTRES):
        keep = np.arange(N_CENTRES) != i
        expected[i] = ref.fd_gradients(C64[i : i + 1], C64[keep], beta[keep], M, kind, BANDWIDTH, q)[0]
        # and the same through the package with the self-centre removed
        G_minus = predictor_gradients(np, Cd[i : i + 1], S, Ct[keep], c_sq[keep], beta[keep], spec, tile=7)
        assert_rel_close(G[i], G_minus[0], 1e-12 if dtype == np.float64 else 1e-5)
    assert_rel_close(G, expected, rtol)


@pytest.mark.parametrize("kind, q", KERNEL_CASES + L1_CASES)
def test_predictor_gradients_mask_duplicate_centres(kind, q):
    """A centre repeated in C contributes nothing at its own location, whichever copy."""
    rng = np.random.default_rng(7)
    C = rng.standard_normal((12, DIM))
    C[5] = C[2]
    beta = rng.standard_normal((12, 2))
    S = ref.sqrtm_psd(random_m("diag" if kind == "l1_laplace" else "full", rng))
    spec = KernelSpec(kind, BANDWIDTH, q)
    Ct = transform(np, C, S)
    G = predictor_gradients(np, C[2:3], S, Ct, sq_norms(np, Ct), beta, spec)
    keep = np.ones(12, bool)
    keep[[2, 5]] = False
    Ck = Ct[keep]
    G_minus = predictor_gradients(np, C[2:3], S, Ck, sq_norms(np, Ck), beta[keep], spec)
    assert np.all(np.isfinite(G))
    np.testing.assert_allclose(G, G_minus, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------- agop_partial


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_agop_partial_sums(dtype):
    rng = np.random.default_rng(3)
    G = rng.standard_normal((17, N_OUT, DIM)).astype(dtype)
    G64 = G.astype(np.float64)
    expected_outer = sum(np.outer(G64[i, l], G64[i, l]) for i in range(17) for l in range(N_OUT))
    rtol = 1e-12 if dtype == np.float64 else 1e-5

    outer, gsum = agop_partial(np, G, diag=False)
    assert outer.shape == (DIM, DIM)
    assert_rel_close(outer, expected_outer, rtol)
    assert_rel_close(outer, outer.T, 1e-15)
    assert gsum.shape == (N_OUT, DIM)
    assert_rel_close(gsum, G64.sum(axis=0), rtol)

    outer_d, gsum_d = agop_partial(np, G, diag=True)
    assert outer_d.shape == (DIM,)
    assert_rel_close(outer_d, (G64**2).sum(axis=(0, 1)), rtol)
    assert_rel_close(outer_d, np.diag(expected_outer), rtol)
    assert_rel_close(gsum_d, G64.sum(axis=0), rtol)


@pytest.mark.parametrize("problem, kind, q", CASES, indirect=["problem"])
def test_agop_from_gradients_matches_reference_agop(problem, kind, q):
    """(1/n) agop_partial(predictor_gradients) == the reference AGOP from finite differences."""
    X, C, beta, M = problem
    spec = KernelSpec(kind, BANDWIDTH, q)
    S = ref.sqrtm_psd(M)
    Ct = transform(np, C, S)
    G = predictor_gradients(np, X, S, Ct, sq_norms(np, Ct), beta, spec, tile=7)
    expected = ref.agop(X, C, beta, M, kind, BANDWIDTH, q)
    outer, gsum = agop_partial(np, G, diag=False)
    assert_rel_close(outer / N_EVAL, expected, FD_RTOL64)
    outer_d, _ = agop_partial(np, G, diag=True)
    assert_rel_close(outer_d / N_EVAL, np.diag(expected), FD_RTOL64)
    # centred AGOP from the partial sums
    mean = gsum / N_EVAL
    expected_c = ref.agop(X, C, beta, M, kind, BANDWIDTH, q, centre=True)
    assert_rel_close(outer / N_EVAL - mean.T @ mean, expected_c, FD_RTOL64)


# --------------------------------------------------------------------------------------------- sq_distances


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sq_distances_clamped_at_zero(dtype):
    """Identical rows far from the origin: ||x||^2 + ||c||^2 - 2 x.c cancels catastrophically; the result must be
    clamped to >= 0 so sqrt never yields NaN."""
    rng = np.random.default_rng(11)
    X = (1000.0 + rng.standard_normal((25, DIM))).astype(dtype)
    C = np.concatenate([X, X[::-1], (1000.0 + rng.standard_normal((5, DIM))).astype(dtype)])
    x_sq, c_sq = sq_norms(np, X), sq_norms(np, C)
    raw = x_sq[:, None] + c_sq[None, :] - 2 * (X @ C.T)
    assert np.any(raw < 0), "test data must actually exercise the clamp"

    d2 = sq_distances(np, X, x_sq, C, c_sq)
    assert d2.shape == (25, 55)
    assert d2.dtype == dtype
    assert np.all(d2 >= 0)
    r = np.sqrt(d2)
    assert not np.any(np.isnan(r))
    # identical rows (self pairs, and the reversed copies) read as exactly 0, so their kernel value is exactly 1
    assert np.all(np.diag(d2[:, :25]) == 0)
    assert np.all(np.diag(d2[::-1, 25:50]) == 0)
    K = kernel_tile(np, X, x_sq, C, c_sq, KernelSpec("laplace", BANDWIDTH, 0.7))
    assert np.all(np.diag(K[:, :25]) == 1)
    scale = np.max(x_sq)
    # and the rest agree with direct differences (absolute error of the expansion ~ eps * ||x||^2)
    direct = ref.distances(X, C, np.ones(DIM)) ** 2
    np.testing.assert_allclose(d2, direct, rtol=0, atol=64 * np.finfo(dtype).eps * scale)


# --------------------------------------------------------------------------------------------- KernelSpec


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kind="cosine"),
        dict(kind="Laplace"),
        dict(kind="gaussian", bandwidth=0.0),
        dict(kind="laplace", bandwidth=-1.0),
        dict(kind="laplace", bandwidth=math.nan),
        dict(kind="laplace", exponent=0.0),
        dict(kind="laplace", exponent=-0.5),
        dict(kind="laplace", exponent=2.5),
        dict(kind="laplace", exponent=math.nan),
        dict(kind="l1_laplace", exponent=2.5),
        dict(kind="l1_laplace", bandwidth=0.0),
    ],
)
def test_kernel_spec_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        KernelSpec(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(kind="laplace", exponent=2.0),
        dict(kind="laplace", exponent=1e-3),
        dict(kind="gaussian", bandwidth=0.1),
        dict(kind="l1_laplace", exponent=0.5),
    ],
)
def test_kernel_spec_accepts_valid_arguments(kwargs):
    KernelSpec(**kwargs)


# --------------------------------------------------------------------------------------------- L1 kernel


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_l1_distances_are_exact_for_equal_rows_far_from_the_origin(dtype):
    """The difference form has no cancellation: equal rows give exactly 0, others their L1 distance to rounding."""
    rng = np.random.default_rng(12)
    X = (1000.0 + rng.standard_normal((25, DIM))).astype(dtype)
    C = np.concatenate([X, (1000.0 + rng.standard_normal((5, DIM))).astype(dtype)])
    r = l1_distances(np, X, C)
    assert r.dtype == dtype and r.shape == (25, 30)
    assert np.all(np.diag(r[:, :25]) == 0)
    expected = ref.l1_distances(X, C, np.ones(DIM))
    # each |x_i - c_i| is a correctly rounded difference; DIM of them summed in the data's dtype
    np.testing.assert_allclose(r, expected, rtol=2 * DIM * np.finfo(dtype).eps, atol=0)
    K = kernel_tile(np, X, sq_norms(np, X), C, sq_norms(np, C), KernelSpec("l1_laplace", BANDWIDTH, 0.7))
    assert np.all(np.diag(K[:, :25]) == 1)


@pytest.mark.parametrize("q", [1.0, 0.7])
def test_l1_gradients_at_coordinate_ties_are_the_symmetric_subgradient(q):
    """On a grid (one-hot-like data) many coordinates of x equal a centre's: the gradient then takes sign(0) = 0 for
    that coordinate, which is what a central finite difference gives (|x_k - c_k| is even in the step)."""
    rng = np.random.default_rng(8)
    C = rng.integers(0, 3, (30, DIM)).astype(np.float64)
    X = rng.integers(0, 3, (40, DIM)).astype(np.float64) + np.where(rng.random((40, DIM)) < 0.5, 0.0, 0.37)
    X = X[np.all(np.abs(X[:, None, :] - C[None]).sum(axis=2) > 0, axis=1)]  # no row at a centre (self-terms)
    assert np.any(X[:, None, :] == C[None]), "test data must have coordinate ties"
    M = rng.uniform(0.2, 1.0, DIM)
    beta = rng.standard_normal((30, 2))
    spec = KernelSpec("l1_laplace", BANDWIDTH, q)
    S = np.sqrt(M)
    Ct = transform(np, C, S)
    G = predictor_gradients(np, X, S, Ct, sq_norms(np, Ct), beta, spec, tile=7)
    # first order in the step where r^q is not linear (q != 1): rtol at the step's order
    assert_rel_close(G, ref.fd_gradients(X, C, beta, M, "l1_laplace", BANDWIDTH, q), 1e-4)


def test_l1_gradients_need_a_diagonal_feature_matrix():
    rng = np.random.default_rng(9)
    X, C = rng.standard_normal((4, DIM)), rng.standard_normal((6, DIM))
    S = ref.sqrtm_psd(random_m("full", rng))
    Ct = transform(np, C, S)
    with pytest.raises(ValueError, match="diagonal"):
        predictor_gradients(np, X, S, Ct, sq_norms(np, Ct), np.ones((6, 1)), KernelSpec("l1_laplace", BANDWIDTH))
