"""A fit that crashes part-way, for the checkpoint/resume tests."""

from __future__ import annotations

import pytest

import rfm_dask.rfm_loop as training


def fit_crashing_in_iteration_2(monkeypatch, estimator, X, y) -> None:
    """Fit ``estimator`` (with a checkpoint) on X, y, crashing in the feature update after iteration 1 (its third
    call of ``training.next_feature_matrix``, counting the one of iteration 0); the update is restored after."""
    original, calls = training.next_feature_matrix, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash in iteration 2")
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "next_feature_matrix", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        estimator.fit(X, y)
    monkeypatch.setattr(training, "next_feature_matrix", original)
