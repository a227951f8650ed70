"""Fitting a tree of leaf RFMs on the cluster (DESIGN section 8): the orchestration of splits, routing and leaves.

Level by level, every node with more than ``leaf_size`` rows is split: its split model (``split.split_direction``)
runs as one task on a seeded sample of its rows, all the level's split models concurrently; then one pass over the
training row blocks returns, for each row, its projection on its node's direction (small vectors back), from which
the client takes each node's threshold (the median) and children. A node whose rows all project to one side stays a
leaf. Each leaf's rows (and the validation rows routed to it) are gathered into one task, which fits the leaf with
``local.fit_local`` (exact direct solve, on the worker's device), a bounded number in flight; a leaf too large for a
worker's memory is fitted on the distributed operator instead.

A tuned tree (``bandwidth``/``reg="auto"``) fits its leaves tuned and untuned and keeps the better (``tree.tuned``).

Every random draw is seeded from (the fit's seed, the node's position in the tree), never from the order in which
tasks finish, and every reduction is in row order on the client: the tree is the same on any number of workers.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import closing
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from distributed import Client

from rfm_dask.core.backend import identity
from rfm_dask.core.duplicates import Duplicates
from rfm_dask.core.metrics import regression_metrics
from rfm_dask.core.targets import TargetScaling
from rfm_dask.files.checkpoint import fingerprint, load_checkpoint
from rfm_dask.model import KernelModel
from rfm_dask.parallel.row_blocks import (
    RowBlocks, fetch_rows, materialise, take_rows, working_rows_budget,
)
from rfm_dask.parallel.scheduling import Submitter, rows_digest
from rfm_dask.rfm_loop import FitResult, Metrics, RFMSettings, untuned
from rfm_dask.solvers.dispatch import DIRECT_BYTES_PER_ENTRY
from rfm_dask.tree import tasks
from rfm_dask.tree.checkpoint import restore_tree_checkpoint, save_tree_checkpoint
from rfm_dask.tree.leaves import fit_in_order, fit_now, fits_one_worker, leaf_call
from rfm_dask.tree.model import TreeModel
from rfm_dask.tree.settings import TreeSettings, leaf_tunes
from rfm_dask.tree.split import threshold_and_scale
from rfm_dask.tree.store import rows_by_leaf, scratch_directory
from rfm_dask.tree.structure import Tree
from rfm_dask.tree.tuned import keep_tuned, leaf_variants, tree_pair

logger = logging.getLogger("rfm_dask")

#: Seed streams of ``_node_rng``: a node's split sample and split model, a leaf's fit, and the tree's tuning fit.
_SPLIT, _LEAF, _TUNE = 0, 1, 2


@dataclass
class TreeFit:
    """A fitted tree: its model, each leaf's training rows (L,) int64 and each leaf's ``FitResult`` (best iteration,
    kernel, ridge, history)."""

    model: TreeModel
    leaf_sizes: np.ndarray
    results: list[FitResult]


@dataclass
class _Node:
    """A node being grown: its heap position (root 1, children 2h and 2h + 1: its seed), its training rows (sorted
    global indices) and the M of its parent's split model (None at the root or without one)."""

    heap: int
    rows: np.ndarray
    parent_M: np.ndarray | None = None


def _node_rng(seed: int, stream: int, heap: int) -> np.random.Generator:
    """The generator of one node's draws: from the fit's seed, the stream (split or leaf) and the node's position."""
    return np.random.default_rng([seed, stream, heap])


def _route_rows(client: Client, rows: RowBlocks, tree: Tree) -> np.ndarray:
    """The leaf of every row of ``rows``: one task per block, (n,) int64 in row order. The tree (k directions of d
    float64) goes to the workers once, as a shared key: a task's arguments stay on its worker as long as its result
    does, so a copy per task would hold the tree once per block."""
    shared = client.submit(identity, tree, pure=False)
    calls = ((tasks.route_task, block, shared) for block in rows.futures)
    futures = list(Submitter(client).stream(calls, spread=rows.streamed, task_bytes=rows.streamed_block_bytes))
    return np.concatenate(client.gather(futures) or [np.zeros(0, dtype=np.int64)])


