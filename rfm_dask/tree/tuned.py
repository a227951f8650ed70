"""A tuned tree (``bandwidth``/``reg="auto"``, DESIGN section 8), see ``tree.fit``: the (bandwidth, ridge) pair its
leaves start from, chosen once on many validation rows, and the choice between the tuned and the untuned tree on all
the validation rows. A leaf has few validation rows (about 150 in BENCHMARKS.md's 7-table measurement), too few to
tune on alone: leaves tuning on their own rows lost to the untuned tree on 2 of 7 tables there."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

import numpy as np
from distributed import Client

from rfm_dask.core.metrics import validation_quality
from rfm_dask.core.targets import TargetScaling
from rfm_dask.parallel.row_blocks import RowBlocks, take_rows
from rfm_dask.parallel.scheduling import scores_on_rows
from rfm_dask.rfm_loop import FitResult, Metrics, RFMSettings, untuned
from rfm_dask.tree.model import TreeModel
from rfm_dask.tree.settings import leaf_tunes
from rfm_dask.tuning import CONSISTENCY_FOLDS, consistent_gain

logger = logging.getLogger("rfm_dask")

#: Fits one RFM as a leaf is: (client, training rows, settings, generator, validation rows, the leaf's arguments
#: (Y, Y_val, metrics, scaling, weights, initial M)) -> its result.
FitLeaf = Callable[[Client, RowBlocks, RFMSettings, np.random.Generator, RowBlocks, tuple], FitResult]


def tree_pair(
    client: Client, train: RowBlocks, Y: np.ndarray, val: RowBlocks, Y_val: np.ndarray, settings: RFMSettings,
    leaf_size: int, rng: np.random.Generator, target_scaling: Callable[[np.ndarray, np.ndarray | None], TargetScaling],
    metrics: Metrics, weights: np.ndarray | None, fit_leaf: FitLeaf,
) -> RFMSettings:
    """The tuned leaves' settings: ``settings`` holding the (bandwidth, ridge) pair of the kept iteration of the tuned
    RFM fitted on a seeded sample of ``leaf_size`` training rows (Y (n, c), weights (n,) or None) and validated on a
    seeded sample of at most ``leaf_size`` rows of ``val`` (Y_val (n_val, c)), fitted by ``fit_leaf`` as a leaf is;
    ``rng`` draws both samples and seeds the fit. That pair is then every leaf's untuned candidate (see
    ``tree.settings.LEAF_TUNE_MIN_ROWS``). With ``centre_agop="auto"`` the same fit decides the centring too: the
    tuned leaves centre the AGOP if the M of that fit's kept iteration came from a centred update (its first,
    uncentred update scored below iteration 0, and a centred one then scored best)."""
    rows = np.sort(rng.choice(train.n, min(train.n, leaf_size), replace=False))
    rows_val = np.sort(rng.choice(val.n, min(val.n, leaf_size), replace=False))
    w = None if weights is None else weights[rows]
    fit_rows, val_rows = take_rows(client, train, rows), take_rows(client, val, rows_val)
    args = (Y[rows], Y_val[rows_val], metrics, target_scaling(Y[rows], w), w, None)
    result = fit_leaf(client, fit_rows, settings, rng, val_rows, args)
    centre = settings.centre_agop
    if centre == "auto":  # as the kept iteration: centred if its M came from a centred update
        kept = [record for record in result.history if record["iteration"] == result.best_iter][-1]
        centre = result.best_iter > 0 and kept.get("centred_agop", False)
    logger.info("tree: the leaves start from bandwidth %s and reg %s (centred AGOP: %s)", result.spec.bandwidth,
                result.reg, centre)
    return replace(settings, spec=replace(settings.spec, bandwidth=result.spec.bandwidth), reg=result.reg,
                   centre_agop=centre)


def leaf_variants(settings: RFMSettings, leaf_val_rows: list[int], pair: Callable[[], RFMSettings]) -> list[RFMSettings]:
    """The settings a tree's leaves are fitted with (each leaf once per entry): ``[settings]`` when they tune
    nothing; for a tuned tree ``[the tuned leaves' settings (pair(): see tree_pair), the untuned settings]``, or the
    untuned settings alone when the pair is the untuned one and no leaf has enough validation rows to tune
    (``leaf_val_rows``: each leaf's, see ``tree.settings.leaf_tunes``): that tuned tree is the untuned tree."""
    if not (settings.tune_bandwidth or settings.tune_reg):
        return [settings]
    tuned = pair()
    if untuned(tuned) == untuned(settings) and not any(leaf_tunes(n) for n in leaf_val_rows):
        return [untuned(settings)]
    return [tuned, untuned(settings)]


def keep_tuned(
    client: Client, tuned: TreeModel, untuned: TreeModel, val: RowBlocks, Y_val: np.ndarray, metrics: Metrics,
    scoring: str | None,
) -> bool:
    """Whether the tuned tree's predictions on the validation rows ``val`` (targets Y_val (n_val, c)) score better than
    the untuned tree's on all of them and on each of ``tuning.CONSISTENCY_FOLDS`` interleaved parts (the rule by which
    tuning replaces the untuned values, see ``tuning``): so the kept tree is at or above the untuned tree on the
    validation rows as a whole, whose noise a leaf's few validation rows cannot average out."""
    def score(F: np.ndarray) -> tuple:
        return validation_quality(metrics(F, Y_val, scoring), scoring)

    F_tuned, F_untuned = (scores_on_rows(client, model, val) for model in (tuned, untuned))
    keep = score(F_tuned) > score(F_untuned) and consistent_gain(score, F_tuned, F_untuned, CONSISTENCY_FOLDS)
    logger.info("tree: the %s leaves are kept (validation %s: tuned %s, untuned %s)", "tuned" if keep else "untuned",
                scoring or "score", score(F_tuned), score(F_untuned))
    return keep
