"""The RFM loop: solve KRR, score on validation rows, update M (AGOP or FACT), keep the best iteration."""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from rfm_dask.core.duplicates import Duplicates
from rfm_dask.core.feature_matrix import matrix_sqrt
from rfm_dask.core.kernel_spec import KernelSpec
from rfm_dask.core.metrics import regression_metrics, validation_quality
from rfm_dask.core.targets import TargetScaling
from rfm_dask.feature_update import checked_initial_M, next_feature_matrix
from rfm_dask.files.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from rfm_dask.kernel_operator import Engine, Rows
from rfm_dask.options import SolverOptions
from rfm_dask.solvers.dispatch import check_weights_supported, choose_solver, solve_krr
from rfm_dask.tables import format_cell
from rfm_dask.tuning import CONSISTENCY_FOLDS, consistent_gain, search_hyperparameters

logger = logging.getLogger("rfm_dask")

#: Validation metrics of predictions (n, c) against targets (n, c) for a ``scoring`` (None: the task's default), as
#: ``core.metrics.classification_metrics`` and ``regression_metrics``.
Metrics = Callable[[np.ndarray, np.ndarray, "str | None"], dict]


@dataclass(frozen=True)
class RFMSettings:
    """Hyperparameters of one RFM fit (the estimator's parameters, validated).

    With ``tune_bandwidth`` (``tune_reg``) each iteration chooses the bandwidth (ridge) on the validation rows (see
    ``tuning``); the bandwidth of ``spec`` (``reg``) is then the untuned value: the candidate kept unless another
    one gains consistently, and the value used when there are no validation rows (see ``untuned``). ``scoring``:
    the validation metric that ranks iterations and tuning candidates (``core.metrics.validation_quality``; None:
    accuracy for a classifier, MSE for a regressor). ``centre_agop``: True, False or "auto" (see ``run_rfm``).
    ``options``: how the solves run, read from dask.config when the
    settings are made (on the client), so a loop running in a worker task uses the client's values.
    """

    spec: KernelSpec
    reg: float = 1e-3
    iters: int = 5
    diag: bool = False
    agop_power: float = 1.0
    centre_agop: bool | str = False
    solver: str = "auto"
    tol: float = 1e-6
    agop_samples: int = 20000
    patience: int | None = 2
    n_centers: int = 2000
    feature_update: str = "agop"
    tune_bandwidth: bool = False
    tune_reg: bool = False
    scoring: str | None = None
    options: SolverOptions = field(default_factory=SolverOptions.from_config)


#: Training rows with duplicates are solved as weighted distinct rows (``core.duplicates``) where at most this share
#: of them is distinct: a tenth fewer rows saves 27% of an exact solve's O(n^3), more than collapsing them costs.
COLLAPSE_BELOW = 0.9


def collapsible_duplicates(X: np.ndarray, settings: RFMSettings, worker_memory: int = 0) -> Duplicates | None:
    """The duplicates of the training rows X (n, d), NumPy, where ``run_rfm`` is to solve on their distinct rows
    (its ``duplicates``), else None. Where:

    - at most ``COLLAPSE_BELOW`` of the rows are distinct;
    - the solver chosen for the m distinct rows is exact (not nystrom, which takes no weights), and costs no more
      than the one the n rows would get: exact as well, or, where the n rows would get nystrom, m at most its
      ``n_centers`` (an exact solve on CPS1988's 5 601 distinct rows of 19 004 took longer than Nystrom's 2 000
      centres, at the same test R^2; BENCHMARKS.md, "Duplicate rows");
    - for FACT, every row is sampled for the feature update.

    ``worker_memory``: as for ``solvers.dispatch.choose_solver``.
    """
    n = X.shape[0]
    if settings.feature_update == "fact" and n > settings.agop_samples:
        return None
    duplicates = Duplicates.of(X)
    m = duplicates.n_distinct
    if m > COLLAPSE_BELOW * n or choose_solver(settings.solver, m, settings.options, worker_memory) == "nystrom":
        return None
    if choose_solver(settings.solver, n, settings.options, worker_memory) == "nystrom" and m > settings.n_centers:
        return None
    return duplicates


