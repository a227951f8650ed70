"""The split structure of a tree of leaf RFMs, and the pure routing functions over an array namespace ``xp``.

A row x at split node i goes to the left child when ``v_i . x <= t_i`` and to the right child otherwise (xRFM's rule:
the threshold is the median of the node's projections, rows at the median go left). Soft routing (xRFM's gating)
sends x right with probability ``sigmoid((v_i . x - t_i) / (temperature * s_i))``, where ``s_i`` is the node's scale
(the inter-quartile range of its training projections), and a leaf's probability is the product along its path.

Projections are taken in float64 by an elementwise product and a row sum, so one row's projection does not depend on
the other rows of its block: the rows a fit sent left route left at predict time too, whatever the blocking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import to_host


@dataclass(frozen=True)
class Tree:
    """k split nodes of a binary tree with k + 1 leaves; node 0 is the root (k = 0: a single leaf, no split).

    directions : (k, d) float64, the split directions v_i (unit vectors, in input coordinates).
    thresholds : (k,) float64, the thresholds t_i (rows with ``v_i . x <= t_i`` go left).
    scales : (k,) float64 > 0, the soft-routing scale s_i of each node (the IQR of its training projections).
    children : (k, 2) int64, the left and right child of each node: an index >= 0 is a split node, a negative value
        ``-(j + 1)`` is leaf j. Every node but the root is the child of exactly one node, and the leaves are
        0 .. k, each reached once.
    """

    directions: np.ndarray
    thresholds: np.ndarray
    scales: np.ndarray
    children: np.ndarray

    def __post_init__(self) -> None:
        directions = np.asarray(self.directions, dtype=np.float64)
        thresholds, scales = (np.asarray(a, dtype=np.float64) for a in (self.thresholds, self.scales))
        children = np.asarray(self.children)
        k = thresholds.shape[0] if thresholds.ndim == 1 else -1
        if (directions.ndim != 2 or directions.shape[0] != k or scales.shape != (k,) or children.shape != (k, 2)
                or children.dtype.kind not in "iu"):
            raise ValueError(f"inconsistent tree arrays: directions {directions.shape}, thresholds "
                             f"{thresholds.shape}, scales {scales.shape}, children {children.shape} "
                             f"{children.dtype} (expected (k, d), (k,), (k,) and (k, 2) integers)")
        if not (np.all(np.isfinite(directions)) and np.all(np.isfinite(thresholds)) and np.all(scales > 0)
                and np.all(np.isfinite(scales))):
            raise ValueError("tree directions and thresholds must be finite and scales finite and > 0")
        children = children.astype(np.int64)
        reached = np.sort(children.ravel())
        expected = np.concatenate([-np.arange(k + 1, 0, -1), np.arange(1, k)])  # leaves -(k+1)..-1, nodes 1..k-1
        if k and not np.array_equal(reached, expected):
            raise ValueError(f"tree children {children.tolist()} do not form a binary tree of {k} split nodes "
                             f"rooted at node 0 with leaves 0 .. {k}")
        if k and np.any(children[children >= 0] <= np.nonzero(children >= 0)[0]):
            raise ValueError("every split node's children must come after it (no cycles)")
        for name, value in (("directions", directions), ("thresholds", thresholds), ("scales", scales),
                            ("children", children)):
            object.__setattr__(self, name, value)

    @classmethod
    def single_leaf(cls, d: int) -> "Tree":
        """The tree of no split over d features: every row goes to leaf 0."""
        return cls(np.zeros((0, d)), np.zeros(0), np.zeros(0), np.zeros((0, 2), dtype=np.int64))

    @property
    def n_splits(self) -> int:
        return int(self.thresholds.shape[0])

    @property
    def n_leaves(self) -> int:
        return self.n_splits + 1

    @property
    def n_features(self) -> int:
        return int(self.directions.shape[1])

    def paths(self) -> list[list[tuple[int, int]]]:
        """For each leaf j, the (node, side) pairs from the root to it (side 0 left, 1 right)."""
        paths: list[list[tuple[int, int]]] = [[] for _ in range(self.n_leaves)]
        stack: list[tuple[int, list[tuple[int, int]]]] = [(0, [])] if self.n_splits else []
        while stack:
            node, path = stack.pop()
            for side in (0, 1):
                child = int(self.children[node, side])
                if child < 0:
                    paths[-child - 1] = path + [(node, side)]
                else:
                    stack.append((child, path + [(node, side)]))
        return paths


def project(xp: Any, X: Any, direction: Any) -> Any:
    """Projections ``X . v`` (b,) float64 of rows X (b, d) on one direction v (d,), row by row (see the module)."""
    return xp.sum(X.astype(np.float64, copy=False) * direction, axis=1)


def project_per_row(xp: Any, X: Any, node: Any, directions: Any) -> Any:
    """Projection of each row of X (b, d) on the direction of its own node: ``directions[node[r]] . X[r]``, (b,)
    float64. ``node`` (b,) holds indices into ``directions`` (k, d), or -1 for rows to skip (their value is NaN)."""
    out = xp.full(X.shape[0], np.nan)
    for i in np.unique(to_host(node)).tolist():
        if i >= 0:
            rows = xp.nonzero(node == i)[0]
            out[rows] = project(xp, X[rows], directions[i])
    return out


def route(xp: Any, X: Any, tree: Tree) -> Any:
    """Hard routing: the leaf index (b,) int64 of each row of X (b, d)."""
    b = X.shape[0]
    if not tree.n_splits:
        return xp.zeros(b, dtype=np.int64)
    directions, children = xp.asarray(tree.directions), xp.asarray(tree.children)
    node = xp.zeros(b, dtype=np.int64)  # >= 0: the split node a row is at; < 0: the leaf -(j + 1) it reached
    while bool((node >= 0).any()):
        inner = xp.nonzero(node >= 0)[0]
        at = node[inner]
        projection = project_per_row(xp, X[inner], at, directions)
        right = (projection > xp.asarray(tree.thresholds)[at]).astype(np.int64)
        node[inner] = children[at, right]
    return -node - 1


def path_probabilities(xp: Any, X: Any, tree: Tree, temperature: float) -> Any:
    """Soft routing: each row's probability of reaching each leaf, (b, n_leaves) float64, rows summing to 1.

    At node i a row goes right with probability sigmoid(z_i), z_i = (v_i . x - t_i) / (temperature * s_i); a leaf's
    probability is the product of its path's branch probabilities (computed as a sum of log-sigmoids, normalised).
    """
    if not temperature > 0:
        raise ValueError(f"the routing temperature must be > 0, got {temperature!r}")
    b = X.shape[0]
    if not tree.n_splits:
        return xp.ones((b, 1))
    Z = (X.astype(np.float64, copy=False) @ xp.asarray(tree.directions).T - xp.asarray(tree.thresholds))
    Z = Z / (temperature * xp.asarray(tree.scales))
    log_p = xp.zeros((b, tree.n_leaves))
    for j, path in enumerate(tree.paths()):
        for node, side in path:
            # log sigmoid(+z) going right, log sigmoid(-z) going left: -log(1 + exp(-(+-z)))
            log_p[:, j] -= xp.logaddexp(0.0, Z[:, node] if side == 0 else -Z[:, node])
    P = xp.exp(log_p - log_p.max(axis=1, keepdims=True))
    return P / P.sum(axis=1, keepdims=True)
