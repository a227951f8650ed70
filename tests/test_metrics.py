"""Scores to labels and probabilities, and the validation and test-set metrics (``rfm_dask.core.metrics``), against
the formulas written out in float64."""

from __future__ import annotations

import numpy as np
import pytest

from rfm_dask.core.metrics import (
    classification_metrics,
    classification_report,
    regression_metrics,
    regression_report,
    scores_to_index,
    scores_to_proba,
)


@pytest.mark.parametrize("columns", [1, 2, 4])
def test_index_of_probabilities_is_index_of_scores(columns):
    rng = np.random.default_rng(columns)
    F = rng.normal(0.4, 0.6, size=(500, columns))
    F[:5] = -1.0  # rows with no positive score
    F[5:10] = 0.5  # ties at the binary threshold and between classes
    index = scores_to_index(F)
    assert index.dtype == np.intp and index.shape == (500,)
    expected = (F[:, 0] > 0.5).astype(int) if columns == 1 else np.argmax(F, axis=1)
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(scores_to_index(scores_to_proba(F)), index)


def test_validation_metrics():
    pred = np.array([[0.2, 0.7], [0.9, 0.1], [0.4, 0.3], [0.0, 1.0]])
    Y = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mse = np.mean((pred - Y) ** 2)
    assert regression_metrics(pred, Y) == {"val_mse": pytest.approx(mse, rel=1e-15)}
    out = classification_metrics(pred, Y)
    assert out["val_accuracy"] == 0.75 and out["val_mse"] == pytest.approx(mse, rel=1e-15)
    binary = classification_metrics(np.array([[0.6], [0.5], [0.2]]), np.array([[1.0], [1.0], [0.0]]))
    assert binary["val_accuracy"] == pytest.approx(2 / 3, rel=1e-15)  # 0.5 is not above the threshold


def test_regression_report_matches_the_formulas():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(300, 2))
    pred = y + rng.normal(scale=0.3, size=y.shape)
    out = regression_report(y, pred)
    r2 = np.mean(1 - ((y - pred) ** 2).sum(axis=0) / ((y - y.mean(axis=0)) ** 2).sum(axis=0))
    mse = np.mean((y - pred) ** 2)
    expected = {"r2": r2, "mse": mse, "rmse": np.sqrt(mse), "mae": np.mean(np.abs(y - pred))}
    assert out == pytest.approx(expected, rel=1e-12)


def test_classification_report_matches_the_formulas():
    classes = np.array(["no", "yes"])
    y = np.array(["no", "no", "no", "yes", "yes", "no"])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.55, 0.45], [0.8, 0.2]])
    out = classification_report(y, proba, classes)
    # predicted: no no yes yes no no -> 4 of 6 right; recall no 3/4, yes 1/2
    # AUC: pairs (yes, no) with the yes row scored higher: 0.8 beats all 4, 0.45 beats 0.1, 0.4, 0.2 -> 7 of 8
    expected = {"accuracy": 4 / 6, "balanced_accuracy": (3 / 4 + 1 / 2) / 2, "roc_auc": 7 / 8}
    assert out == pytest.approx(expected, rel=1e-15)
    three = classification_report(np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 1, 2]], np.arange(3))
    assert set(three) == {"accuracy", "balanced_accuracy"} and three["accuracy"] == 0.75
