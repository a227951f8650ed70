"""A worker process killed in the middle of a fit's CG phase: the fit completes and equals an undisturbed fit."""

from __future__ import annotations

import os
import signal

import numpy as np
from distributed import Client, LocalCluster

from pipelines.datasets import low_rank_golden
from rfm_dask import RFMRegressor
from rfm_dask.parallel.distributed_operator import KernelPasses


def test_fit_survives_a_worker_killed_mid_cg(monkeypatch):
    X, y, X_test, _ = low_rank_golden(n_train=1200, n_test=200, seed=8)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster, set_as_default=False) as client:
            params = dict(iters=1, solver="cg", tol=1e-8, bandwidth=10.0, reg=1e-3, random_state=0, client=client)
            undisturbed = RFMRegressor(**params).fit(X, y)

            killed: list[int] = []
            calls = {"n": 0}
            matvec = KernelPasses.matvec

            def matvec_killing_a_worker(self, rows, V):
                calls["n"] += 1
                if calls["n"] == 6:  # inside the first CG solve
                    victim = sorted(client.scheduler_info()["workers"])[0]
                    pid = client.run(os.getpid, workers=[victim])[victim]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return matvec(self, rows, V)

            monkeypatch.setattr(KernelPasses, "matvec", matvec_killing_a_worker)
            disturbed = RFMRegressor(**params).fit(X, y)
            assert killed and calls["n"] > 6
            assert disturbed.history_[0]["cg_iterations"] > 6
            p, q = disturbed.predict(X_test), undisturbed.predict(X_test)
            np.testing.assert_allclose(p, q, rtol=0, atol=1e-6 * np.abs(q).max())
            np.testing.assert_allclose(disturbed.feature_matrix_, undisturbed.feature_matrix_, rtol=0, atol=1e-6)
