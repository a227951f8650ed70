"""A fitted tree of leaf RFMs: each row is evaluated by the leaf it is routed to (hard routing), or by a mixture of
the leaves it may reach, weighted by path probability (soft routing), in-process (NumPy) or lazily over a dask
array."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from ..backend import like, namespace_of, to_host
from ..kernel_spec import KernelSpec
from ..model import KernelModel, _decision_block, in_row_chunks, map_row_blocks
from .structure import Tree, path_probabilities, route

#: Soft routing evaluates a leaf on a row only where the row's path probability to it is at least this (the row's
#: most probable leaf always); the kept probabilities are renormalised to sum to 1.
SOFT_MIN_WEIGHT = 1e-3


def mixture_weights(P: np.ndarray) -> np.ndarray:
    """Path probabilities P (b, L) with those below ``SOFT_MIN_WEIGHT`` (but each row's largest) set to 0, rows
    renormalised to sum to 1: (b, L) float64."""
    keep = P >= np.minimum(SOFT_MIN_WEIGHT, P.max(axis=1, keepdims=True))
    W = np.where(keep, P, 0.0)
    return W / W.sum(axis=1, keepdims=True)


def tree_decision_block(
    X: Any, tree: Tree, packs: list[dict], specs: list[KernelSpec], temperature: float | None, n_outputs: int
) -> np.ndarray:
    """The tree's predictions for one (b, d) block (NumPy or CuPy) on the targets' scale: (b, c) float64 on the host.

    Hard routing (``temperature`` None): every row is evaluated against its own leaf only. Soft: against each leaf
    whose ``mixture_weights`` entry is non-zero, the results mixed by those weights. ``packs`` and ``specs`` are the
    leaves' packed predictors (``KernelModel._packed``) and kernels.
    """
    xp = namespace_of(X)
    X = X.astype(np.float32, copy=False)
    out = np.zeros((X.shape[0], n_outputs))
    if temperature is None:
        leaf = to_host(route(xp, X, tree))
        for j in np.unique(leaf).tolist():
            rows = np.flatnonzero(leaf == j)
            out[rows] = _decision_block(X[like(xp, rows)], packs[j], specs[j])
        return out
    W = mixture_weights(to_host(path_probabilities(xp, X, tree, temperature)))
    for j in np.flatnonzero(W.any(axis=0)).tolist():
        rows = np.flatnonzero(W[:, j])
        out[rows] += W[rows, j, None] * _decision_block(X[like(xp, rows)], packs[j], specs[j])
    return out


def _tree_decision_block_of(X: Any, holder: np.ndarray) -> np.ndarray:
    """``tree_decision_block`` with its arguments held in a 0-d object array (see ``TreeModel.decision_dask``)."""
    return tree_decision_block(X, *holder.item())


@dataclass
class TreeModel:
    """A ``Tree`` of splits and its leaves' predictors (``tree.n_leaves`` ``KernelModel``s over the same d features
    and c outputs), with hard routing (``temperature`` None) or soft routing at that temperature."""

    tree: Tree
    leaves: list[KernelModel]
    temperature: float | None = None

    def __post_init__(self) -> None:
        d, c = self.tree.n_features, self.leaves[0].n_outputs if self.leaves else None
        if len(self.leaves) != self.tree.n_leaves or any(
            leaf.n_outputs != c or leaf.centres.shape[1] != d for leaf in self.leaves
        ):
            raise ValueError(f"a tree of {self.tree.n_leaves} leaves over {d} features needs as many leaf models, "
                             f"each with {d} features and the same outputs; got {len(self.leaves)} with shapes "
                             f"{[(leaf.centres.shape[1], leaf.n_outputs) for leaf in self.leaves]}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"the routing temperature must be None (hard routing) or > 0, got {self.temperature!r}")

    @property
    def n_outputs(self) -> int:
        return self.leaves[0].n_outputs

    @property
    def _arguments(self) -> tuple:
        """The arguments of ``tree_decision_block`` after the block."""
        return (self.tree, [leaf._packed for leaf in self.leaves], [leaf.spec for leaf in self.leaves],
                self.temperature, self.n_outputs)

    def decision(self, X: np.ndarray) -> np.ndarray:
        """The predictions for a NumPy (n, d) array, computed here in row chunks: (n, c) float64."""
        return in_row_chunks(tree_decision_block, X, self.n_outputs, *self._arguments)

    def decision_dask(self, X: da.Array) -> da.Array:
        """The predictions for a dask (n, d) array, lazily: (n, c) float64 with X's row chunks. The model enters the
        graph once (as in ``KernelModel.decision_dask``)."""
        return map_row_blocks(_tree_decision_block_of, X, self.n_outputs, self._arguments)
