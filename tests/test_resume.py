"""Checkpoint and resume: a fit interrupted mid-way (an exception, or SIGKILL of the client process) continues from
its last complete iteration and ends with the same model as an uninterrupted fit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rfm_dask
from pipelines.datasets import low_rank_golden
from rfm_dask import RFMRegressor
from rfm_dask.files.checkpoint import CheckpointMismatch
from rfm_dask.app.cli import main
from rfm_dask.files.model_file import read_model_file

from interrupt import fit_crashing_in_iteration_2


def _same_model(a, b):
    np.testing.assert_array_equal(a.feature_matrix_, b.feature_matrix_)
    np.testing.assert_array_equal(a.model_.coef, b.model_.coef)
    assert a.best_iter_ == b.best_iter_
    # the history's residuals are client-side float64 norms: equal to rounding whatever process computed them
    assert len(a.history_) == len(b.history_)
    for ra, rb in zip(a.history_, b.history_):
        assert ra.keys() == rb.keys()
        for key in ra.keys() - {"seconds"}:
            assert ra[key] == (pytest.approx(rb[key], rel=1e-9) if isinstance(rb[key], float) else rb[key]), key


@pytest.mark.parametrize("solver", ["cg", "nystrom"])
def test_api_resume_after_a_failure(client, tmp_path, monkeypatch, solver):
    X, y, _, _ = low_rank_golden(n_train=600, n_test=1, seed=5)
    params = dict(iters=3, solver=solver, n_centers=200, patience=None, bandwidth=10.0, reg=1e-3, random_state=7,
                  client=client)  # untuned: this is about resuming (a tuned fit's: test_tuning.py)
    reference = RFMRegressor(**params).fit(X, y)

    ckpt = tmp_path / "fit.ckpt"
    fit_crashing_in_iteration_2(monkeypatch, RFMRegressor(checkpoint=ckpt, **params), X, y)
    assert read_model_file(ckpt)[1]["next_iteration"] == 2

    swapped = X.copy()
    swapped[[0, 1], 2] = swapped[[1, 0], 2]
    other_fits = {  # each refused: (parameters, X); y stays
        "another reg": ({**params, "reg": 1e-2}, X),
        "rows of X permuted": (params, X[np.random.default_rng(0).permutation(len(X))]),
        "two values of a column swapped (same column means)": (params, swapped),
    }
    for name, (other, data) in other_fits.items():
        with pytest.raises(CheckpointMismatch, match="other settings or data"):
            RFMRegressor(checkpoint=ckpt, resume=True, **other).fit(data, y)
    resumed = RFMRegressor(checkpoint=ckpt, resume=True, **params).fit(X, y)
    _same_model(resumed, reference)


def test_cli_resume_after_sigkill(tmp_path, capsys):
    X, y, _, _ = low_rank_golden(n_train=1500, n_test=1, seed=6)
    pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(X.shape[1])}, "y": y}), tmp_path / "d.parquet")
    store = tmp_path / "d.zarr"
    assert main(["ingest", str(tmp_path / "d.parquet"), str(store), "--target", "y", "--quiet"]) == 0
    fit = ["fit", str(store), "--iters", "4", "--solver", "cg", "--patience", "10", "--quiet",
           "--bandwidth", "10", "--reg", "0.001"]  # untuned: this is about resuming (tuned: test_tuning.py)
    killed_model, ckpt = tmp_path / "killed.rfm", tmp_path / "killed.rfm.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "rfm_dask.app.cli", *fit[:2], str(killed_model), *fit[2:]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if ckpt.exists() and read_model_file(ckpt)[1]["next_iteration"] >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the fit ended before it could be killed"
    assert ckpt.exists() and not killed_model.exists()

    assert main([*fit[:2], str(killed_model), *fit[2:], "--resume"]) == 0
    assert not ckpt.exists()
    assert main([*fit[:2], str(tmp_path / "whole.rfm"), *fit[2:]]) == 0
    capsys.readouterr()
    _same_model(rfm_dask.load(killed_model), rfm_dask.load(tmp_path / "whole.rfm"))