def _projections(client: Client, train: RowBlocks, splitting: list[_Node], directions: np.ndarray) -> np.ndarray:
    """One pass over the training blocks: each row's projection on the direction of its node among ``splitting``
    (NaN for rows of no such node), (n,) float64 in row order."""
    node = np.full(train.n, -1, dtype=np.int64)
    for i, item in enumerate(splitting):
        node[item.rows] = i
    shared = client.submit(identity, directions, pure=False)
    offsets = train.offsets
    calls = ((tasks.project_task, block, node[lo:hi], shared)
             for block, lo, hi in zip(train.futures, offsets[:-1], offsets[1:]) if np.any(node[lo:hi] >= 0))
    futures = list(Submitter(client).stream(calls, spread=train.streamed, task_bytes=train.streamed_block_bytes))
    out = np.full(train.n, np.nan)
    parts = iter(client.gather(futures))
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        if np.any(node[lo:hi] >= 0):
            out[lo:hi] = next(parts)
    return out


def _held_rows(client: Client, rows: RowBlocks) -> RowBlocks:
    """``rows`` held in worker memory: streamed blocks (selections of blocks on disk) are read once, a bounded
    number at a time; held blocks are returned as they are."""
    if not rows.streamed:
        return rows
    calls = ((materialise, block) for block in rows.futures)
    futures = list(Submitter(client).stream(calls, spread=True, task_bytes=rows.streamed_block_bytes))
    return RowBlocks(futures, rows.sizes, rows.n_features, rows.device)


