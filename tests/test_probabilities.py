"""Class probabilities from regression scores: the score -> probability map on hand-made scores, and through the
classifier (NumPy and dask input), where it must be that map of the model's own scores (not hard labels)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from rfm_dask import RFMClassifier
from rfm_dask.core.metrics import scores_to_proba


def _expected_proba(F: np.ndarray) -> np.ndarray:
    """Written out: binary p = clip(score, 0, 1) for the second class; multiclass max(score, 0) / sum, or all mass
    on the largest score when none is positive."""
    if F.shape[1] == 1:
        p = np.clip(F[:, 0], 0, 1)
        return np.column_stack([1 - p, p])
    out = []
    for row in F:
        pos = np.maximum(row, 0)
        out.append(pos / pos.sum() if pos.sum() > 0 else np.eye(len(row))[np.argmax(row)])
    return np.array(out)


def test_binary_scores_to_probabilities():
    F = np.array([[-0.3], [0.0], [0.25], [0.5], [0.9], [1.7]])
    expected = np.array([[1, 0], [1, 0], [0.75, 0.25], [0.5, 0.5], [0.1, 0.9], [0, 1]])
    np.testing.assert_allclose(scores_to_proba(F), expected, rtol=0, atol=1e-15)


def test_multiclass_scores_to_probabilities():
    F = np.array([
        [0.2, 0.5, 0.3],  # already a distribution: unchanged
        [-1.0, 2.0, 1.0],  # negative score clipped: 0, 2/3, 1/3
        [0.1, 0.1, 0.8],
        [4.0, 0.0, 0.0],
        [-1.0, -0.5, -2.0],  # nothing positive: all mass on the largest score
    ])
    expected = np.array([[0.2, 0.5, 0.3], [0, 2 / 3, 1 / 3], [0.1, 0.1, 0.8], [1, 0, 0], [0, 1, 0]])
    P = scores_to_proba(F)
    np.testing.assert_allclose(P, expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert np.all(F[0] == [0.2, 0.5, 0.3])  # the input is not modified


def ordered_classes(
    rng: np.random.Generator, n: int, d: int, n_classes: int, weight: float, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Features X (n, d) float32 and labels y (n,) in 0..n_classes-1: the quantile class of the noisy score
    x_0 + weight * x_1 + noise * e (equally frequent classes)."""
    X = rng.normal(size=(n, d)).astype(np.float32)
    score = X[:, 0] + weight * X[:, 1] + noise * rng.normal(size=n)
    return X, np.digitize(score, np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1]))


def _expected_calibrated_proba(F: np.ndarray, T: float) -> np.ndarray:
    """Written out: binary p = 1 / (1 + exp(-(2 s - 1) / T)) for the second class; multiclass exp(F / T) / sum."""
    if F.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-(2 * F[:, 0] - 1) / T))
        return np.column_stack([1 - p, p])
    E = np.exp((F - F.max(axis=1, keepdims=True)) / T)
    return E / E.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("calibrated", [False, True])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_proba_is_the_map_of_its_scores(client, n_classes, calibrated):
    """Without validation rows the clip-and-normalise map of the scores; with them, the temperature-scaled one."""
    rng = np.random.default_rng(n_classes)
    X, y = ordered_classes(rng, 200, 4, n_classes, weight=0.5, noise=0.5)
    model = RFMClassifier(iters=1, reg=0.1, bandwidth=3.0, random_state=0, validation_fraction=0.1 * calibrated,
                          client=client).fit(X, y)
    X_test = rng.normal(size=(100, 4)).astype(np.float32)
    F = model.model_.decision(X_test)
    assert (model.calibration_ is not None) == calibrated
    expected = _expected_calibrated_proba(F, model.calibration_) if calibrated else _expected_proba(F)
    proba = model.predict_proba(X_test)
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-12)
    # soft probabilities, not hard labels: for most test rows no class is (nearly) certain
    assert np.mean(proba.max(axis=1) < 0.99) > 0.5
    lazy = model.predict_proba(da.from_array(X_test, chunks=(30, -1)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(model.classes_[np.argmax(proba, axis=1)], model.predict(X_test))
