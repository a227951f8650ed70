"""``scoring`` and the calibrated ``predict_proba``: the temperature map on hand-made scores against direct references
(the log-loss optimum by its gradient, scikit-learn's unpenalised logistic regression, a root of the gradient found
by scipy), each scoring's ranking on hand-made iterations where it disagrees with accuracy, the estimators' selection
following the chosen metric, refusals, the model file and the tree."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from sklearn.linear_model import LogisticRegression
from sklearn.utils._param_validation import InvalidParameterError
from test_model_file import _rewrite, _set
from test_probabilities import ordered_classes

import rfm_dask
from rfm_dask import RFMClassifier, RFMRegressor
from rfm_dask.core.metrics import (
    INVERSE_TEMPERATURE_BOUNDS,
    calibrated_proba,
    classification_metrics,
    fit_temperature,
    regression_metrics,
    scores_to_proba,
    validation_quality,
)
from rfm_dask.files.model_file import ModelFileError

FAST = {"iters": 3, "patience": None, "solver": "direct", "random_state": 0}


def _noisy_scores(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Regression-like scores (n, c) of k classes (c = 1 for two) and their 0/1 targets (n, c): the one-hot labels
    plus noise, so that neither a tiny nor a huge temperature is optimal."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n)
    Y = np.eye(k)[labels]
    F = Y + 0.45 * rng.normal(size=Y.shape)
    return (F[:, 1:], Y[:, 1:]) if k == 2 else (F, Y)


def _class_scores(F: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - F[:, 0], F[:, 0]]) if F.shape[1] == 1 else F


def _log_loss_gradient(beta: float, F: np.ndarray, Y: np.ndarray) -> float:
    """d/d(beta) of the mean log-loss of softmax(beta S), written out: mean over rows of E_p[S] - S_label."""
    S = _class_scores(F)
    labels = np.argmax(_class_scores(Y), axis=1)
    Z = beta * S
    P = np.exp(Z - Z.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    return float(np.mean(np.sum(P * S, axis=1) - S[np.arange(len(S)), labels]))


def _log_loss(P: np.ndarray, Y: np.ndarray) -> float:
    labels = np.argmax(_class_scores(Y), axis=1)
    return float(-np.mean(np.log(np.clip(P[np.arange(len(P)), labels], 1e-300, None))))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_temperature_is_the_log_loss_optimum(k):
    F, Y = _noisy_scores(400, k, seed=k)
    beta = 1.0 / fit_temperature(F, Y)
    lo, hi = INVERSE_TEMPERATURE_BOUNDS
    assert lo < beta < hi
    # the optimum of a smooth convex function: its gradient vanishes (relative to the gradient's scale at beta/2,
    # the search stops at |d log beta| <= 1e-9, far below this)
    assert abs(_log_loss_gradient(beta, F, Y)) <= 1e-6 * abs(_log_loss_gradient(beta / 2, F, Y))
    # the same root found directly by scipy on the written-out gradient
    reference = brentq(_log_loss_gradient, beta / 10, beta * 10, args=(F, Y), xtol=1e-14, rtol=1e-14)
    assert beta == pytest.approx(reference, rel=1e-7)
    P = calibrated_proba(F, 1.0 / beta)
    for other in (beta * 0.8, beta * 1.25, 1.0):
        assert _log_loss(P, Y) <= _log_loss(calibrated_proba(F, 1.0 / other), Y)


def test_binary_temperature_is_an_unpenalised_logistic_regression_without_intercept():
    """Binary: p = sigmoid(beta (2 s - 1)), i.e. a logistic regression on the one feature 2 s - 1, no intercept."""
    F, Y = _noisy_scores(500, 2, seed=7)
    beta = 1.0 / fit_temperature(F, Y)
    lr = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-12, max_iter=10_000)
    lr.fit(2 * F - 1, Y[:, 0])
    assert beta == pytest.approx(lr.coef_[0, 0], rel=1e-5)
    np.testing.assert_allclose(calibrated_proba(F, 1 / beta), lr.predict_proba(2 * F - 1), rtol=0, atol=1e-5)


def test_temperature_keeps_the_predicted_class_and_separable_scores_reach_the_bound():
    F, Y = _noisy_scores(300, 4, seed=1)
    np.testing.assert_array_equal(np.argmax(calibrated_proba(F, 0.3), axis=1), np.argmax(F, axis=1))
    # perfectly separated rows: the log-loss falls towards 0 as beta grows, and the search stops where it is 0
    # to rounding (each row's class at probability 1 - 1e-15 or more), or at the upper bound
    binary = np.array([[0.9], [0.8], [0.2], [0.1]])
    P = calibrated_proba(binary, fit_temperature(binary, (binary > 0.5).astype(float)))
    assert np.all(P[np.arange(4), (binary[:, 0] > 0.5).astype(int)] >= 1 - 1e-15)


# iterations A and B on six validation rows where accuracy prefers A and the other metric prefers B
_Y = np.array([[1.0], [1.0], [1.0], [0.0], [0.0], [0.0]])
_A = np.array([[1.0], [1.0], [1.0], [0.0], [0.0], [1.0]])  # 5/6 right, one confident mistake
_B = np.array([[0.9], [0.9], [0.49], [0.1], [0.1], [0.51]])  # 4/6 right, two narrow mistakes, ranked perfectly
_Y_RARE = np.array([[1.0], [0.0], [0.0], [0.0], [0.0], [0.0]])
_A_RARE = np.zeros((6, 1))  # always the majority: accuracy 5/6, balanced accuracy 1/2
_B_RARE = np.array([[0.6], [0.6], [0.6], [0.0], [0.0], [0.0]])  # accuracy 4/6, balanced accuracy 0.8


@pytest.mark.parametrize("scoring, A, B, Y", [
    ("roc_auc", _A, _B, _Y),
    ("log_loss", _A, _B, _Y),
    ("mse", _A, _B, _Y),
    ("balanced_accuracy", _A_RARE, _B_RARE, _Y_RARE),
])
def test_each_scoring_prefers_another_iteration_than_accuracy(scoring, A, B, Y):
    accuracy = [validation_quality(classification_metrics(F, Y), None) for F in (A, B)]
    assert accuracy[0] > accuracy[1]
    other = [validation_quality(classification_metrics(F, Y, scoring), scoring) for F in (A, B)]
    assert other[1] > other[0]


def test_scoring_values_against_direct_references():
    from sklearn import metrics as skm

    F, Y = _noisy_scores(200, 3, seed=3)
    labels = np.argmax(Y, axis=1)
    out = classification_metrics(F, Y, "roc_auc")
    auc = np.mean([skm.roc_auc_score(labels == k, F[:, k]) for k in range(3)])
    assert out["val_roc_auc"] == pytest.approx(auc, rel=1e-12)
    out = classification_metrics(F, Y, "balanced_accuracy")
    assert out["val_balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, np.argmax(F, 1)))
    out = classification_metrics(F, Y, "log_loss")
    assert out["val_log_loss"] == pytest.approx(skm.log_loss(labels, calibrated_proba(F, fit_temperature(F, Y))),
                                                rel=1e-10)
    Yr = np.random.default_rng(0).normal(size=(50, 2))
    pred = Yr + 0.3
    assert regression_metrics(pred, Yr, "r2")["val_r2"] == pytest.approx(skm.r2_score(Yr, pred), rel=1e-12)
    assert regression_metrics(pred, Yr, "mae")["val_mae"] == pytest.approx(0.3, rel=1e-12)
    # a class missing from the validation rows: AUC and balanced accuracy over the classes present
    one_class = np.zeros((4, 1))
    assert classification_metrics(np.full((4, 1), 0.2), one_class, "roc_auc")["val_roc_auc"] == 0.5


def _best(history: list[dict], scoring: str) -> int:
    """The first iteration of ``history`` with the largest ``validation_quality`` (a try that centre_agop="auto"
    replaced scored below iteration 0, so it is never the first largest)."""
    qualities = [validation_quality(record, scoring) for record in history]
    return history[max(range(len(qualities)), key=qualities.__getitem__)]["iteration"]


def _data(n: int = 360, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] + 0.6 * rng.normal(size=n) > 0.2).astype(int)
    return X, y


@pytest.mark.parametrize("scoring", ["accuracy", "balanced_accuracy", "roc_auc", "log_loss", "mse"])
def test_the_classifier_selects_the_best_iteration_by_its_scoring(client, scoring):
    X, y = _data()
    model = RFMClassifier(scoring=scoring, client=client, **FAST).fit(X, y)
    key = f"val_{scoring}"
    assert all(key in record for record in model.history_)
    assert model.best_iter_ == _best(model.history_, scoring)
    if scoring == "accuracy":  # the default is today's behaviour: accuracy, ties by the lower MSE
        default = RFMClassifier(client=client, **FAST).fit(X, y)
        assert default.best_iter_ == model.best_iter_ and default.history_[-1].keys() == model.history_[-1].keys()
        np.testing.assert_array_equal(default.model_.coef, model.model_.coef)


@pytest.mark.parametrize("scoring", ["roc_auc", "log_loss"])
def test_tuning_and_leaves_use_the_scoring(client, scoring):
    X, y = _data(480, seed=1)
    model = RFMClassifier(scoring=scoring, bandwidth="auto", leaf_size=200, client=client, **FAST).fit(X, y)
    assert model.n_leaves_ > 1
    validated = [(h, b) for h, b in zip(model.leaf_histories_, model.leaf_best_iters_) if f"val_{scoring}" in h[0]]
    assert len(validated) == model.n_leaves_  # every leaf has validation rows here
    for history, best in validated:
        assert best == _best(history, scoring)


def test_regressor_scoring_default_is_mse_and_r2_mae_select_by_their_values(client):
    X, _ = _data()
    y = np.column_stack([X[:, 0] * X[:, 1], 10 * np.sin(X[:, 2])])
    base = RFMRegressor(client=client, **FAST).fit(X, y)
    mse = RFMRegressor(scoring="mse", client=client, **FAST).fit(X, y)
    np.testing.assert_array_equal(base.model_.coef, mse.model_.coef)
    assert base.history_ == [{**r, "seconds": b["seconds"]} for r, b in zip(mse.history_, base.history_)]
    for scoring in ("r2", "mae"):
        model = RFMRegressor(scoring=scoring, client=client, **FAST).fit(X, y)
        assert model.best_iter_ == _best(model.history_, scoring)


def test_bad_scorings_are_refused(client):
    X, y = _data(60)
    with pytest.raises(ValueError, match="'scoring' parameter of RFMRegressor must be one of .*'r2'.*got 'accuracy'"):
        RFMRegressor(scoring="accuracy", client=client).fit(X, y.astype(float))
    with pytest.raises(ValueError, match="'scoring' parameter of RFMClassifier must be one of .*got 'r2'"):
        RFMClassifier(scoring="r2", client=client).fit(X, y)
    with pytest.raises(InvalidParameterError, match="scoring"):
        RFMClassifier(scoring="f1", client=client).fit(X, y)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_calibration_lowers_the_validation_log_loss_and_round_trips(client, tmp_path, n_classes):
    X, y = ordered_classes(np.random.default_rng(n_classes), 500, 5, n_classes, weight=0.7, noise=0.8)
    X_val, y_val, X, y = X[:120], y[:120], X[120:], y[120:]
    # the untuned model (L = 10, reg 1e-3) is overconfident, which the clip-and-normalise map punishes; a model whose
    # scores the clip map already serves well need not gain from the temperature over it
    # (and the uncentred AGOP: with centre_agop="auto" the 2-class model is solved again centred, less overconfident)
    model = RFMClassifier(bandwidth=10.0, reg=1e-3, centre_agop=False, client=client, **FAST).fit(
        X, y, X_val=X_val, y_val=y_val)
    F = model.model_.decision(X_val)
    Y_val = np.eye(n_classes)[y_val][:, 1:] if n_classes == 2 else np.eye(n_classes)[y_val]
    # the temperature is fitted on the chosen model's scores of the validation rows (computed on the cluster)
    assert model.calibration_ == pytest.approx(fit_temperature(F, Y_val), rel=1e-6)
    calibrated = _log_loss(model.predict_proba(X_val), Y_val)
    assert calibrated <= _log_loss(scores_to_proba(F), Y_val)
    assert calibrated <= _log_loss(calibrated_proba(F, 1.0), Y_val)
    np.testing.assert_array_equal(np.argmax(model.predict_proba(X_val), axis=1), model.predict(X_val))
    loaded = rfm_dask.load(model.save(tmp_path / "m.rfm"))
    assert loaded.calibration_ == model.calibration_
    np.testing.assert_array_equal(loaded.predict_proba(X_val), model.predict_proba(X_val))
    for bad in (-1.0, 0.0, "1", True, float("inf")):
        _rewrite(tmp_path / "m.rfm", tmp_path / "bad.rfm", _set(["state", "calibration"], bad))
        with pytest.raises(ModelFileError, match="calibration must be null or a finite temperature"):
            rfm_dask.load(tmp_path / "bad.rfm")
    # a file without the entry (written before calibration existed) gives the uncalibrated probabilities
    _rewrite(tmp_path / "m.rfm", tmp_path / "old.rfm", lambda meta: meta["state"].pop("calibration"))
    old = rfm_dask.load(tmp_path / "old.rfm")
    assert old.calibration_ is None
    np.testing.assert_allclose(old.predict_proba(X_val), scores_to_proba(F), rtol=0, atol=1e-12)


def test_without_validation_rows_probabilities_are_not_calibrated(client):
    X, y = _data(120)
    model = RFMClassifier(validation_fraction=0.0, client=client, **FAST).fit(X, y)
    assert model.calibration_ is None
    np.testing.assert_array_equal(model.predict_proba(X), scores_to_proba(model.model_.decision(X)))


def test_a_tree_is_calibrated_once_on_its_validation_scores(client):
    X, y = _data(600, seed=2)
    X_val, y_val = _data(150, seed=3)
    model = RFMClassifier(leaf_size=150, split_temperature=0.5, client=client, **FAST).fit(X, y, X_val=X_val,
                                                                                           y_val=y_val)
    assert model.n_leaves_ > 1
    F = model.model_.decision(X_val)
    assert model.calibration_ == pytest.approx(fit_temperature(F, y_val[:, None].astype(float)), rel=1e-6)
    np.testing.assert_allclose(model.predict_proba(X_val), calibrated_proba(F, model.calibration_), rtol=0,
                               atol=1e-12)
