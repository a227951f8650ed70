"""The worker tasks of a tree's fit (see ``tree.fit``): each materialises its row blocks (held or streamed) and
runs pure block functions or the local RFM loop on them, single-threaded BLAS so results do not depend on the
worker, and gives the memory it freed back to the operating system on return (``parallel.freed_memory``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from rfm_dask.core.backend import namespace_of, to_host
from rfm_dask.core.blas_threads import single_blas_thread
from rfm_dask.core.targets import TargetScaling
from rfm_dask.local import fit_local
from rfm_dask.parallel.freed_memory import releases_freed_memory
from rfm_dask.parallel.row_blocks import materialise
from rfm_dask.rfm_loop import FitResult, Metrics, RFMSettings
from rfm_dask.tree.split import split_direction
from rfm_dask.tree.structure import Tree, project_per_row, route


def rows_of(blocks: tuple) -> Any:
    """The rows of consecutive row blocks (held or lazy) as one array (NumPy or CuPy)."""
    arrays = [materialise(b) for b in blocks]
    return namespace_of(arrays[0]).concatenate(arrays, axis=0)


@releases_freed_memory
@single_blas_thread
def split_task(
    method: str, settings: RFMSettings, Y: np.ndarray, weights: np.ndarray | None, scaling: TargetScaling,
    rng: np.random.Generator, *blocks: Any,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``split.split_direction`` on the sampled rows held in ``blocks``: (direction (d,), M or None)."""
    return split_direction(rows_of(blocks), Y, settings, rng, method, scaling, weights)


@releases_freed_memory
@single_blas_thread
def project_task(block: Any, node: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Each row's projection on its node's direction (see ``structure.project_per_row``): (b,) float64."""
    X = materialise(block)
    xp = namespace_of(X)
    return to_host(project_per_row(xp, X, xp.asarray(node), xp.asarray(directions)))


@releases_freed_memory
def route_task(block: Any, tree: Tree) -> np.ndarray:
    """The leaf of each row of a block: (b,) int64."""
    X = materialise(block)
    return to_host(route(namespace_of(X), X, tree))


@releases_freed_memory
@single_blas_thread
def leaf_task(
    settings: RFMSettings, rng: np.random.Generator, Y: np.ndarray, Y_val: np.ndarray | None, metrics: Metrics,
    scaling: TargetScaling, weights: np.ndarray | None, initial_M: np.ndarray | None, n_train: int, *blocks: Any,
) -> FitResult:
    """One leaf's RFM in this task: ``fit_local`` on the first ``n_train`` blocks' rows, validated on the others'."""
    X_val = rows_of(blocks[n_train:]) if len(blocks) > n_train else None
    return fit_local(rows_of(blocks[:n_train]), Y, settings, rng, X_val, Y_val, metrics, scaling, weights,
                     initial_M)
