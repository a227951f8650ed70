"""The same random_state gives the identical model on 1, 2 or 4 workers (threads or processes) and on repeats."""

from __future__ import annotations

import numpy as np
import pytest
from distributed import Client, LocalCluster

from pipelines.datasets import low_rank_golden
from rfm_dask import RFMClassifier, RFMRegressor


def _fit(estimator, client, X, y):
    model = estimator.set_params(client=client).fit(X, y)
    return model.feature_matrix_, model.model_.coef, model.history_


@pytest.mark.parametrize("make", [
    lambda: RFMRegressor(iters=2, solver="cg", random_state=3),
    lambda: RFMRegressor(iters=2, solver="nystrom", n_centers=100, random_state=3),
    lambda: RFMClassifier(iters=1, solver="direct", feature_update="fact", random_state=3),
], ids=["cg", "nystrom", "direct-fact-classifier"])
def test_identical_model_on_1_2_4_workers(make, process_client):
    X, y, _, _ = low_rank_golden(n_train=400, n_test=1, seed=4)
    if isinstance(make(), RFMClassifier):
        y = (y > np.median(y)).astype(int)
    results = []
    for n_workers in (1, 2, 4):
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=None) as c:
            with Client(c, set_as_default=False) as client:
                results.append(_fit(make(), client, X, y))
    results.append(_fit(make(), process_client, X, y))  # 2 worker processes
    results.append(_fit(make(), process_client, X, y))  # a repeat
    M0, coef0, history0 = results[0]
    for M, coef, history in results[1:]:
        np.testing.assert_array_equal(M, M0)
        np.testing.assert_array_equal(coef, coef0)
        assert [h.get("val_mse") for h in history] == [h.get("val_mse") for h in history0]
