"""The worker tasks of a tree's fit (see ``tree.fit``): each materialises its row blocks (held or streamed) and
runs pure block functions or the local RFM loop on them, single-threaded BLAS so results do not depend on the
worker."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import namespace_of, to_host
from ..blas_threads import single_blas_thread
from ..local import fit_local
from ..row_blocks import materialise
from ..targets import TargetScaling
from ..training import FitResult, Metrics, RFMSettings
from .split import split_direction
from .structure import Tree, project_per_row, route


def rows_of(blocks: tuple) -> Any:
    """The rows of consecutive row blocks (held or lazy) as one array (NumPy or CuPy)."""
    arrays = [materialise(b) for b in blocks]
    return namespace_of(arrays[0]).concatenate(arrays, axis=0)


@single_blas_thread
def split_task(
    method: str, settings: RFMSettings, Y: np.ndarray, weights: np.ndarray | None, scaling: TargetScaling,
    rng: np.random.Generator, *blocks: Any,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``split.split_direction`` on the sampled rows held in ``blocks``: (direction (d,), M or None)."""
    return split_direction(rows_of(blocks), Y, settings, rng, method, scaling, weights)


@single_blas_thread
def project_task(block: Any, node: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Each row's projection on its node's direction (see ``structure.project_per_row``): (b,) float64."""
    X = materialise(block)
    xp = namespace_of(X)
    return to_host(project_per_row(xp, X, xp.asarray(node), xp.asarray(directions)))


def route_task(block: Any, tree: Tree) -> np.ndarray:
    """The leaf of each row of a block: (b,) int64."""
    X = materialise(block)
    return to_host(route(namespace_of(X), X, tree))


@single_blas_thread
def leaf_task(
    settings: RFMSettings, rng: np.random.Generator, Y: np.ndarray, Y_val: np.ndarray | None, metrics: Metrics,
    scaling: TargetScaling, weights: np.ndarray | None, initial_M: np.ndarray | None, n_train: int, *blocks: Any,
) -> FitResult:
    """One leaf's RFM in this task: ``fit_local`` on the first ``n_train`` blocks' rows, validated on the others'."""
    X_val = rows_of(blocks[n_train:]) if len(blocks) > n_train else None
    return fit_local(rows_of(blocks[:n_train]), Y, settings, rng, X_val, Y_val, metrics, scaling, weights,
                     initial_M)
