"""The ``inspect`` pictures: M ordered by importance with a labelled colour bar and no label outside the figure; the
validation history with integer iteration ticks and the kept iteration marked."""

from __future__ import annotations

import numpy as np
import pytest

import rfm_dask
from rfm_dask.app.inspection import draw_history, draw_inspection, plot_feature_matrix

pytest.importorskip("matplotlib")
pd = pytest.importorskip("pandas")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


@pytest.fixture(scope="module")
def model(client):
    """Importance order far from column order: y depends on the last columns; one name is very long."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6))
    y = 3 * X[:, 5] + np.sin(2 * X[:, 4]) + 0.05 * rng.normal(size=400)
    names = ["a", "b", "c", "d", "e_" + "long_name" * 8, "f"]
    return rfm_dask.RFMRegressor(iters=3, solver="direct", bandwidth=5.0, random_state=0, client=client).fit(
        pd.DataFrame(X, columns=names), y)


def _drawn(model, **kwargs) -> Figure:
    fig = Figure(figsize=(18, 7), dpi=110, layout="constrained")
    draw_inspection(fig, model, **kwargs)
    FigureCanvasAgg(fig).draw()
    return fig


def test_heatmap_is_ordered_by_importance_with_labelled_colour_bar(model):
    fig = _drawn(model)
    ax_m = fig.axes[0]
    order = np.argsort(-model.feature_importances_, kind="stable")
    assert order[0] != 0  # the test means something: column order is not importance order
    np.testing.assert_array_equal(ax_m.images[0].get_array(), model.feature_matrix_[np.ix_(order, order)])
    labels = [t.get_text() for t in ax_m.get_yticklabels()]
    assert labels[0] == model.feature_names_in_[order[0]]
    assert [label.rstrip("\u2026") for label in labels] == [
        str(model.feature_names_in_[i])[: len(label.rstrip("\u2026"))] for i, label in zip(order, labels)]
    colour_bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert "M" in colour_bar.get_ylabel()
    top = _drawn(model, top=3).axes[0]
    assert len(top.get_xticklabels()) == 3 and top.images[0].get_array().shape == (3, 3)


def test_no_text_is_clipped(model):
    """Every axes with all it draws (tick labels, titles, axis labels, the colour bar's label) lies inside the
    figure."""
    fig = _drawn(model)
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    assert len(fig.axes) == 4
    for ax in fig.axes:
        extent = ax.get_tightbbox(renderer)
        assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1, (ax.get_title(), extent)
        assert box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1, (ax.get_title(), extent)


def test_history_has_integer_ticks_and_marks_the_kept_iteration(model):
    fig = Figure(layout="constrained")
    ax = fig.subplots()
    draw_history(ax, model.history_, model.best_iter_)
    FigureCanvasAgg(fig).draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    kept = [line for line in ax.get_lines() if "kept" in line.get_label()]
    assert len(kept) == 1 and list(kept[0].get_xdata()) == [model.best_iter_]
    best = next(h for h in model.history_ if h["iteration"] == model.best_iter_)
    assert list(kept[0].get_ydata()) == [best["val_mse"]]
    assert any(f"iteration {model.best_iter_}" in t.get_text() for t in ax.get_legend().get_texts())

    empty = Figure().subplots()
    draw_history(empty, [{"iteration": 0, "solver": "direct"}], 0)
    assert "no validation rows" in empty.texts[0].get_text()

    # a non-default scoring's metric is the one drawn
    scored = Figure().subplots()
    draw_history(scored, [{"iteration": 0, "val_accuracy": 0.8, "val_mse": 0.1, "val_roc_auc": 0.9}], 0)
    assert scored.get_ylabel() == "validation ROC AUC"


def test_plot_feature_matrix_writes_a_png(model, tmp_path):
    path = plot_feature_matrix(model, tmp_path / "M.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
