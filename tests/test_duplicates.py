"""Duplicate rows solved as weighted distinct rows (``core.duplicates``, ``local.fit_local``): the same fit as on
every row, against the dense float64 reference on all the rows (duplicates included) and against the fit that does
not collapse them, at the cost of the distinct rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rfm_dask import RFMRegressor, rfm_loop
from rfm_dask.core.duplicates import Duplicates
from rfm_dask.core.targets import TargetScaling
from rfm_dask.local import fit_local
from rfm_dask.model import KernelModel
from rfm_dask.parallel.cluster_engine import ClusterEngine
from rfm_dask.parallel.row_blocks import put_rows
from rfm_dask.rfm_loop import run_rfm

from test_rfm_reference import _check_model, _params, _reference, _settings


def _rows_with_duplicates(seed: int, n_distinct: int, n: int, d: int = 4):
    """n rows (float32) drawn with repeats from n_distinct rows, targets (n, 2) that differ between the rows of a
    group (smooth part plus noise), and test rows."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_distinct, d)).astype(np.float32)
    X = base[rng.integers(0, n_distinct, size=n)]
    Y = np.column_stack([X[:, 0] * X[:, 1] + np.sin(2 * X[:, 2]), X[:, 3] ** 2 - X[:, 0]])
    Y = Y + 0.3 * rng.normal(size=Y.shape)
    return X, Y, rng.normal(size=(n // 2, d)).astype(np.float32)


def test_distinct_rows_in_order_of_first_appearance():
    X = np.array([[1, 2], [0, 0], [1, 2], [-0.0, 0], [0, 0], [3, 1]], dtype=np.float32)
    dup = Duplicates.of(X)
    np.testing.assert_array_equal(dup.first, [0, 1, 3, 5])  # -0.0 is kept apart from 0.0 (compared by bytes)
    np.testing.assert_array_equal(dup.inverse, [0, 1, 0, 2, 1, 3])
    np.testing.assert_array_equal(X[dup.first][dup.inverse], X)
    assert (dup.n_rows, dup.n_distinct) == (6, 4)
    np.testing.assert_array_equal(dup.counts, [2, 2, 1, 1])


def test_collapse_gives_summed_weights_and_weighted_mean_targets():
    X = np.array([[1, 2], [0, 0], [1, 2], [5, 5], [0, 0], [3, 1], [1, 2]], dtype=np.float32)
    Z = np.arange(14, dtype=np.float64).reshape(7, 2)
    w = np.array([1.0, 2.0, 3.0, 0.0, 0.5, 1.0, 0.0])
    dup = Duplicates.of(X)
    index = np.array([0, 2, 3, 4, 6])  # a subset: groups 0 (rows 0, 2, 6), 2 (row 3, weight 0), 1 (row 4)
    distinct, Zs, ws = dup.collapse(index, Z, w)
    np.testing.assert_array_equal(distinct, [0, 1, 2])
    np.testing.assert_allclose(ws, [4.0, 0.5, 0.0])
    np.testing.assert_allclose(Zs, [(1 * Z[0] + 3 * Z[2]) / 4, Z[4], [0.0, 0.0]])
    distinct, Zs, ws = dup.collapse(np.arange(7), Z, None)
    np.testing.assert_allclose(ws, [3, 2, 1, 1])
    np.testing.assert_allclose(Zs[0], Z[[0, 2, 6]].mean(axis=0))


@pytest.mark.parametrize("engine", ["cluster", "local"])
@pytest.mark.parametrize("case", ["laplace", "gaussian", "diag", "centre_agop_diag_sqrt", "fact", "fact_diag", "cg"])
def test_collapsed_fit_matches_the_reference_on_all_rows(client, case, engine):
    """The reference solves and updates M on all 60 rows (K + reg I singular but for reg where rows repeat); the
    fit solves on the 18 distinct rows, on the local operator (``fit_local`` collapses them) or on the distributed
    one (``run_rfm`` given the duplicates, row blocks of 5 distinct rows). The collapsed system's eigenvalues are
    among those of the full one (K = P K_d P^T with P^T P = W), so the reference's rounding bound holds for it. A
    distinct row's coefficient is the sum of its rows' coefficients."""
    p = _params(case)
    X, Y, X_test = _rows_with_duplicates(0, 18, 60)
    dup = Duplicates.of(X)
    if engine == "local":
        result = fit_local(X, Y, _settings(p), np.random.default_rng(0))
    else:
        settings = _settings(p)
        result = run_rfm(ClusterEngine(client, settings.options), put_rows(client, X[dup.first], 5), Y, settings,
                         np.random.default_rng(0), duplicates=rfm_loop.collapsible_duplicates(X, settings))
    assert dup.n_distinct == 18
    np.testing.assert_array_equal(result.centres, X[dup.first])
    M, coef, _, tol = _reference(p, X, Y, None)
    summed = np.stack([np.bincount(dup.inverse, weights=coef[:, k]) for k in range(coef.shape[1])], axis=1)
    model = KernelModel(result.centres, result.coef, result.feature_matrix, _settings(p).spec, result.shift)
    _check_model(p, result.feature_matrix, result.coef, model.decision, X_test, M, summed, X[dup.first], tol)


@pytest.mark.parametrize("tune_rows", [2000, 40], ids=["search-on-all-rows", "search-on-sampled-rows"])
def test_collapsed_tuned_fit_draws_what_the_full_fit_draws(monkeypatch, tune_rows):
    """With bandwidth and ridge tuned and sample weights (some 0), validation rows and early stopping: the samples
    (bandwidth scale, search rows, AGOP rows) are drawn from all the rows, so the generator ends in the same state,
    the same values are chosen in each iteration, and the models agree within float32 rounding (observed: ~1e-7
    relative; the bound allows 1e-4, the reference tolerance of this conditioning, see test_rfm_reference)."""
    X, Y, _ = _rows_with_duplicates(1, 30, 120)
    X_val, Y_val, X_test = _rows_with_duplicates(2, 30, 60)
    weights = np.random.default_rng(3).uniform(0, 2, size=120)
    weights[::7] = 0
    settings = RFMRegressor(iters=3, solver="direct")._settings()
    settings = replace(settings, options=replace(settings.options, tune_rows=tune_rows))
    scaling = TargetScaling.standardise(Y, weights)
    fits, states = [], []
    for below in (rfm_loop.COLLAPSE_BELOW, 0.0):  # 0: never collapse
        monkeypatch.setattr(rfm_loop, "COLLAPSE_BELOW", below)
        rng = np.random.default_rng(4)
        fits.append(fit_local(X, Y, settings, rng, X_val, Y_val, scaling=scaling, weights=weights))
        states.append(rng.bit_generator.state)
    collapsed, full = fits
    assert collapsed.centres.shape[0] == 30 and full.centres.shape[0] == 120
    assert states[0] == states[1]
    assert [h["reg"] for h in collapsed.history] == [h["reg"] for h in full.history]
    # the same grid point: a tuned bandwidth is a factor times the median distance under M, which carries M's rounding
    np.testing.assert_allclose([h["bandwidth"] for h in collapsed.history], [h["bandwidth"] for h in full.history],
                               rtol=1e-4)
    assert collapsed.best_iter == full.best_iter
    np.testing.assert_allclose(collapsed.feature_matrix, full.feature_matrix, rtol=0,
                               atol=1e-4 * np.abs(full.feature_matrix).max())
    predictions = [KernelModel(f.centres, f.coef, f.feature_matrix, f.spec, f.shift).decision(X_test) for f in fits]
    np.testing.assert_allclose(predictions[0], predictions[1], rtol=0, atol=1e-4 * np.abs(predictions[1]).max())


@pytest.mark.parametrize("change, kept", [
    (dict(solver="nystrom"), "nystrom takes no weights"),
    (dict(feature_update="fact", agop_samples=50), "FACT on a sample of the rows"),
    (dict(), "too few duplicates"),
])
def test_rows_are_not_collapsed(change, kept):
    """Not collapsed: with the Nystrom solver, for FACT where not every row is sampled, and where at least
    ``COLLAPSE_BELOW`` of the rows are distinct."""
    X, Y, _ = _rows_with_duplicates(5, 18, 60)
    if kept == "too few duplicates":
        distinct = np.random.default_rng(6).normal(size=(57, 4)).astype(np.float32)
        X = np.concatenate([distinct, distinct[:3]])  # 57 distinct rows of 60: more than 0.9 of them
        assert Duplicates.of(X).n_distinct == 57
    settings = replace(_settings({**_params("laplace"), "n_centers": 60}), **change)
    result = fit_local(X, Y, settings, np.random.default_rng(0))
    assert result.centres.shape[0] == 60, kept


class _Killed(Exception):
    """Stands for the fit's process being killed."""


def test_tree_of_rows_with_duplicates_resumes_and_round_trips(client, tmp_path, monkeypatch):
    """A tree whose leaves hold few distinct rows: each leaf's centres are its distinct rows; a fit killed at its
    last leaf resumes (the finished leaves' centres fetched again as their distinct rows) to the uninterrupted
    model, bit for bit; the model file round-trips."""
    import rfm_dask
    from rfm_dask.tree import tasks

    X, Y, X_test = _rows_with_duplicates(7, 120, 1200)
    y = Y[:, 0]
    params = dict(leaf_size=300, split_samples=300, bandwidth=3.0, reg=1e-3, iters=2, random_state=0, client=client)
    reference = RFMRegressor(**params).fit(X, y)
    assert reference.n_leaves_ >= 4
    for leaf, size in zip(reference.model_.leaves, reference.leaf_sizes_):
        assert Duplicates.of(leaf.centres).n_distinct == leaf.centres.shape[0] < size
    fit_local, calls = tasks.fit_local, []

    def killed_at_the_last_leaf(rows, *args, **kwargs):
        calls.append(1)
        if len(calls) == reference.n_leaves_:  # the leaves are collected in order: all others are finished
            raise _Killed
        return fit_local(rows, *args, **kwargs)

    monkeypatch.setattr(tasks, "fit_local", killed_at_the_last_leaf)
    path = tmp_path / "tree.ckpt"
    with pytest.raises(_Killed):
        RFMRegressor(checkpoint=path, **params).fit(X, y)
    monkeypatch.setattr(tasks, "fit_local", fit_local)
    resumed = RFMRegressor(checkpoint=path, resume=True, **params).fit(X, y)
    np.testing.assert_array_equal(resumed.predict(X_test), reference.predict(X_test))
    loaded = rfm_dask.load(reference.save(tmp_path / "tree.rfm"))
    np.testing.assert_array_equal(loaded.predict(X_test), reference.predict(X_test))


@pytest.mark.parametrize("estimator", ["regressor", "classifier"])
def test_estimator_collapses_rows_held_in_memory(client, monkeypatch, estimator):
    """The default estimators on a NumPy array with repeating rows (validation rows split off, bandwidth and ridge
    tuned, targets scaled): the global model's centres are the distinct training rows and it matches the fit that
    does not collapse them (same choices; predictions within float32 rounding, observed ~1e-7, allowed 1e-4). A
    dask array is not collapsed (its rows are not held here)."""
    import dask.array as da

    from rfm_dask import RFMClassifier

    X, Y, X_test = _rows_with_duplicates(8, 40, 400)
    y = Y[:, 0] if estimator == "regressor" else (Y[:, 0] > np.median(Y[:, 0])).astype(int)
    make = (lambda: RFMRegressor(iters=3, random_state=0, client=client)) if estimator == "regressor" else (
        lambda: RFMClassifier(iters=3, random_state=0, client=client))
    collapsed = make().fit(X, y)
    monkeypatch.setattr(rfm_loop, "COLLAPSE_BELOW", 0.0)
    full = make().fit(X, y)
    assert collapsed.model_.centres.shape[0] == 40 and full.model_.centres.shape[0] == 360
    assert [h["reg"] for h in collapsed.history_] == [h["reg"] for h in full.history_]
    np.testing.assert_allclose([h["bandwidth"] for h in collapsed.history_], [h["bandwidth"] for h in full.history_],
                               rtol=1e-4)
    assert collapsed.best_iter_ == full.best_iter_
    a, b = collapsed.model_.decision(X_test), full.model_.decision(X_test)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())
    monkeypatch.undo()
    lazy = make().fit(da.from_array(X, chunks=100), y)
    assert lazy.model_.centres.shape[0] == 360


def test_rows_for_nystrom_are_collapsed_only_onto_at_most_its_centres():
    """Rows the Nystrom solver would take are collapsed only where the exact solve on the distinct rows costs no
    more: at most ``n_centers`` of them."""
    settings = _settings({**_params("laplace"), "solver": "auto", "n_centers": 30})
    settings = replace(settings, options=replace(settings.options, direct_max_rows=50, cg_max_rows=100))
    for n_distinct, collapsed in ((25, True), (40, False)):
        X, _, _ = _rows_with_duplicates(9, n_distinct, 300)
        assert (rfm_loop.collapsible_duplicates(X, settings) is not None) is collapsed, n_distinct
    X, _, _ = _rows_with_duplicates(9, 40, 90)  # 90 rows: cg, exact, so more distinct rows than centres are collapsed
    assert rfm_loop.collapsible_duplicates(X, settings).n_distinct > 30
