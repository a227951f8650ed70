"""Checkpoints of a tree's fit: the grown tree, each leaf's rows, and every finished leaf's predictor, written
atomically after the tree is grown and after each leaf, so a killed fit resumes with its finished leaves kept.

The file is a ``rfm_dask.files.checkpoint`` archive (see ``rfm_dask.files.checkpoint``: arrays + JSON, no pickle, a fingerprint
of the fit). A finished leaf is stored without its centres: they are its training rows (or their distinct rows, where the
leaf solved on those, see ``local.fit_local``), fetched again on resume.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from rfm_dask.core.kernel_spec import KernelSpec
from rfm_dask.files.checkpoint import save_checkpoint
from rfm_dask.rfm_loop import FitResult
from rfm_dask.tree.structure import Tree


def save_tree_checkpoint(
    path: str | os.PathLike, key: str, seed: int, tree: Tree, heaps: list[int], leaf_of_row: np.ndarray,
    parent_Ms: list[np.ndarray | None], done: dict[int, FitResult],
) -> None:
    """Write the state of a tree's fit: its node seed, the tree, the leaves' heap positions (L,), each training
    row's leaf (n,), the leaves' parent M (or None) and the finished leaves' results (``done``, by leaf index)."""
    state = {"seed": str(seed), "heaps": [int(h) for h in heaps],
             "done": {str(j): {"best_iter": r.best_iter, "bandwidth": r.spec.bandwidth, "reg": r.reg,
                               "history": r.history} for j, r in done.items()}}
    arrays = {"tree_directions": tree.directions, "tree_thresholds": tree.thresholds, "tree_scales": tree.scales,
              "tree_children": tree.children, "leaf_of_row": leaf_of_row}
    arrays.update({f"parent_M{j}": M for j, M in enumerate(parent_Ms) if M is not None})
    for j, r in done.items():
        arrays.update({f"leaf{j}_coef": r.coef, f"leaf{j}_feature_matrix": r.feature_matrix, f"leaf{j}_shift": r.shift})
    save_checkpoint(path, key, state, arrays)


def restore_tree_checkpoint(
    state: dict, arrays: dict[str, np.ndarray], spec: KernelSpec
) -> tuple[int, Tree, list[int], np.ndarray, list[np.ndarray | None], dict[int, FitResult]]:
    """What ``save_tree_checkpoint`` wrote: (seed, tree, heaps, leaf_of_row, parent Ms, finished leaves' results
    without centres, their kernels ``spec`` with the saved bandwidths)."""
    tree = Tree(arrays["tree_directions"], arrays["tree_thresholds"], arrays["tree_scales"], arrays["tree_children"])
    heaps = [int(h) for h in state["heaps"]]
    parent_Ms = [arrays.get(f"parent_M{j}") for j in range(len(heaps))]
    done = {
        int(j): FitResult(arrays[f"leaf{j}_feature_matrix"], arrays[f"leaf{j}_coef"], arrays[f"leaf{j}_shift"],
                          int(r["best_iter"]), replace(spec, bandwidth=float(r["bandwidth"])),
                          float(r["reg"]), None, list(r["history"]))
        for j, r in state["done"].items()
    }
    return int(state["seed"]), tree, heaps, arrays["leaf_of_row"], parent_Ms, done
