"""Tree structure and routing against a hand-built tree and a dense float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

from rfm_dask.tree.structure import Tree, path_probabilities, project_per_row, route
from seeds import seeds

SQ2 = np.sqrt(0.5)


def hand_tree() -> Tree:
    """Root: x0 <= 0 -> node 1 (x1 <= 0.5 -> leaf 0, else leaf 1); else node 2 ((x1 + x2)/sqrt2 <= -0.2 -> leaf 2,
    else leaf 3)."""
    return Tree(
        directions=np.array([[1.0, 0, 0], [0, 1.0, 0], [0, SQ2, SQ2]]),
        thresholds=np.array([0.0, 0.5, -0.2]),
        scales=np.array([1.0, 2.0, 0.5]),
        children=np.array([[1, 2], [-1, -2], [-3, -4]]),
    )


def reference_leaf(x: np.ndarray) -> int:
    x = x.astype(np.float64)
    if x[0] <= 0:
        return 0 if x[1] <= 0.5 else 1
    return 2 if SQ2 * x[1] + SQ2 * x[2] <= -0.2 else 3


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_probabilities(x: np.ndarray, T: float) -> np.ndarray:
    x = x.astype(np.float64)
    r0 = sigmoid(x[0] / T)
    r1 = sigmoid((x[1] - 0.5) / (2.0 * T))
    r2 = sigmoid((SQ2 * x[1] + SQ2 * x[2] + 0.2) / (0.5 * T))
    return np.array([(1 - r0) * (1 - r1), (1 - r0) * r1, r0 * (1 - r2), r0 * r2])


@pytest.mark.parametrize("seed", seeds(3))
def test_hard_routing_matches_reference(seed):
    X = np.random.default_rng(seed).normal(size=(500, 3)).astype(np.float32)
    X[:5, 0] = 0.0  # on the root's threshold: left
    leaf = route(np, X, hand_tree())
    assert leaf.dtype == np.int64
    np.testing.assert_array_equal(leaf, [reference_leaf(x) for x in X])
    assert set(leaf.tolist()) == {0, 1, 2, 3}


def test_routing_is_row_by_row():
    """A row's projection, and so its leaf, does not depend on the other rows of its block."""
    X = np.random.default_rng(1).normal(size=(300, 3)).astype(np.float32)
    whole = route(np, X, hand_tree())
    np.testing.assert_array_equal(np.concatenate([route(np, X[i : i + 7], hand_tree()) for i in range(0, 300, 7)]),
                                  whole)


@pytest.mark.parametrize("seed", seeds(3))
@pytest.mark.parametrize("temperature", [0.05, 1.0, 20.0])
def test_soft_probabilities_match_formula(seed, temperature):
    X = np.random.default_rng(seed).normal(size=(200, 3)).astype(np.float32)
    P = path_probabilities(np, X, hand_tree(), temperature)
    expected = np.array([reference_probabilities(x, temperature) for x in X])
    # both in float64 from the same float32 inputs: agreement to float64 rounding of a few logs and exps
    np.testing.assert_allclose(P, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-14)


def test_low_temperature_tends_to_hard_routing():
    X = np.random.default_rng(2).normal(size=(200, 3)).astype(np.float32)
    tree = hand_tree()
    P = path_probabilities(np, X, tree, 1e-6)
    margin = np.min(np.abs(X[:, 0]))  # rows are far from the thresholds compared with the temperature
    assert margin > 1e-4
    np.testing.assert_array_equal(np.argmax(P, axis=1), route(np, X, tree))


def test_single_leaf_tree():
    X = np.ones((4, 2), dtype=np.float32)
    tree = Tree.single_leaf(2)
    assert tree.n_leaves == 1 and tree.paths() == [[]]
    np.testing.assert_array_equal(route(np, X, tree), 0)
    np.testing.assert_array_equal(path_probabilities(np, X, tree, 1.0), 1.0)


def test_paths():
    assert hand_tree().paths() == [[(0, 0), (1, 0)], [(0, 0), (1, 1)], [(0, 1), (2, 0)], [(0, 1), (2, 1)]]


def test_project_per_row_skips_rows():
    X = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = project_per_row(np, X, np.array([1, -1, 0]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_array_equal(out, [1.0, np.nan, 4.0])


@pytest.mark.parametrize("change, message", [
    (dict(thresholds=np.zeros(2)), "inconsistent tree arrays"),
    (dict(children=np.array([[1, 2], [-1, -2], [-3, -3]])), "do not form a binary tree"),
    (dict(children=np.array([[1, 2], [-1, -2], [-3, 0]])), "do not form a binary tree"),
    (dict(children=np.array([[2, -1], [-2, -3], [1, -4]])), "no cycles"),
    (dict(scales=np.array([1.0, 0.0, 1.0])), "scales finite and > 0"),
    (dict(directions=np.full((3, 3), np.nan)), "must be finite"),
    (dict(children=np.zeros((3, 2))), "integers"),
])
def test_bad_tree_refused(change, message):
    tree = hand_tree()
    fields = dict(directions=tree.directions, thresholds=tree.thresholds, scales=tree.scales,
                  children=tree.children)
    with pytest.raises(ValueError, match=message):
        Tree(**{**fields, **change})


def test_bad_temperature_refused():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        path_probabilities(np, np.zeros((1, 3), np.float32), hand_tree(), 0.0)