def _split_models(
    client: Client, submitter: Submitter, train: RowBlocks, samples: list[np.ndarray], heads: list[tuple],
    sample_rows: int,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The split models of a batch of nodes: one read of their sampled rows ``samples`` (sorted global indices per
    node), then per node the task call ``heads[i]`` with the row blocks of ``samples[i]`` appended. The rows are
    released on return."""
    pool = np.unique(np.concatenate(samples))
    held = _held_rows(client, take_rows(client, train, pool))
    calls = [(*head, *take_rows(client, held, np.searchsorted(pool, sample)).futures)
             for head, sample in zip(heads, samples)]
    return client.gather(list(submitter.stream(calls, task_bytes=DIRECT_BYTES_PER_ENTRY * sample_rows**2)))


def _grow(
    client: Client, train: RowBlocks, Y: np.ndarray, settings: RFMSettings, tree_settings: TreeSettings, seed: int,
    target_scaling: Callable[[np.ndarray, np.ndarray | None], TargetScaling], weights: np.ndarray | None,
) -> tuple[Tree, list[_Node]]:
    """Split level by level until every node has at most ``leaf_size`` rows: (the tree, its leaves in leaf order)."""
    level, leaves = [_Node(1, np.arange(train.n))], []
    splits: list[tuple[int, np.ndarray, float, float]] = []  # (heap, direction, threshold, scale) in node order
    sample_rows = min(tree_settings.split_samples, train.n)
    submitter = Submitter(client)
    # the sampled rows of the nodes split together are held in worker memory twice (the batch's read and each split
    # task's selection of it), so they are read in batches of nodes within the working-rows budget: else a deep level
    # of a large table would hold min(n, nodes x split_samples) rows at once
    budget = working_rows_budget(client)
    sample_bytes = np.dtype(np.float32).itemsize * sample_rows * train.n_features
    nodes_per_read = max(1, int(budget // (2 * sample_bytes))) if budget else sys.maxsize
    while level:
        splitting = [node for node in level if node.rows.size > tree_settings.leaf_size]
        leaves += [node for node in level if node.rows.size <= tree_settings.leaf_size]
        if not splitting:
            break
        rngs = [_node_rng(seed, _SPLIT, node.heap) for node in splitting]
        samples = [np.sort(rng.choice(node.rows, min(sample_rows, node.rows.size), replace=False))
                   for rng, node in zip(rngs, splitting)]
        sample_weights = [None if weights is None else weights[sample] for sample in samples]
        heads = [(tasks.split_task, tree_settings.split_method, settings, Y[sample], w, target_scaling(Y[sample], w),
                  rng) for rng, sample, w in zip(rngs, samples, sample_weights)]
        models = []
        for start in range(0, len(splitting), nodes_per_read):
            batch = slice(start, start + nodes_per_read)
            models += _split_models(client, submitter, train, samples[batch], heads[batch], sample_rows)
        projections = _projections(client, train, splitting, np.stack([v for v, _ in models]))
        level = []
        for node, (direction, M) in zip(splitting, models):
            p = projections[node.rows]
            threshold, scale = threshold_and_scale(p)
            left, right = node.rows[p <= threshold], node.rows[p > threshold]
            if not (left.size and right.size):  # all rows project to one value: nothing to split on
                leaves.append(node)
                continue
            splits.append((node.heap, direction, threshold, scale))
            level += [_Node(2 * node.heap, left, M), _Node(2 * node.heap + 1, right, M)]
        logger.info("tree level: %d nodes split, %d leaves so far", len(level) // 2, len(leaves))
    return _tree_of(splits, [leaf.heap for leaf in leaves], train.n_features), leaves


def _tree_of(splits: list[tuple[int, np.ndarray, float, float]], leaf_heaps: list[int], d: int) -> Tree:
    """The ``Tree`` of split nodes (in creation order, so parents come first) and leaves (in ``leaf_heaps`` order),
    linked by their heap positions."""
    if not splits:
        return Tree.single_leaf(d)
    index = {heap: i for i, (heap, *_) in enumerate(splits)}
    index.update({heap: -(j + 1) for j, heap in enumerate(leaf_heaps)})
    children = np.array([[index[2 * heap], index[2 * heap + 1]] for heap, *_ in splits], dtype=np.int64)
    return Tree(np.stack([s[1] for s in splits]), np.array([s[2] for s in splits]),
                np.array([s[3] for s in splits]), children)


def fit_tree(
    client: Client,
    train: RowBlocks,
    Y: np.ndarray,
    settings: RFMSettings,
    tree_settings: TreeSettings,
    rng: np.random.Generator,
    target_scaling: Callable[[np.ndarray, np.ndarray | None], TargetScaling],
    val: RowBlocks | None = None,
    Y_val: np.ndarray | None = None,
    metrics: Metrics = regression_metrics,
    weights: np.ndarray | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
) -> TreeFit:
    """Grow a tree on row blocks ``train`` with targets Y (n, c) and fit an RFM in each leaf.

    Parameters
    ----------
    client : the cluster.
    train : RowBlocks of n rows (d features); Y : (n, c) float64 targets; weights : (n,) sample weights or None.
    settings : the leaves' RFM settings (a leaf fitted in one task uses the direct solver).
    tree_settings : leaf size, split samples and method, leaf initialisation and routing temperature.
    rng : the fit's generator; one seed is drawn from it, from which every node's draws are seeded.
    target_scaling : maps (Y (m, c), weights (m,) or None) of a node's or leaf's rows to its ``TargetScaling``.
    val, Y_val : validation rows and targets (n_val, c); each leaf picks its best iteration on those routed to it,
        and keeps its last iteration if none is. Tuned settings: see ``tree.tuned`` (without validation rows, the
        untuned tree).
    metrics : the validation metrics (see ``training.run_rfm``).
    checkpoint, resume : with ``checkpoint`` (a file path) the fit's state is written there atomically after the
        tree is grown and after each leaf (see ``tree.checkpoint``); with ``resume`` as well, a checkpoint of this
        same fit (settings, data, seed) continues with its finished leaves kept, and gives the model an
        uninterrupted fit gives.

    Returns
    -------
    TreeFit
    """
    key = None if checkpoint is None else fingerprint(
        settings, {"tree": asdict(tree_settings), "rng": rng.bit_generator.state, "n": train.n},
        [Y, rows_digest(client, train)] + ([] if val is None else [rows_digest(client, val), Y_val])
        + ([] if weights is None else [weights]))
    saved = load_checkpoint(checkpoint, key) if checkpoint is not None and resume else None
    seed = int(rng.integers(2**63))
    if saved is None:
        tree, leaves = _grow(client, train, Y, settings, tree_settings, seed, target_scaling, weights)
        done: dict[int, FitResult] = {}
    else:
        seed, tree, heaps, leaf_of_row, parent_Ms, done = restore_tree_checkpoint(*saved, settings.spec)
        leaves = [_Node(h, np.flatnonzero(leaf_of_row == j), M) for j, (h, M) in enumerate(zip(heaps, parent_Ms))]
        for k in done:  # a finished leaf's centres: its training rows, or their distinct rows (``local.fit_local``)
            rows = fetch_rows(client, take_rows(client, train, leaves[k % len(leaves)].rows))
            done[k].centres = rows if len(done[k].coef) == len(rows) else rows[Duplicates.of(rows).first]
        logger.info("resuming a tree from %s with %d of %d leaves fitted", checkpoint, len(done), len(leaves))

    def save(done: dict[int, FitResult]) -> None:
        if checkpoint is not None:
            leaf_of_row = np.zeros(train.n, dtype=np.int64)
            for j, leaf in enumerate(leaves):
                leaf_of_row[leaf.rows] = j
            save_tree_checkpoint(checkpoint, key, seed, tree, [leaf.heap for leaf in leaves], leaf_of_row,
                                 [leaf.parent_M for leaf in leaves], done)

    if saved is None:
        save(done)
    logger.info("tree: %d leaves of %s rows", tree.n_leaves, [leaf.rows.size for leaf in leaves])
    scalings = [target_scaling(Y[leaf.rows], None if weights is None else weights[leaf.rows]) for leaf in leaves]
    val_leaf = _route_rows(client, val, tree) if val is not None else None
    val_groups = {} if val_leaf is None else {j: np.flatnonzero(val_leaf == j) for j in range(len(leaves))}
    # a tuned tree may fit its L leaves twice, tuned (leaf j is k = j) and untuned (k = L + j), to keep the better tree
    variants = leaf_variants(settings if val is not None else untuned(settings), [g.size for g in val_groups.values()],
                             lambda: tree_pair(client, train, Y, val, Y_val, settings, tree_settings.leaf_size,
                                               _node_rng(seed, _TUNE, 1), target_scaling, metrics, weights, fit_now))
    todo = [k for k in range(len(variants) * len(leaves)) if k not in done]
    todo_leaves = sorted({k % len(leaves) for k in todo})
    with tempfile.TemporaryDirectory(dir=scratch_directory()) as directory:  # leaf-ordered stores of streamed rows
        leaf_train = rows_by_leaf(client, train, {j: leaves[j].rows for j in todo_leaves}, directory)
        leaf_val = {} if val is None else rows_by_leaf(client, val, val_groups, directory)
        logger.info("tree: the rows of %d leaves gathered", len(todo_leaves))
        calls, on_cluster = [], {}
        for k in todo:
            variant, j = divmod(k, len(leaves))
            leaf, rows_val = leaves[j], leaf_val.get(j)
            tuned_leaf = rows_val is not None and leaf_tunes(val_groups[j].size)
            leaf_settings = variants[variant] if tuned_leaf else untuned(variants[variant])
            args = (np.ascontiguousarray(Y[leaf.rows]), None if rows_val is None else Y_val[val_groups[j]], metrics,
                    scalings[j], None if weights is None else weights[leaf.rows],
                    leaf.parent_M if tree_settings.leaf_init == "parent" else None)
            rng_leaf = _node_rng(seed, _LEAF, leaf.heap)
            if fits_one_worker(client, leaf.rows.size):
                calls.append(leaf_call(leaf_train[j], leaf_settings, rng_leaf, rows_val, args))
            else:
                on_cluster[k] = (leaf_train[j], leaf_settings, rng_leaf, rows_val, args)
        largest = max((leaves[j].rows.size for j in todo_leaves), default=0)
        with closing(fit_in_order(client, todo, calls, on_cluster, DIRECT_BYTES_PER_ENTRY * largest**2)) as fitted:
            for k, result in fitted:
                twin = done.get(k - len(leaves) if k >= len(leaves) else k + len(leaves))
                if twin is not None:  # the same training rows: held once
                    result.centres = twin.centres
                done[k] = result
                save(done)
    fits = []
    for results in ([done[v * len(leaves) + j] for j in range(len(leaves))] for v in range(len(variants))):
        models = [KernelModel(r.centres, r.coef, r.feature_matrix, r.spec, r.shift, scaling)
                  for r, scaling in zip(results, scalings)]
        fits.append(TreeFit(TreeModel(tree, models, tree_settings.temperature),
                            np.array([leaf.rows.size for leaf in leaves], dtype=np.int64), results))
    tuned = len(fits) == 2 and keep_tuned(client, fits[0].model, fits[1].model, val, Y_val, metrics, settings.scoring)
    return fits[0] if len(fits) == 1 or tuned else fits[1]
