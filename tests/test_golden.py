"""Golden end-to-end tests: the published low-rank behaviour and classification on bundled data sets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from pipelines.datasets import low_rank_golden
from rfm_dask import RFMClassifier, RFMRegressor


def test_low_rank_golden(client):
    """DESIGN section 4: test MSE 0.0123 -> ... -> 0.0020 published; M's top diagonal entries at 0, 1, 5."""
    X_train, y_train, X_test, y_test = low_rank_golden(seed=0)
    model = RFMRegressor(bandwidth=10.0, reg=1e-3, iters=5, patience=None, random_state=0, client=client)
    model.fit(X_train, y_train, X_val=X_test, y_val=y_test)
    mse = [h["val_mse"] for h in model.history_]
    print("low-rank golden test MSE by iteration:", [round(m, 5) for m in mse])
    assert len(mse) == 6
    assert 0.010 < mse[0] < 0.016  # the lazy kernel, published 0.0123
    assert mse[5] <= 0.0025
    assert all(later < earlier for earlier, later in zip(mse[:4], mse[1:5]))
    assert set(np.argsort(np.diag(model.feature_matrix_))[-3:]) == {0, 1, 5}
    assert model.best_iter_ == int(np.argmin(mse))
    # predict() tiles rows differently from the fit, so float32 rounding differs slightly
    np.testing.assert_allclose(np.mean((model.predict(X_test) - y_test) ** 2), min(mse), rtol=1e-4)


@pytest.mark.parametrize("loader", [
    load_digits,
    pytest.param(load_breast_cancer, marks=pytest.mark.xfail(strict=True, reason=(
        "since targets are centred by the class frequencies (issue 13) the lazy kernel classifies 163 of the 171 "
        "test rows right, as the RFM does (before: 162 vs 163), and has the lower Brier score (0.0365 vs 0.0389): "
        "feature learning does not pay on this table. Strict: a fix that makes it pay again turns this red."))),
], ids=["digits", "breast_cancer"])
def test_classification_best_iteration_beats_lazy(client, loader):
    X, y = loader(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    lazy = RFMClassifier(iters=0, random_state=0, client=client).fit(X_train, y_train)
    rfm = RFMClassifier(iters=5, random_state=0, client=client).fit(X_train, y_train)
    lazy_acc, rfm_acc = lazy.score(X_test, y_test), rfm.score(X_test, y_test)
    print(f"{loader.__name__}: lazy {lazy_acc:.4f}, rfm {rfm_acc:.4f} (best iteration {rfm.best_iter_})")
    # feature learning must pay off: a learned M is kept, and it classifies the held-out rows strictly better
    assert rfm.best_iter_ > 0
    assert rfm_acc > lazy_acc
    assert lazy_acc > 0.9
