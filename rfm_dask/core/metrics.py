"""Model outputs to labels, probabilities and metrics, written once for the estimators, the RFM loop and the
reports (``rfm_dask.app.workflows``, the pipelines). Pure NumPy (with scikit-learn's metrics): no Dask, no config."""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn import metrics as skm

#: ``scoring`` of a classifier: the validation metric that picks the best iteration, bandwidth/reg="auto" and each
#: tree leaf's iteration (ties broken by the lower MSE).
CLASSIFICATION_SCORINGS = ("accuracy", "balanced_accuracy", "roc_auc", "log_loss", "mse")
#: ``scoring`` of a regressor.
REGRESSION_SCORINGS = ("mse", "r2", "mae")
#: Scorings whose smaller values are better.
LOWER_IS_BETTER = frozenset({"log_loss", "mse", "mae"})
#: The inverse temperature 1/T of ``fit_temperature`` is searched in this interval (log scale).
INVERSE_TEMPERATURE_BOUNDS = (1e-3, 1e3)


def scores_to_index(F: np.ndarray) -> np.ndarray:
    """Class index per row (n,) from scores or probabilities (n, c): one column (a binary problem's score of the
    second class) is thresholded at 0.5, several columns give their argmax.

    On probabilities from ``scores_to_proba`` it gives the same index as on the scores they came from.
    """
    return (F[:, 0] > 0.5).astype(np.intp) if F.shape[1] == 1 else np.argmax(F, axis=1)


def scores_to_proba(F: np.ndarray) -> np.ndarray:
    """Probabilities (n, k) from scores (n, c): clipped to [0, 1] for binary (c = 1, k = 2), clipped at 0 and
    normalised otherwise (k = c).

    Rows with no positive score put all mass on their largest score, so ``scores_to_index`` of the probabilities
    always matches that of the scores.
    """
    if F.shape[1] == 1:
        p = np.clip(F[:, 0], 0.0, 1.0)
        return np.column_stack([1.0 - p, p])
    P = np.maximum(F, 0.0)
    total = P.sum(axis=1, keepdims=True)
    empty = total[:, 0] == 0
    P[empty, np.argmax(F[empty], axis=1)] = 1.0
    total[empty] = 1.0
    return P / total


def class_scores(F: np.ndarray) -> np.ndarray:
    """One score per class (n, k) from scores (n, c): a binary problem's score s of the second class (c = 1) gives
    the two columns (1 - s, s), several columns are returned as they are."""
    return np.column_stack([1.0 - F[:, 0], F[:, 0]]) if F.shape[1] == 1 else F


