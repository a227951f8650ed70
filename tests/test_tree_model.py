"""The tree model's predictions: each row by its own leaf (hard) or a path-probability mixture (soft), NumPy and
dask, against the leaves' own predictors and the dense float64 reference."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import reference as ref
from rfm_dask.kernels import KernelSpec
from rfm_dask.model import KernelModel
from rfm_dask.targets import TargetScaling
from rfm_dask.tree.model import SOFT_MIN_WEIGHT, TreeModel, mixture_weights
from rfm_dask.tree.structure import Tree, path_probabilities, route
from test_tree_structure import hand_tree


def random_leaf(rng: np.random.Generator, d: int, c: int, kind: str) -> KernelModel:
    m = int(rng.integers(20, 40))
    A = rng.normal(size=(d, d))
    M = np.abs(np.diag(A)) + 0.1 if kind == "l1_laplace" else A @ A.T / d + 0.1 * np.eye(d)
    centres = rng.normal(size=(m, d)).astype(np.float32)
    return KernelModel(centres, rng.normal(size=(m, c)), M, KernelSpec(kind, float(rng.uniform(1, 3))),
                       centres.mean(axis=0).astype(np.float64),
                       TargetScaling(rng.normal(size=c), rng.uniform(0.5, 2, size=c)))


def tree_model(seed: int, c: int = 2, kind: str = "laplace", temperature: float | None = None) -> TreeModel:
    rng = np.random.default_rng(seed)
    return TreeModel(hand_tree(), [random_leaf(rng, 3, c, kind) for _ in range(4)], temperature)


def reference_leaf_predictions(model: TreeModel, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every leaf's dense float64 prediction at every row (n, L, c), and a float32 rounding bound of each (n, L, c)
    (six standard deviations of m independent kernel-entry roundings, as in test_estimators)."""
    F, bound = [], []
    for leaf in model.leaves:
        s = leaf.spec
        f = ref.predictor(X, leaf.centres, leaf.coef, leaf.feature_matrix, s.kind, s.bandwidth, s.exponent)
        E = ref.float32_kernel_error(X, leaf.centres, leaf.feature_matrix, s.kind, s.bandwidth, s.exponent,
                                     shift=leaf.shift)
        F.append(leaf.target.offset + leaf.target.scale * f)
        bound.append(leaf.target.scale * 6 * np.sqrt(E**2 @ leaf.coef**2) + 1e-12)
    return np.stack(F, axis=1), np.stack(bound, axis=1)


@pytest.mark.parametrize("kind", ["laplace", "gaussian", "l1_laplace"])
def test_hard_routing_evaluates_each_row_by_its_leaf(kind):
    model = tree_model(0, kind=kind)
    X = np.random.default_rng(1).normal(size=(600, 3)).astype(np.float32)
    pred = model.decision(X)
    leaf = route(np, X, model.tree)
    F, bound = reference_leaf_predictions(model, X)
    rows = np.arange(X.shape[0])
    assert np.all(np.abs(pred - F[rows, leaf]) <= bound[rows, leaf])
    for j, leaf_model in enumerate(model.leaves):
        mine = leaf == j
        assert mine.any()
        # the same rows, in the same order and one chunk, through the leaf's own predictor: bit for bit
        np.testing.assert_array_equal(pred[mine], leaf_model.decision(X[mine]))


@pytest.mark.parametrize("temperature", [0.05, 0.5, 5.0])
def test_soft_routing_mixes_leaves_by_path_probability(temperature):
    model = tree_model(2, temperature=temperature)
    X = np.random.default_rng(3).normal(size=(400, 3)).astype(np.float32)
    pred = model.decision(X)
    W = mixture_weights(path_probabilities(np, X, model.tree, temperature))
    F, bound = reference_leaf_predictions(model, X)
    expected = np.einsum("nl,nlc->nc", W, F)
    assert np.all(np.abs(pred - expected) <= np.einsum("nl,nlc->nc", W, bound) * (1 + 1e-9))
    # the mixture leaves out only leaves whose path probabilities are below SOFT_MIN_WEIGHT: the full mixture is
    # within that weight (times the spread of the leaves' predictions) of the truncated one
    P = path_probabilities(np, X, model.tree, temperature)
    full = np.einsum("nl,nlc->nc", P, F)
    spread = np.ptp(F, axis=1)
    assert np.all(np.abs(full - expected) <= model.tree.n_leaves * SOFT_MIN_WEIGHT * spread + bound.max(axis=1))


def test_mixture_weights():
    P = np.array([[0.5, 0.4995, 0.0005, 0.0], [0.25, 0.25, 0.25, 0.25], [1e-4, 1e-4, 2e-4, 1 - 4e-4]])
    W = mixture_weights(P)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_array_equal(W == 0, P < SOFT_MIN_WEIGHT)
    many = np.full((1, 2000), 1 / 2000)  # every leaf below the minimum weight: the largest ones are kept
    np.testing.assert_allclose(mixture_weights(many), many)


@pytest.mark.parametrize("temperature", [None, 0.5])
def test_dask_matches_numpy(client, temperature):
    model = tree_model(4, c=1, temperature=temperature)
    X = np.random.default_rng(5).normal(size=(900, 3)).astype(np.float32)
    lazy = model.decision_dask(da.from_array(X, chunks=(250, 3)))
    assert isinstance(lazy, da.Array) and lazy.shape == (900, 1)
    expected = np.concatenate([model.decision(X[s : s + 250]) for s in range(0, 900, 250)])
    np.testing.assert_array_equal(client.compute(lazy).result(), expected)


def test_single_leaf_tree_is_its_leaf():
    leaf = random_leaf(np.random.default_rng(6), 3, 2, "laplace")
    X = np.random.default_rng(7).normal(size=(100, 3)).astype(np.float32)
    np.testing.assert_array_equal(TreeModel(Tree.single_leaf(3), [leaf]).decision(X), leaf.decision(X))


def test_inconsistent_tree_model_refused():
    model = tree_model(8)
    with pytest.raises(ValueError, match="needs as many leaf models"):
        TreeModel(model.tree, model.leaves[:3])
    with pytest.raises(ValueError, match="same outputs"):
        TreeModel(model.tree, model.leaves[:3] + [random_leaf(np.random.default_rng(9), 3, 1, "laplace")])
    with pytest.raises(ValueError, match="temperature"):
        TreeModel(model.tree, model.leaves, temperature=-1.0)
