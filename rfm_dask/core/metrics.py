"""Model outputs to labels, probabilities and metrics, written once for the estimators, the RFM loop and the
reports (``rfm_dask.app.workflows``, the pipelines). Pure NumPy (with scikit-learn's metrics): no Dask, no config."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


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


def regression_metrics(pred: np.ndarray, Y: np.ndarray) -> dict:
    """Validation MSE (mean over outputs) of predictions (n, c) against targets (n, c)."""
    return {"val_mse": float(np.mean((pred - Y) ** 2))}


def classification_metrics(pred: np.ndarray, Y: np.ndarray) -> dict:
    """Accuracy and MSE of scores (n, c) against 0/1 targets (n, c); c = 1 means a binary problem."""
    correct = scores_to_index(pred) == scores_to_index(Y)
    return {"val_accuracy": float(np.mean(correct)), "val_mse": float(np.mean((pred - Y) ** 2))}


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