def calibrated_proba(F: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities softmax(S / T) (n, k) of the class scores S = ``class_scores(F)`` (n, k).

    For two classes this is Platt's sigmoid p = sigmoid((2 s - 1) / T) with its threshold fixed at s = 1/2, so
    ``scores_to_index`` of the probabilities is that of the scores (T > 0 keeps the order of each row's scores).
    """
    return softmax(class_scores(F) / temperature, axis=1)


def _mean_log_loss(S: np.ndarray, index: np.ndarray, inverse_temperature: float) -> float:
    """Mean negative log-likelihood of the classes ``index`` (n,) under softmax(beta S) of class scores S (n, k)."""
    log_p = log_softmax(inverse_temperature * S, axis=1)
    return float(-np.mean(log_p[np.arange(S.shape[0]), index]))


def fit_temperature(F: np.ndarray, Y: np.ndarray) -> float:
    """The temperature T > 0 that minimises the mean log-loss of ``calibrated_proba(F, T)`` against 0/1 targets
    Y (n, c) (scores F (n, c), c = 1 for a binary problem, n >= 1).

    The log-loss is convex in beta = 1/T; it is minimised over log(beta) in ``INVERSE_TEMPERATURE_BOUNDS`` by
    scipy's bounded Brent search (deterministic). Scores that separate the rows perfectly drive beta to the upper
    bound.
    """
    S, index = class_scores(F), scores_to_index(Y)
    lo, hi = np.log(INVERSE_TEMPERATURE_BOUNDS)
    result = minimize_scalar(lambda t: _mean_log_loss(S, index, float(np.exp(t))), bounds=(lo, hi),
                             method="bounded", options={"xatol": 1e-9})
    return float(np.exp(-result.x))


def _balanced_accuracy(pred: np.ndarray, Y: np.ndarray) -> float:
    """Mean recall over the classes present in the targets."""
    index, truth = scores_to_index(pred), scores_to_index(Y)
    return float(np.mean([np.mean(index[truth == k] == k) for k in np.unique(truth)]))


def _roc_auc(pred: np.ndarray, Y: np.ndarray) -> float:
    """ROC AUC of the scores: binary, or one-vs-rest macro-averaged over the classes that are present in the targets
    and not all of them (a class's AUC needs both); 1/2, no information, when there is no such class."""
    truth = scores_to_index(Y)
    columns = [(truth == 1, pred[:, 0])] if pred.shape[1] == 1 else [(truth == k, pred[:, k])
                                                                      for k in range(pred.shape[1])]
    aucs = [skm.roc_auc_score(positive, score) for positive, score in columns if 0 < positive.sum() < truth.size]
    return float(np.mean(aucs)) if aucs else 0.5


def _calibrated_log_loss(pred: np.ndarray, Y: np.ndarray) -> float:
    """Mean log-loss of the scores after temperature scaling fitted on these same rows (``fit_temperature``): the
    log-loss the classifier's calibrated ``predict_proba`` has on its validation rows."""
    return _mean_log_loss(class_scores(pred), scores_to_index(Y), 1.0 / fit_temperature(pred, Y))


_CLASSIFICATION_SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "balanced_accuracy": _balanced_accuracy, "roc_auc": _roc_auc, "log_loss": _calibrated_log_loss}


def _r2(pred: np.ndarray, Y: np.ndarray) -> float:
    """R^2 averaged over outputs; an output whose targets are constant (or a single row) scores 1 when predicted
    exactly, else 0 (scikit-learn's ``force_finite``), so the value is always finite."""
    sse, sst = np.sum((Y - pred) ** 2, axis=0), np.sum((Y - Y.mean(axis=0)) ** 2, axis=0)
    constant = sst == 0
    r2 = np.where(constant, (sse == 0).astype(np.float64), 1.0 - sse / np.where(constant, 1.0, sst))
    return float(np.mean(r2))


def _mae(pred: np.ndarray, Y: np.ndarray) -> float:
    """Mean absolute error over rows and outputs."""
    return float(np.mean(np.abs(pred - Y)))


_REGRESSION_SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"r2": _r2, "mae": _mae}


def regression_metrics(pred: np.ndarray, Y: np.ndarray, scoring: str | None = None) -> dict:
    """Validation MSE (mean over outputs) of predictions (n, c) against targets (n, c), and ``val_<scoring>`` for a
    ``scoring`` of ``REGRESSION_SCORINGS`` other than "mse" (r2: averaged over outputs; mae: mean over outputs)."""
    out = {"val_mse": float(np.mean((pred - Y) ** 2))}
    if scoring in _REGRESSION_SCORES:
        out[f"val_{scoring}"] = _REGRESSION_SCORES[scoring](pred, Y)
    return out


def classification_metrics(pred: np.ndarray, Y: np.ndarray, scoring: str | None = None) -> dict:
    """Accuracy and MSE of scores (n, c) against 0/1 targets (n, c); c = 1 means a binary problem. With a
    ``scoring`` of ``CLASSIFICATION_SCORINGS`` other than accuracy and mse, also ``val_<scoring>``: balanced
    accuracy (over the classes present), ROC AUC (see ``_roc_auc``) or the calibrated log-loss."""
    correct = scores_to_index(pred) == scores_to_index(Y)
    out = {"val_accuracy": float(np.mean(correct)), "val_mse": float(np.mean((pred - Y) ** 2))}
    if scoring in _CLASSIFICATION_SCORES:
        out[f"val_{scoring}"] = _CLASSIFICATION_SCORES[scoring](pred, Y)
    return out


def validation_quality(record: dict, scoring: str | None = None) -> tuple:
    """Sort key of validation metrics (from ``classification_metrics`` or ``regression_metrics`` with the same
    ``scoring``), larger is better: the scoring's value (negated where lower is better), then the lower MSE.

    ``scoring`` None: accuracy where the record has one (a classifier), else MSE.
    """
    if scoring is None:
        scoring = "accuracy" if "val_accuracy" in record else "mse"
    value = record[f"val_{scoring}"]
    return (-value if scoring in LOWER_IS_BETTER else value, -record["val_mse"])


def regression_report(y: np.ndarray, pred: np.ndarray) -> dict:
    """Test-set r2, mse, rmse and mae of predictions (n,) or (n, k) against targets of the same shape (r2 averaged
    over outputs)."""
    mse = float(skm.mean_squared_error(y, pred))
    return {"r2": float(skm.r2_score(y, pred)), "mse": mse, "rmse": mse**0.5,
            "mae": float(skm.mean_absolute_error(y, pred))}


def classification_report(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> dict:
    """Test-set accuracy, balanced accuracy and (two classes) ROC AUC of class probabilities (n, k) against labels
    (n,); ``classes`` (k,) are the labels of the probability columns."""
    pred = classes[scores_to_index(proba)]
    out = {"accuracy": float(skm.accuracy_score(y, pred)),
           "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred))}
    if len(classes) == 2 and len(np.unique(y)) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y == classes[1], proba[:, 1]))
    return out
