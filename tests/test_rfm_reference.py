"""The RFM loop and the estimators against the dense float64 reference of ``reference.rfm_iterations``.

Each option that changes the model (kernel, exponent, diag, agop_power, centre_agop, feature_update, solver) is
checked on a two-iteration fit: the feature matrix M_2, the coefficients and predictions, first at the level of
``run_rfm`` (targets as given), then through the estimators (targets centred as ``reference.encode_targets`` does).

Tolerances follow the conditioning: the kernel entries are float32, each off by at most ``float32_kernel_error``
(E); the coefficients solve A coef = B with A = K + reg I (or the Nystrom matrix), so their error is at most
|A^-1| (|dB| + |dA| |coef|) to first order (``reference.solve_rounding_bound``); each iteration's rounding reaches
the next M. The ridge is large enough (0.1) that cond(A) is a few hundred, which keeps these bounds near 1e-4
(observed errors: about 1e-7; Nystrom, whose matrix is K's square, about 3e-2). One seed by default; RFM_TEST_SEEDS=n runs n.
"""

from __future__ import annotations

import numpy as np
import pytest

from rfm_dask import RFMClassifier, RFMRegressor
from rfm_dask.kernels import KernelSpec
from rfm_dask.model import KernelModel
from rfm_dask.row_blocks import put_rows
from rfm_dask.training import RFMSettings, run_rfm
from rfm_dask.cluster_engine import ClusterEngine
from rfm_dask.local import fit_local

import reference as ref
from seeds import seeds

REG, ITERS, N, D, N_CENTRES = 0.1, 2, 40, 4, 25

#: Estimator parameters of each case; everything else as in ``_params``.
CASES = {
    "laplace": {},
    "gaussian": {"kernel": "gaussian", "bandwidth": 2.0},
    "exponent": {"exponent": 1.5},
    "diag": {"diag": True},
    "agop_power": {"agop_power": 0.5},
    "centre_agop": {"centre_agop": True},
    "centre_agop_diag_sqrt": {"centre_agop": True, "agop_power": 0.5, "diag": True},
    "fact": {"feature_update": "fact"},
    "fact_diag": {"feature_update": "fact", "diag": True},
    "cg": {"solver": "cg"},
    "nystrom": {"solver": "nystrom"},
    "nystrom_fact": {"solver": "nystrom", "feature_update": "fact"},
}


def _params(case: str) -> dict:
    return {"kernel": "laplace", "bandwidth": 3.0, "exponent": 1.0, "reg": REG, "iters": ITERS, "diag": False,
            "agop_power": 1.0, "centre_agop": False, "feature_update": "agop", "solver": "direct", "tol": 1e-10,
            "patience": None, "n_centers": N_CENTRES, **CASES[case]}


def _settings(p: dict) -> RFMSettings:
    return RFMSettings(
        spec=KernelSpec(p["kernel"], p["bandwidth"], p["exponent"]), reg=p["reg"], iters=p["iters"], diag=p["diag"],
        agop_power=p["agop_power"], centre_agop=p["centre_agop"], solver=p["solver"], tol=p["tol"],
        patience=p["patience"], n_centers=p["n_centers"], feature_update=p["feature_update"],
    )


