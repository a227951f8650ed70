"""``bandwidth="auto"`` and ``reg="auto"``: a grid search on the validation rows under the current feature matrix.

Grids (documented in the README, chosen from measurements on real tables):

- bandwidth: ``BANDWIDTH_FACTORS`` times a data-driven scale, the median pairwise distance ||x - z||_M of a seeded
  sample of ``rfm.tune.scale-rows`` (``SolverOptions.tune_scale_rows``) training rows under the current M;
- ridge: ``REG_GRID``, in the units of the scaled targets (see ``targets``) and of a kernel with k(x, x) = 1.

Cheap path: for each bandwidth, the exact kernel matrix on the search rows is computed once for every ridge value
(one Cholesky each: faster than one eigendecomposition for the grid's five values, see
``worker_tasks.ridge_path``), and one pass over the validation rows scores all of them. The search rows
are all training rows when the fit uses the direct solver on at most ``rfm.tune.rows`` rows (the chosen solution is
then the fit's solution); otherwise a seeded sample of ``rfm.tune.rows`` training rows, and the fit solves once with
the chosen values.

Never worse than not tuning: the untuned values (those the settings hold, see ``rfm_loop.RFMSettings``: for
``"auto"`` the estimators' untuned values ``UNTUNED_BANDWIDTH`` and ``UNTUNED_REG``, for a tree's leaf the pair the
tree chose, and the value given where only the other one is tuned) are always a candidate, and the search keeps them unless the
best candidate beats them on the whole validation set and on each of ``CONSISTENCY_FOLDS`` interleaved parts of it
(rows i, i + k, i + 2k, ...; each part scored with the untuned predictions on the other rows, through the same
``score``): a gain that is not consistent across the validation rows is taken as noise. The chosen pair therefore
scores at least as well as the untuned pair on the validation rows under the same M, both solved on the search rows
(which are the fit's solutions when the search runs on all training rows). Where the search ran on sampled rows,
``rfm_loop.run_rfm`` checks its choice at iteration 0 on the fit itself by the same rule, the other way round: if the
untuned pair, solved on all the training rows, scores better consistently, the fit is untuned from there on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from scipy.spatial.distance import pdist

from rfm_dask.core import kernels as kn
from rfm_dask.core.duplicates import Duplicates
from rfm_dask.kernel_operator import Engine, Rows
from rfm_dask.solvers.dispatch import Solution

#: bandwidth="auto": candidate L as multiples of the median pairwise distance under the current M.
BANDWIDTH_FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0)
#: The untuned values: the bandwidth and ridge "auto" starts from (a candidate, kept unless a consistent gain
#: replaces it, and the values used when there are no validation rows to tune on).
UNTUNED_BANDWIDTH, UNTUNED_REG = 10.0, 1e-3
#: reg="auto": candidate ridge values (targets scaled to unit variance, k(x, x) = 1); holds ``UNTUNED_REG``.
REG_GRID = (1e-4, UNTUNED_REG, 1e-2, 1e-1, 1.0)
#: A candidate replaces the untuned pair only if it also scores better on each of this many interleaved parts of
#: the validation rows.
CONSISTENCY_FOLDS = 3

#: Scores validation predictions (n_val, c), on the scaled targets' scale; larger is better.
Score = Callable[[np.ndarray], tuple]


@dataclass(frozen=True)
class Choice:
    """The chosen kernel (its bandwidth) and ridge, and the exact solution on all training rows when the search ran
    on them (else None: the fit solves once more with these values)."""

    spec: kn.KernelSpec
    reg: float
    solution: Solution | None


def median_distance(
    engine: Engine, rows: Rows, S: np.ndarray, shift: np.ndarray, rng: np.random.Generator, sample: int,
    duplicates: Duplicates | None = None,
) -> float:
    """Median of the pairwise distances ||x - z||_M = ||S (x - z)|| among ``sample`` seeded rows (float64); 1 when
    they are all equal. S is M^(1/2), (d, d) or (d,). With ``duplicates`` (``rows`` are the distinct rows of its
    n rows) the rows are drawn from the n rows, duplicates included."""
    n = rows.n if duplicates is None else duplicates.n_rows
    index = np.sort(rng.choice(n, min(n, sample), replace=False))
    if duplicates is not None:
        index = np.sort(duplicates.inverse[index])
    Xs = engine.fetch_rows(engine.take_rows(rows, index)).astype(np.float64)
    distances = pdist(kn.transform(np, Xs, S, shift))
    median = float(np.median(distances)) if distances.size else 0.0
    return median if median > 0 else 1.0


def consistent_gain(score: Score, F: np.ndarray, F_untuned: np.ndarray, folds: int) -> bool:
    """Whether the validation predictions F (n_val, c) score better than F_untuned on each of ``folds`` interleaved
    parts of the rows (part j: rows j, j + folds, ...), each part scored with F_untuned on the other rows."""
    for j in range(min(folds, F.shape[0])):
        mixed = F_untuned.copy()
        mixed[j::folds] = F[j::folds]
        if not score(mixed) > score(F_untuned):
            return False
    return True


def search_hyperparameters(
    engine: Engine,
    train: Rows,
    Z: np.ndarray,
    val: Rows,
    score: Score,
    S: np.ndarray,
    shift: np.ndarray,
    spec: kn.KernelSpec,
    reg: float,
    tune_bandwidth: bool,
    tune_reg: bool,
    solver: str,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
    duplicates: Duplicates | None = None,
) -> Choice:
    """The (bandwidth, reg) pair whose exact solution on the search rows scores best on ``val`` (ties: the first
    in grid order, smaller bandwidth, then smaller ridge), if it consistently beats the untuned pair (see the module
    docstring); else the untuned pair.

    Z (n, c): the scaled training targets; ``spec`` and ``reg``: the kernel and ridge, the untuned candidate;
    ``tune_bandwidth``: also search the bandwidths of ``BANDWIDTH_FACTORS``; ``tune_reg``: also search ``REG_GRID``;
    ``solver``: the fit's resolved solver; ``weights`` (n,): the training rows' sample weights (the search solves the
    weighted ridge on the search rows), or None. With ``duplicates`` (``train`` holds the distinct rows of its n
    rows, see ``rfm_loop.run_rfm``) Z and ``weights`` are those of the n rows: the search rows are drawn from the n
    rows and solved as their weighted distinct rows.
    """
    regs = (REG_GRID if reg in REG_GRID else REG_GRID + (reg,)) if tune_reg else (reg,)
    specs = [spec]
    if tune_bandwidth:
        scale = median_distance(engine, train, S, shift, rng, engine.options.tune_scale_rows, duplicates)
        specs += [replace(spec, bandwidth=factor * scale) for factor in BANDWIDTH_FACTORS]
    limit = engine.options.tune_rows
    n_rows = train.n if duplicates is None else duplicates.n_rows
    full = solver == "direct" and n_rows <= limit
    index = np.arange(n_rows) if full else np.sort(rng.choice(n_rows, min(n_rows, limit), replace=False))
    if duplicates is not None:
        distinct, Zs, ws = duplicates.collapse(index, Z, weights)
        rows = train if full else engine.take_rows(train, distinct)
    elif full:
        rows, Zs, ws = train, Z, weights
    else:
        rows, Zs, ws = engine.take_rows(train, index), Z[index], None if weights is None else weights[index]
    n, c = Zs.shape
    best: tuple | None = None
    base: tuple | None = None
    for candidate in specs:
        passes = engine.operator(rows, S, shift, candidate)
        alphas, residuals = passes.ridge_path(Zs, regs, ws)
        F = passes.matvec(val, alphas.transpose(1, 0, 2).reshape(n, len(regs) * c))
        for k, r in enumerate(regs):
            F_k = F[:, k * c : (k + 1) * c]
            entry = (score(F_k), candidate, r, alphas[k], residuals[k], F_k)
            if base is None and candidate is spec and r == reg:
                base = entry
            if best is None or entry[0] > best[0]:
                best = entry
    assert best is not None and base is not None
    if best is not base and not consistent_gain(score, best[5], base[5], CONSISTENCY_FOLDS):
        best = base
    _, chosen, r, alpha, residual, _ = best
    return Choice(chosen, float(r), Solution(alpha, "direct", 0, float(residual)) if full else None)