def untuned(settings: RFMSettings) -> RFMSettings:
    """``settings`` without the choices made on validation rows: the bandwidth and ridge they hold (for ``"auto"``,
    the untuned values ``tuning.UNTUNED_BANDWIDTH`` and ``tuning.UNTUNED_REG``, see ``parameters.rfm_settings``), and
    ``centre_agop="auto"`` as the uncentred AGOP it starts from. The one rule for a fit that has no validation rows
    to choose on, or too few (a tree leaf's, see ``tree.settings.LEAF_TUNE_MIN_ROWS``)."""
    centre = False if settings.centre_agop == "auto" else settings.centre_agop
    return replace(settings, tune_bandwidth=False, tune_reg=False, centre_agop=centre)


@dataclass
class FitResult:
    """Best iteration's feature matrix and coefficients on the centres, the shift (the training rows' mean, see
    ``kernels.transform``), its kernel and ridge (as chosen when tuned), the centres themselves (m, d), and the
    per-iteration history."""

    feature_matrix: np.ndarray
    coef: np.ndarray
    shift: np.ndarray
    best_iter: int
    spec: KernelSpec
    reg: float
    centres: np.ndarray | None = None
    history: list[dict] = field(default_factory=list)


def _checkpoint_state(
    next_iteration: int, M: np.ndarray, history: list[dict], best: FitResult, best_quality: tuple | None, stale: int,
    rng: np.random.Generator, centre_rows: np.ndarray | None, centred: bool, M_centred: np.ndarray | None,
    tune: bool,
) -> tuple[dict, dict]:
    """(JSON state, arrays) after an iteration: everything the loop needs to go on with ``next_iteration``."""
    state = {"next_iteration": next_iteration, "history": history, "best_iter": best.best_iter,
             "best_bandwidth": best.spec.bandwidth, "best_reg": best.reg,
             "best_quality": None if best_quality is None else list(best_quality), "stale": stale,
             "rng": rng.bit_generator.state, "centred": centred, "tune": tune}
    arrays = {"M": M, "best_M": best.feature_matrix, "best_coef": best.coef}
    for key, value in (("centre_rows", centre_rows), ("M_centred", M_centred)):
        if value is not None:
            arrays[key] = value
    return state, arrays


