"""bandwidth="auto" and reg="auto" against dense float64 NumPy references (DESIGN section 2, "Model selection")."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from scipy.spatial.distance import pdist

from rfm_dask import RFMClassifier, RFMRegressor, load
from rfm_dask.core.kernels import KernelSpec
from rfm_dask.parallel.distributed_operator import KernelPasses
from rfm_dask.parallel.row_blocks import put_rows
from rfm_dask.local import LocalEngine, LocalRows
from rfm_dask.tuning import (BANDWIDTH_FACTORS, CONSISTENCY_FOLDS, REG_GRID, UNTUNED_BANDWIDTH, UNTUNED_REG,
                             median_distance, search_hyperparameters)
from rfm_dask.parallel.cluster_engine import ClusterEngine
from rfm_dask.options import SolverOptions

import reference as ref
from interrupt import fit_crashing_in_iteration_2


def _data(n=160, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = 5.0 + np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=n)
    return X, y


def test_ridge_path_matches_dense_solves(client):
    """One kernel matrix gives (K + reg I)^-1 Y for every reg, as dense float64 solves do."""
    X, y = _data(n=90)
    Y = np.column_stack([y - y.mean(), X[:, 3]])
    S = np.diag([1.0, 0.5, 2.0, 0.7])
    spec = KernelSpec("laplace", bandwidth=3.0)
    passes = KernelPasses(client, put_rows(client, X, rows_per_block=32), S, X.mean(axis=0), spec)
    regs = (1e-2, 1e-1, 1.0)
    alphas, residuals = passes.ridge_path(Y, regs)
    K = ref.kernel(X, X, S @ S, "laplace", 3.0)
    for alpha, reg, residual in zip(alphas, regs, residuals):
        expected = np.linalg.solve(K + reg * np.eye(len(X)), Y)
        # the centres are float32: kernel entries off by ~1e-7 relative, amplified by cond(K + reg I) <= (1 + n)/reg
        np.testing.assert_allclose(alpha, expected, rtol=0, atol=1e-7 * (1 + len(X)) / reg * np.abs(expected).max())
        assert residual < 1e-10
        direct, _ = passes.direct_solve(Y, reg)
        np.testing.assert_allclose(alpha, direct, rtol=0, atol=1e-9 * (1 + len(X)) / reg * np.abs(direct).max())


def test_median_distance_is_that_of_the_seeded_sample(client):
    X, _ = _data(n=70)
    S = np.array([1.0, 0.0, 0.5, 2.0])  # a diagonal M^(1/2)
    rows = put_rows(client, X, rows_per_block=16)
    expected = np.median(pdist(X.astype(np.float32).astype(np.float64) * S))
    engine = ClusterEngine(client, SolverOptions.from_config())
    got = median_distance(engine, rows, S, X.mean(axis=0), np.random.default_rng(0), sample=100)
    assert got == pytest.approx(expected, rel=1e-6)
    index = np.sort(np.random.default_rng(1).choice(70, 20, replace=False))
    sampled = median_distance(engine, rows, S, X.mean(axis=0), np.random.default_rng(1), sample=20)
    assert sampled == pytest.approx(np.median(pdist(X[index] * S)), rel=1e-6)


def _reference_grid_mse(X, y, X_val, y_val, scale):
    """Validation MSE (bandwidth factor, reg) of the exact centred KRR with M = I, in float64."""
    out = np.empty((len(BANDWIDTH_FACTORS), len(REG_GRID)))
    for i, factor in enumerate(BANDWIDTH_FACTORS):
        K = ref.kernel(X, X, np.eye(X.shape[1]), "laplace", factor * scale)
        K_val = ref.kernel(X_val, X, np.eye(X.shape[1]), "laplace", factor * scale)
        for j, reg in enumerate(REG_GRID):
            pred = y.mean() + K_val @ np.linalg.solve(K + reg * np.eye(len(X)), y - y.mean())
            out[i, j] = np.mean((pred - y_val) ** 2)
    return out


def test_auto_chooses_the_best_grid_point_on_the_validation_rows(client):
    X, y = _data()
    X_val, y_val = _data(n=60, seed=1)
    model = RFMRegressor(bandwidth="auto", reg="auto", iters=0, solver="direct", random_state=0,
                         client=client).fit(X, y, X_val=X_val, y_val=y_val)
    scale = np.median(pdist(X.astype(np.float32).astype(np.float64)))  # all 160 rows are the scale sample
    grid = _reference_grid_mse(X, y, X_val, y_val, scale)
    factor = model.bandwidth_ / scale
    i = int(np.argmin(np.abs(np.array(BANDWIDTH_FACTORS) - factor)))
    j = REG_GRID.index(model.reg_)
    assert factor == pytest.approx(BANDWIDTH_FACTORS[i], rel=1e-6)
    # the grid's best, up to what float32 tiles can tell apart
    assert grid[i, j] <= grid.min() * (1 + 1e-4)
    assert model.history_[0]["val_mse"] == pytest.approx(grid[i, j], rel=1e-4)
    assert (model.history_[0]["bandwidth"], model.history_[0]["reg"]) == (model.bandwidth_, model.reg_)
    fixed = RFMRegressor(bandwidth=model.bandwidth_, reg=model.reg_, iters=0, solver="direct", random_state=0,
                         client=client).fit(X, y, X_val=X_val, y_val=y_val)
    np.testing.assert_allclose(model.predict(X_val), fixed.predict(X_val), rtol=1e-6)


@pytest.mark.parametrize("solver", ["direct", "cg", "nystrom"])
def test_search_on_a_subsample_then_one_fit_with_the_chosen_values(client, solver):
    """Above ``rfm.tune.rows`` (and for cg and nystrom) the search runs on a seeded subsample; the model is then the
    fit with the chosen values, and every iteration records its own choice."""
    X, y = _data()
    X_val, y_val = _data(n=60, seed=1)
    params = dict(iters=2, patience=None, solver=solver, n_centers=160, tol=1e-10, random_state=0, client=client)
    with dask.config.set({"rfm.tune.rows": 60}):
        model = RFMRegressor(bandwidth="auto", reg=1e-2, **params).fit(X, y, X_val=X_val, y_val=y_val)
    assert model.reg_ == 1e-2 and all(h["reg"] == 1e-2 for h in model.history_)
    chosen = [h["bandwidth"] for h in model.history_]
    assert model.bandwidth_ == chosen[model.best_iter_]
    lazy = RFMRegressor(bandwidth=chosen[0], reg=1e-2, **dict(params, iters=0)).fit(X, y, X_val=X_val, y_val=y_val)
    assert lazy.history_[0]["val_mse"] == pytest.approx(model.history_[0]["val_mse"], rel=1e-5)


def test_reg_auto_alone_keeps_the_bandwidth_and_classifier_tunes_on_accuracy(client):
    X, y = _data()
    labels = np.where(y > np.median(y), "hi", "lo")
    model = RFMClassifier(bandwidth=3.0, reg="auto", iters=1, random_state=0, client=client).fit(X, labels)
    assert model.bandwidth_ == 3.0 and model.reg_ in REG_GRID
    assert all(h["bandwidth"] == 3.0 and "val_accuracy" in h for h in model.history_)


def _search(X, Z, X_val, score, solver="direct", bandwidth=UNTUNED_BANDWIDTH, reg=UNTUNED_REG):
    """search_hyperparameters over both grids with M = I on in-process rows, from the untuned (bandwidth, reg)."""
    engine = LocalEngine(SolverOptions.from_config())
    return search_hyperparameters(engine, LocalRows(X.astype(np.float32)), Z, LocalRows(X_val.astype(np.float32)),
                                  score, np.eye(X.shape[1]), X.mean(axis=0), KernelSpec("laplace", bandwidth), reg,
                                  True, True, solver, np.random.default_rng(0))


def _untuned_predictions(X, Z, X_val, bandwidth=UNTUNED_BANDWIDTH, reg=UNTUNED_REG):
    """Validation predictions (n_val, 1) of the exact KRR with the untuned bandwidth and ridge, M = I, float64."""
    K = ref.kernel(X, X, np.eye(X.shape[1]), "laplace", bandwidth)
    K_val = ref.kernel(X_val, X, np.eye(X.shape[1]), "laplace", bandwidth)
    return K_val @ np.linalg.solve(K + reg * np.eye(len(X)), Z)


@pytest.mark.parametrize("solver", ["direct", "nystrom"])
def test_the_untuned_pair_is_a_candidate_and_wins_when_best_or_tied(solver):
    """The untuned bandwidth and ridge are searched too: chosen when they score best on the validation rows, and on
    ties (every candidate scoring the same), whichever the grid holds; with the direct solver on all rows the chosen
    solution is the exact untuned one."""
    X, y = _data(n=120)
    X_val, _ = _data(n=45, seed=1)
    Z = (y - y.mean())[:, None]
    F_untuned = _untuned_predictions(X, Z, X_val)
    # the score is the closeness to the untuned model's predictions: the untuned candidate is the best one
    closest = _search(X, Z, X_val, lambda F: (-float(np.mean((F - F_untuned) ** 2)),), solver)
    assert (closest.spec.bandwidth, closest.reg) == (UNTUNED_BANDWIDTH, UNTUNED_REG)
    tied = _search(X, Z, X_val, lambda F: (0.0,), solver)
    assert (tied.spec.bandwidth, tied.reg) == (UNTUNED_BANDWIDTH, UNTUNED_REG)
    if solver == "direct":  # the search ran on all 120 rows: its solution is the fit's
        K = ref.kernel(X, X, np.eye(X.shape[1]), "laplace", UNTUNED_BANDWIDTH)
        expected = np.linalg.solve(K + UNTUNED_REG * np.eye(len(X)), Z)
        # float32 rows: kernel entries off by ~1e-7 relative, amplified by cond(K + reg I) <= (1 + n) / reg
        np.testing.assert_allclose(tied.solution.coef, expected, rtol=0,
                                   atol=1e-7 * (1 + len(X)) / UNTUNED_REG * np.abs(expected).max())


def test_the_settings_values_are_the_untuned_candidate_even_off_the_grids():
    """The untuned candidate is the pair the settings hold (a tuned tree's leaves hold the tree's pair, see
    ``tree.tuned.tree_pair``), also off both grids: searched, and kept when it scores best or on ties, with the exact
    solution of that pair."""
    X, y = _data(n=120)
    X_val, _ = _data(n=45, seed=1)
    Z = (y - y.mean())[:, None]
    bandwidth, reg = 2.5, 0.37
    assert reg not in REG_GRID
    F_pair = _untuned_predictions(X, Z, X_val, bandwidth, reg)
    closest = _search(X, Z, X_val, lambda F: (-float(np.mean((F - F_pair) ** 2)),), "direct", bandwidth, reg)
    assert (closest.spec.bandwidth, closest.reg) == (bandwidth, reg)
    tied = _search(X, Z, X_val, lambda F: (0.0,), "direct", bandwidth, reg)
    assert (tied.spec.bandwidth, tied.reg) == (bandwidth, reg)
    K = ref.kernel(X, X, np.eye(X.shape[1]), "laplace", bandwidth)
    expected = np.linalg.solve(K + reg * np.eye(len(X)), Z)
    # float32 rows: kernel entries off by ~1e-7 relative, amplified by cond(K + reg I) <= (1 + n) / reg
    np.testing.assert_allclose(closest.solution.coef, expected, rtol=0,
                               atol=1e-7 * (1 + len(X)) / reg * np.abs(expected).max())


def test_a_gain_on_part_of_the_validation_rows_only_is_not_taken():
    """A candidate that beats the untuned pair on the validation rows as a whole, but only through one of the
    interleaved parts, is taken as noise: the untuned pair is kept. A gain on every part is taken."""
    X, y = _data(n=120)
    X_val, y_val = _data(n=45, seed=1)
    Z, Z_val = (y - y.mean())[:, None], (y_val - y.mean())[:, None]
    F_untuned = _untuned_predictions(X, Z, X_val)
    part = np.arange(len(X_val)) % CONSISTENCY_FOLDS == 0

    def part_0(F):  # only the rows of part 0 count: no candidate gains on the other parts
        return (-float(np.sum((F[part] - Z_val[part]) ** 2)),)

    def whole(F):
        return (-float(np.sum((F - Z_val) ** 2)),)

    chosen = _search(X, Z, X_val, whole)
    assert (chosen.spec.bandwidth, chosen.reg) != (UNTUNED_BANDWIDTH, UNTUNED_REG)
    F_chosen = ref.kernel(X_val, X, np.eye(4), "laplace", chosen.spec.bandwidth) @ chosen.solution.coef
    for j in range(CONSISTENCY_FOLDS):  # the rule, against the float64 reference: better on every part
        rows = np.arange(len(X_val)) % CONSISTENCY_FOLDS == j
        assert np.sum((F_chosen[rows] - Z_val[rows]) ** 2) < np.sum((F_untuned[rows] - Z_val[rows]) ** 2)
    # the same pair gains on part 0 alone (it is better there), but that gain is not consistent
    assert part_0(F_chosen) > part_0(F_untuned)
    kept = _search(X, Z, X_val, part_0)
    assert (kept.spec.bandwidth, kept.reg) == (UNTUNED_BANDWIDTH, UNTUNED_REG)


def test_tuned_validation_quality_is_at_least_the_untuned_one(client):
    """By construction: at iteration 0 (M = I) the tuned model's validation MSE is at most that of the model with
    the untuned bandwidth and ridge, on the same rows."""
    X, y = _data(n=200, seed=4)
    X_val, y_val = _data(n=80, seed=5)
    params = dict(iters=0, solver="direct", random_state=0, client=client)
    tuned = RFMRegressor(bandwidth="auto", reg="auto", **params).fit(X, y, X_val=X_val, y_val=y_val)
    untuned = RFMRegressor(bandwidth=UNTUNED_BANDWIDTH, reg=UNTUNED_REG, **params).fit(X, y, X_val=X_val, y_val=y_val)
    assert (untuned.bandwidth_, untuned.reg_) == (UNTUNED_BANDWIDTH, UNTUNED_REG)
    # both are exact float64 solves on the same float32 kernel tiles; they differ by rounding amplified by
    # cond(K + reg I) <= (1 + n) / reg (2e5 here) times float64 epsilon: far below 1e-8 relative
    assert tuned.history_[0]["val_mse"] <= untuned.history_[0]["val_mse"] * (1 + 1e-8)


def test_auto_without_validation_rows_is_the_untuned_fit(client):
    """With no validation rows "auto" falls back to the untuned values: the model, fitted attributes and history of
    a fit given them explicitly."""
    X, y = _data(n=60)
    params = dict(iters=2, validation_fraction=0.0, solver="direct", random_state=0, client=client)
    auto = RFMRegressor(**params).fit(X, y)
    given = RFMRegressor(bandwidth=UNTUNED_BANDWIDTH, reg=UNTUNED_REG, **params).fit(X, y)
    assert (auto.get_params()["bandwidth"], auto.get_params()["reg"]) == ("auto", "auto")
    assert (auto.bandwidth_, auto.reg_) == (UNTUNED_BANDWIDTH, UNTUNED_REG)
    assert [(h["bandwidth"], h["reg"]) for h in auto.history_] == [(UNTUNED_BANDWIDTH, UNTUNED_REG)] * 3
    np.testing.assert_array_equal(auto.model_.coef, given.model_.coef)
    only_reg = RFMRegressor(bandwidth=3.0, **params).fit(X, y)
    assert (only_reg.bandwidth_, only_reg.reg_) == (3.0, UNTUNED_REG)


def test_bad_values_raise(client):
    X, y = _data(n=40)
    with pytest.raises(ValueError, match="bandwidth"):
        RFMRegressor(bandwidth="wide", client=client).fit(X, y)
    with pytest.raises(ValueError, match="reg"):
        RFMRegressor(reg="best", client=client).fit(X, y)


def test_tuned_values_survive_the_model_file(client, tmp_path):
    X, y = _data(n=80)
    model = RFMRegressor(bandwidth="auto", reg="auto", iters=1, random_state=0, client=client).fit(X, y)
    loaded = load(model.save(tmp_path / "tuned.rfm"))
    assert (loaded.bandwidth_, loaded.reg_) == (model.bandwidth_, model.reg_)
    assert loaded.get_params()["bandwidth"] == "auto"
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_cli_accepts_auto():
    from rfm_dask.app.cli import build_parser

    parser = build_parser()[0]
    args = parser.parse_args(["fit", "store", "model", "--bandwidth", "auto", "--reg", "0.01"])
    assert (args.bandwidth, args.reg) == ("auto", 0.01)
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "store", "model", "--reg", "best"])


def test_resume_keeps_the_tuned_values(client, tmp_path, monkeypatch):
    """A tuned fit interrupted after iteration 1 resumes to the model of an uninterrupted one (the best
    iteration's bandwidth and reg are in the checkpoint)."""
    X, y = _data(n=120)
    params = dict(bandwidth="auto", reg="auto", iters=3, patience=None, solver="direct", random_state=3,
                  client=client)
    reference = RFMRegressor(**params).fit(X, y)
    ckpt = tmp_path / "fit.ckpt"
    fit_crashing_in_iteration_2(monkeypatch, RFMRegressor(checkpoint=ckpt, **params), X, y)
    resumed = RFMRegressor(checkpoint=ckpt, resume=True, **params).fit(X, y)
    assert (resumed.bandwidth_, resumed.reg_, resumed.best_iter_) == (reference.bandwidth_, reference.reg_,
                                                                      reference.best_iter_)
    np.testing.assert_array_equal(resumed.model_.coef, reference.model_.coef)
    assert [(h["bandwidth"], h["reg"]) for h in resumed.history_] == [(h["bandwidth"], h["reg"])
                                                                      for h in reference.history_]


def _sampled_search_fit(client, tune_rows, random_state, **extra):
    """A tuned fit on 300 rows whose search runs on ``tune_rows`` sampled rows (direct solver)."""
    X, y = _data(n=300)
    X_val, y_val = _data(n=100, seed=1)
    params = dict(iters=2, patience=None, solver="direct", random_state=random_state, client=client, **extra)
    with dask.config.set({"rfm.tune.rows": tune_rows}):
        model = RFMRegressor(**params).fit(X, y, X_val=X_val, y_val=y_val)
    lazy = RFMRegressor(bandwidth=UNTUNED_BANDWIDTH, reg=UNTUNED_REG, **dict(params, iters=0)).fit(
        X, y, X_val=X_val, y_val=y_val)
    return model, lazy.history_[0]["val_mse"]


def test_a_sampled_choice_that_loses_on_the_fit_leaves_the_fit_untuned(client):
    """The pair chosen on 40 sampled rows scores below the untuned pair once both are solved on all 300 rows: the
    fit uses the untuned pair from iteration 0 on (seed 1 is such a case, seed 0 of the test below is not)."""
    model, untuned_mse = _sampled_search_fit(client, 40, 1)
    assert model.history_[0]["sampled_choice_kept"] is False
    assert all("sampled_choice_kept" not in h for h in model.history_[1:])
    assert [(h["bandwidth"], h["reg"]) for h in model.history_] == [(UNTUNED_BANDWIDTH, UNTUNED_REG)] * 3
    assert (model.bandwidth_, model.reg_) == (UNTUNED_BANDWIDTH, UNTUNED_REG)
    # iteration 0 is the untuned solve on all rows (M = I): the lazy untuned fit's, to rounding
    assert model.history_[0]["val_mse"] == pytest.approx(untuned_mse, rel=1e-8)


def test_a_sampled_choice_that_wins_on_the_fit_is_kept_and_tuning_goes_on(client):
    """On 100 sampled rows the search chooses a pair that beats the untuned pair on the fit too: it is kept, the
    check runs at iteration 0 only, and the later iterations search again."""
    model, untuned_mse = _sampled_search_fit(client, 100, 0)
    first = model.history_[0]
    assert first["sampled_choice_kept"] is True and (first["bandwidth"], first["reg"]) != (UNTUNED_BANDWIDTH,
                                                                                          UNTUNED_REG)
    assert first["val_mse"] < untuned_mse
    assert all("sampled_choice_kept" not in h for h in model.history_[1:])
    assert (model.history_[1]["bandwidth"], model.history_[1]["reg"]) != (UNTUNED_BANDWIDTH, UNTUNED_REG)


def test_resume_keeps_a_fit_left_untuned_by_the_check(client, tmp_path, monkeypatch):
    """The check's decision is in the checkpoint: a fit it left untuned, interrupted in iteration 2, resumes to the
    uninterrupted fit's model (untuned in every iteration)."""
    X, y = _data(n=300)
    # seed 8: resumed with tuning on, iteration 2 would choose reg 1e-4 and another model
    params = dict(iters=3, patience=None, solver="direct", random_state=8, validation_fraction=0.25, client=client)
    with dask.config.set({"rfm.tune.rows": 40}):
        reference = RFMRegressor(**params).fit(X, y)
        assert reference.history_[0]["sampled_choice_kept"] is False
        ckpt = tmp_path / "fit.ckpt"
        fit_crashing_in_iteration_2(monkeypatch, RFMRegressor(checkpoint=ckpt, **params), X, y)
        resumed = RFMRegressor(checkpoint=ckpt, resume=True, **params).fit(X, y)
    np.testing.assert_array_equal(resumed.model_.coef, reference.model_.coef)
    assert resumed.history_ == [dict(h, seconds=r["seconds"]) for h, r in zip(reference.history_, resumed.history_)]