def _data(seed: int, n: int = N, d: int = D) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows X (n, d) float32, two smooth targets Y (n, 2), and test rows (n // 2, d)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    Y = np.column_stack([X[:, 0] * X[:, 1] + np.sin(2 * X[:, 2]), X[:, 3] ** 2 - X[:, 0]])
    return X, Y, rng.normal(size=(n // 2, d)).astype(np.float32)


def _centre_rows(p: dict, seed: int, n: int) -> np.ndarray | None:
    """The Nystrom centres run_rfm draws first from its generator (seeded by ``seed``); None for exact solvers."""
    if p["solver"] != "nystrom":
        return None
    return np.sort(np.random.default_rng(seed).choice(n, min(n, p["n_centers"]), replace=False))


def _reference(p: dict, X: np.ndarray, Y: np.ndarray, centre_rows: np.ndarray | None):
    """(M, coef, centres, relative tolerance of coef and M) of the reference's last iteration: four times the sum of
    every iteration's solve rounding bound, since each solve's rounding reaches the last M and coefficients."""
    args = (p["kernel"], p["bandwidth"], p["exponent"])
    iterations = ref.rfm_iterations(X, Y, *args, p["reg"], p["iters"], p["diag"], p["agop_power"],
                                    p["centre_agop"], p["feature_update"], centre_rows)
    C = X if centre_rows is None else X[centre_rows]
    bound = sum(ref.solve_rounding_bound(X, Y, M, coef, *args, p["reg"], centre_rows) for M, coef in iterations)
    M, coef = iterations[-1]
    return M, coef, C, 4 * bound


def _check_model(p, M_got, coef_got, predict, X_test, M, coef, C, tol) -> None:
    """M, coefficients and predictions f(X_test) = K_M(X_test, C) coef against the reference within ``tol``."""
    np.testing.assert_allclose(M_got, M, rtol=0, atol=tol * np.abs(M).max())
    np.testing.assert_allclose(coef_got, coef, rtol=0, atol=tol * np.abs(coef).max())
    args = (p["kernel"], p["bandwidth"], p["exponent"])
    K, E = ref.kernel(X_test, C, M, *args), ref.float32_kernel_error(X_test, C, M, *args)
    expected = K @ coef
    # rounding of K(X_test, C) itself, then the coefficients' and M's error carried through |K| |coef|
    bound = 4 * E @ np.abs(coef) + 2 * tol * np.abs(K) @ np.abs(coef)
    got = predict(X_test).reshape(expected.shape)
    assert np.all(np.abs(got - expected) <= bound), np.max(np.abs(got - expected) / bound)


def _run(engine: str, client, X: np.ndarray, Y: np.ndarray, p: dict, seed: int, **kwargs):
    """run_rfm on the cluster (row blocks of 16 rows) or locally (one array in this process)."""
    settings, rng = _settings(p), np.random.default_rng(seed)
    if engine == "local":
        return fit_local(X, Y, settings, rng, **kwargs)
    return run_rfm(ClusterEngine(client, settings.options), put_rows(client, X, 16), Y, settings, rng, **kwargs)


@pytest.mark.parametrize("seed", seeds(1))
@pytest.mark.parametrize("engine", ["cluster", "local"])
@pytest.mark.parametrize("case", list(CASES))
def test_run_rfm_matches_reference(client, case, engine, seed):
    """run_rfm without validation rows, over the distributed and the local operator: the kept model is iteration
    2's (M_2, coef_2)."""
    p = _params(case)
    X, Y, X_test = _data(seed)
    result = _run(engine, client, X, Y, p, seed)
    assert result.best_iter == ITERS and len(result.history) == ITERS + 1
    assert {h["solver"] for h in result.history} == {p["solver"]}
    M, coef, C, tol = _reference(p, X, Y, _centre_rows(p, seed, N))
    np.testing.assert_array_equal(result.centres, C)
    model = KernelModel(result.centres, result.coef, result.feature_matrix, _settings(p).spec, result.shift)
    _check_model(p, result.feature_matrix, result.coef, model.decision, X_test, M, coef, C, tol)


@pytest.mark.parametrize("case", ["laplace", "cg", "nystrom_fact"])
def test_one_loop_on_both_operators(client, case):
    """The same fit, with validation rows and early stopping, on the distributed and on the local operator: the same
    iterations and the same model within the float32 rounding that the reference bound allows (the two only add the
    blocks' partial sums in another order)."""
    p = {**_params(case), "iters": 3, "patience": 1}
    X, Y, X_test = _data(5, n=60)
    X_val, Y_val = X_test, np.column_stack([X_test[:, 0] * X_test[:, 1] + np.sin(2 * X_test[:, 2]),
                                            X_test[:, 3] ** 2 - X_test[:, 0]])
    fits = {}
    for engine in ("cluster", "local"):
        val = put_rows(client, X_val, 16) if engine == "cluster" else X_val
        key = "val" if engine == "cluster" else "X_val"
        fits[engine] = _run(engine, client, X, Y, p, 5, **{key: val, "Y_val": Y_val})
    cluster, local = fits["cluster"], fits["local"]
    assert [h["solver"] for h in cluster.history] == [h["solver"] for h in local.history]
    assert cluster.best_iter == local.best_iter and len(cluster.history) == len(local.history)
    np.testing.assert_array_equal(cluster.centres, local.centres)
    M, coef, C, tol = _reference({**p, "iters": cluster.best_iter}, X, Y, _centre_rows(p, 5, 60))
    for result in (cluster, local):
        model = KernelModel(result.centres, result.coef, result.feature_matrix, _settings(p).spec, result.shift)
        _check_model(p, result.feature_matrix, result.coef, model.decision, X_test, M, coef, C, tol)


@pytest.mark.parametrize("case", ["laplace", "gaussian", "centre_agop_diag_sqrt", "fact", "nystrom"])
def test_regressor_matches_reference(client, case):
    """RFMRegressor on two outputs, no validation split (the seed draws the Nystrom centres first)."""
    p = _params(case)
    X, Y, X_test = _data(3)
    model = RFMRegressor(**p, validation_fraction=0.0, random_state=3, client=client).fit(X, Y)
    Y_fit, offset = ref.encode_targets(Y)
    M, coef, C, tol = _reference(p, X, Y_fit, _centre_rows(p, 3, N))
    assert model.best_iter_ == ITERS
    _check_model(p, model.feature_matrix_, model.model_.coef * model.model_.target.scale,
                 lambda Z: model.predict(Z) - offset, X_test, M, coef, C, tol)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("case", ["laplace", "gaussian", "agop_power"])
def test_classifier_matches_reference(client, case, n_classes):
    """RFMClassifier: M and coefficients of the encoded labels, and labels wherever the reference's class scores
    decide them by more than the rounding bound."""
    p = _params(case)
    X, Y, X_test = _data(4)
    classes = np.array(["a", "b", "c"][:n_classes])
    y = classes[np.digitize(Y[:, 0], np.quantile(Y[:, 0], np.linspace(0, 1, n_classes + 1)[1:-1]))]
    model = RFMClassifier(**p, validation_fraction=0.0, random_state=4, client=client).fit(X, y)
    Y_fit, offset = ref.encode_targets(y, classes)
    M, coef, C, tol = _reference(p, X, Y_fit, None)
    np.testing.assert_allclose(model.feature_matrix_, M, rtol=0, atol=tol)
    np.testing.assert_allclose(model.model_.coef, coef, rtol=0, atol=tol * np.abs(coef).max())
    args = (p["kernel"], p["bandwidth"], p["exponent"])
    K = ref.kernel(X_test, C, M, *args)
    scores = K @ coef + offset
    bound = 4 * ref.float32_kernel_error(X_test, C, M, *args) @ np.abs(coef) + 2 * tol * np.abs(K) @ np.abs(coef)
    if n_classes == 2:
        expected, clear = (scores[:, 0] > 0.5).astype(int), np.abs(scores[:, 0] - 0.5) > bound[:, 0]
    else:
        top2 = np.sort(scores, axis=1)[:, -2:]
        expected, clear = np.argmax(scores, axis=1), top2[:, 1] - top2[:, 0] > 2 * bound.max(axis=1)
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(model.predict(X_test)[clear], classes[expected][clear])