def run_rfm(
    engine: Engine,
    train: Rows,
    Y: np.ndarray,
    settings: RFMSettings,
    rng: np.random.Generator,
    val: Rows | None = None,
    Y_val: np.ndarray | None = None,
    metrics: Metrics = regression_metrics,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    scaling: TargetScaling | None = None,
    weights: np.ndarray | None = None,
    initial_M: np.ndarray | None = None,
    duplicates: Duplicates | None = None,
) -> FitResult:
    """Fit an RFM on the rows ``train`` with targets Y (n, c); select the best iteration on ``val`` if given.

    ``engine`` says where the rows live: ``cluster_engine.ClusterEngine`` (row blocks on Dask workers) or
    ``local.LocalEngine`` (arrays in this process, e.g. one leaf of a tree in a worker task); the loop is the same.

    The solves see the targets scaled by ``scaling`` (none if None); the validation metrics compare predictions
    mapped back to the targets' scale with Y_val (n_val, c), and the feature updates are those of that predictor.
    ``weights`` (n,): sample weights of the training rows, for the weighted ridge (K + reg W^-1) alpha = Y (direct
    and cg solvers only); the validation metrics and the rows sampled for the feature update are unweighted.

    ``duplicates``: ``train`` holds the distinct rows of n rows (``core.duplicates``), whose targets Y (n, c) and
    weights (n,) are given: the solves run on the distinct rows, weighted by the summed weights of their rows, with
    their rows' weighted mean targets, and the samples (feature update, bandwidth scale, tuning rows) are drawn
    from the n rows as without ``duplicates``, so the fit is that of the n rows (to rounding) at the cost of the
    distinct ones. Not with the nystrom solver.

    Iteration 0 uses M = I (the lazy kernel), or ``initial_M`` ((d, d), or (d,) with ``settings.diag``); iteration
    t > 0 uses the M learned from iteration t - 1's predictor: the AGOP of its gradients, or of their deviations from
    their mean with ``settings.centre_agop`` True. With "auto" the first update is uncentred, and if iteration 1
    scores below iteration 0 on the validation rows it is solved again under the centred AGOP (from the same
    gradients), which every later update takes too (without validation rows "auto" is uncentred); ``history``
    then holds both tries of iteration 1, each with its ``centred_agop``.

    Without validation rows the last iteration is kept, and a tuned bandwidth or ridge is not tuned: the values the
    settings hold are used (``untuned``). The centres are the training rows (direct, cg) or
    ``n_centers`` rows sampled once per fit (nystrom); the feature update (AGOP or FACT) is taken at a fresh seeded
    sample of training rows each iteration.

    With ``checkpoint`` (a file path) the loop's state is written there atomically after every iteration; with
    ``resume`` as well, a checkpoint of this same fit (settings, data, seed) continues from its last complete
    iteration and gives the model an uninterrupted fit gives.
    """
    if (settings.tune_bandwidth or settings.tune_reg) and val is None:
        logger.info("no validation rows: bandwidth=%s and reg=%s are used untuned", settings.spec.bandwidth,
                    settings.reg)
        settings = untuned(settings)
    d = train.n_features
    solver = choose_solver(settings.solver, train.n, settings.options, engine.worker_memory())
    n_rows = train.n if duplicates is None else duplicates.n_rows
    n_sample = min(n_rows, settings.agop_samples)
    if duplicates is None:
        shift = engine.column_means(train)
    else:  # the mean of all n rows (FACT depends on it): the distinct rows weighted by their counts
        shift = duplicates.counts @ engine.fetch_rows(train).astype(np.float64) / n_rows
    scaling = TargetScaling.identity(Y.shape[1]) if scaling is None else scaling
    Z = scaling.transform(Y)
    Z_solve, w_solve = (Z, weights) if duplicates is None else duplicates.collapse(np.arange(n_rows), Z, weights)[1:]
    check_weights_supported(solver, w_solve)
    key = None if checkpoint is None else fingerprint(
        settings, {"rng": rng.bit_generator.state, "n": n_rows},
        [Z, engine.rows_digest(train)] + ([] if val is None else [engine.rows_digest(val), Y_val])
        + ([] if weights is None else [weights]) + ([] if duplicates is None else [duplicates.inverse]))
    saved = load_checkpoint(checkpoint, key) if checkpoint is not None and resume else None
    M = np.ones(d) if settings.diag else np.eye(d)
    if initial_M is not None:
        M = checked_initial_M(initial_M, d, settings.diag)
    centre_rows = None
    if solver == "nystrom":
        centre_rows = np.sort(rng.choice(train.n, min(train.n, settings.n_centers), replace=False))
    best: FitResult | None = None
    best_quality: tuple | None = None
    history: list[dict] = []
    stale, first = 0, 0
    tune = settings.tune_bandwidth or settings.tune_reg
    auto_centre = settings.centre_agop == "auto" and settings.feature_update == "agop" and val is not None
    centred, M_centred = settings.centre_agop is True, None
    if saved is not None:
        state, arrays = saved
        M, history, stale, first = arrays["M"], state["history"], state["stale"], state["next_iteration"]
        centred, M_centred = state.get("centred", settings.centre_agop is True), arrays.get("M_centred")
        tune = state.get("tune", tune)
        best = FitResult(arrays["best_M"], arrays["best_coef"], shift, state["best_iter"],
                         replace(settings.spec, bandwidth=state["best_bandwidth"]), state["best_reg"])
        best_quality = None if state["best_quality"] is None else tuple(state["best_quality"])
        rng.bit_generator.state = state["rng"]
        centre_rows = arrays.get("centre_rows")
        logger.info("resuming from %s at iteration %d", checkpoint, first)
    centres = train if centre_rows is None else engine.take_rows(train, centre_rows)

    def validation_quality_of(F: np.ndarray) -> tuple:
        """``validation_quality`` of scaled predictions F (n_val, c) on the validation rows (tuning's score)."""
        return validation_quality(metrics(scaling.inverse(F), Y_val, settings.scoring), settings.scoring)

    t = first
    while t <= settings.iters:
        start = time.perf_counter()
        spec, reg, sol = settings.spec, settings.reg, None
        if tune:
            choice = search_hyperparameters(
                engine, train, Z, val, validation_quality_of, matrix_sqrt(M), shift, settings.spec, settings.reg,
                settings.tune_bandwidth, settings.tune_reg, solver, rng, weights, duplicates,
            )
            spec, reg, sol = choice.spec, choice.reg, choice.solution
        passes = engine.operator(centres, matrix_sqrt(M), shift, spec)
        sampled = sol is None and tune
        if sol is None:
            sol = solve_krr(passes, train, Z_solve, reg, solver, settings.tol, rng, settings.options, w_solve)
        F_val = None if val is None else passes.matvec(val, sol.coef)
        kept = None
        if sampled and t == 0 and (spec.bandwidth, reg) != (settings.spec.bandwidth, settings.reg):
            # the pair chosen on sampled rows is checked on the fit itself (both pairs solved on all the training
            # rows): where the untuned pair scores better by the search's rule (on all the validation rows and on
            # each of its interleaved parts), the fit is untuned from here on. The check's solve draws from a copy
            # of the generator, so where the choice is kept the fit is the one without the check.
            base = engine.operator(centres, matrix_sqrt(M), shift, settings.spec)
            base_sol = solve_krr(base, train, Z_solve, settings.reg, solver, settings.tol, copy.deepcopy(rng),
                                 settings.options, w_solve)
            F_base = base.matvec(val, base_sol.coef)
            kept = not consistent_gain(validation_quality_of, F_base, F_val, CONSISTENCY_FOLDS)
            if not kept:
                spec, reg, sol, passes, F_val, tune = settings.spec, settings.reg, base_sol, base, F_base, False
                logger.info("iteration 0: the bandwidth and ridge chosen on sampled rows scored below the untuned "
                            "pair on the fit; bandwidth=%s and reg=%s are used untuned", spec.bandwidth, reg)
        record = {"iteration": t, "bandwidth": spec.bandwidth, "reg": reg, "solver": sol.solver,
                  "cg_iterations": sol.iterations, "residual": sol.residual}
        if kept is not None:
            record["sampled_choice_kept"] = kept
        if auto_centre:
            record["centred_agop"] = centred
        if F_val is not None:
            record.update(metrics(scaling.inverse(F_val), Y_val, settings.scoring))
            quality = validation_quality(record, settings.scoring)
            improved = best_quality is None or quality > best_quality
        else:
            improved, quality = True, None
        # centre_agop="auto": the first (uncentred) feature update scored below iteration 0, so this iteration is
        # solved again under the centred AGOP of the same gradients, which every later update takes as well
        retry = not improved and M_centred is not None
        if improved:
            best, best_quality, stale = FitResult(M, sol.coef, shift, t, spec, reg), quality, 0
        elif not retry:
            stale += 1
        stop = not retry and (t == settings.iters or (settings.patience is not None and stale >= settings.patience))
        if retry:
            M, M_centred, centred = M_centred, None, True
        elif not stop:
            sample = np.arange(n_rows) if n_sample == n_rows else rng.choice(n_rows, n_sample, replace=False)
            centre = (centred, True) if auto_centre and t == 0 and not centred else (centred,)
            M, *alternative = next_feature_matrix(passes, train, Z, sol, np.sort(sample), settings.feature_update,
                                                  settings.diag, settings.agop_power, scaling.scale, duplicates, centre)
            M_centred = alternative[0] if alternative else None
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        fields = " ".join(f"{k}={format_cell(v)}" for k, v in record.items() if k != "iteration")
        logger.info("iteration %d: %s", t, fields, extra={"rfm_step": ("iteration", t, settings.iters)})
        if retry:
            logger.info("iteration %d: the uncentred AGOP scored below iteration 0; solving it again centred", t)
        if stop:
            break
        t += 0 if retry else 1
        if checkpoint is not None:
            save_checkpoint(checkpoint, key, *_checkpoint_state(t, M, history, best, best_quality, stale, rng,
                                                                 centre_rows, centred, M_centred, tune))
    assert best is not None
    best.history = history
    best.centres = engine.fetch_rows(centres)
    return best
