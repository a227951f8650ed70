"""The estimators' parameters, declared once: their numpydoc (``PARAMETERS_DOC``, ``ATTRIBUTES_DOC``), their allowed
values (``PARAMETER_CONSTRAINTS``, scikit-learn's declarative validation) and the settings a fit derives from them.
The CLI's fit options are generated from the same declarations (``param_flags``)."""

from __future__ import annotations

import os
from numbers import Integral, Real
from typing import Any

import numpy as np
from distributed import Client
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints

from rfm_dask import config
from rfm_dask.core.kernel_spec import KERNELS, KernelSpec
from rfm_dask.core.metrics import CLASSIFICATION_SCORINGS, REGRESSION_SCORINGS
from rfm_dask.feature_update import FEATURE_UPDATES
from rfm_dask.options import SolverOptions
from rfm_dask.rfm_loop import RFMSettings
from rfm_dask.solvers.dispatch import SOLVERS
from rfm_dask.tree.settings import LEAF_INITS
from rfm_dask.tree.split import SPLIT_METHODS
from rfm_dask.tuning import UNTUNED_BANDWIDTH, UNTUNED_REG

# how a fit runs, not what it learned: never written to a model file, and ignored in one (a path there could make a
# later fit of the loaded model overwrite a file of the author's choosing)
RUN_PARAMS = frozenset({"client", "checkpoint", "resume"})

PARAMETERS_DOC = """
    Parameters
    ----------
    kernel : {"laplace", "gaussian", "l1_laplace"}, default="laplace"
        Laplace ``k = exp(-(r / L)^q)`` or Gaussian ``k = exp(-r^2 / (2 L^2))`` of the Mahalanobis distance
        ``r = ||x - z||_M``, or the product Laplace ``k = exp(-(sum_i s_i |x_i - z_i| / L)^q)`` with
        ``M = diag(s^2)`` (always a diagonal M).
    bandwidth : float or "auto", default="auto"
        The bandwidth L; "auto" chooses it at every iteration on the validation rows, over a grid relative to the
        median pairwise distance under the current M, keeping the untuned L = 10 unless another value scores better
        consistently (``rfm_dask.tuning``); without validation rows (``validation_fraction=0`` and no ``X_val``)
        "auto" is L = 10. The default since tuning beat the untuned L = 10, reg = 1e-3 on 7 of 7 real tables and
        LightGBM on 7 of 7 (README, "Python API", "Defaults"; BENCHMARKS.md, "Issue 13's measurement").
    exponent : float, default=1.0
        The Laplace exponent q, ``0 < q <= 2``.
    reg : float or "auto", default="auto"
        Ridge: every solver solves ``(K + reg I) alpha = y`` on the scaled targets; "auto" chooses it at every
        iteration on the validation rows over a fixed grid, keeping the untuned 1e-3 unless another value scores
        better consistently; without validation rows "auto" is 1e-3. Chosen values: ``bandwidth_``, ``reg_`` and
        every iteration's in ``history_``.
    iters : int, default=5
        RFM iterations (feature updates); 0 fits the lazy kernel only (iteration 0, ``M = I``).
    diag : bool, default=False
        Learn a diagonal M (d values) instead of a full (d, d) one.
    agop_power : float, default=1.0
        M is the AGOP to this power (1 or 1/2).
    centre_agop : bool or "auto", default="auto"
        Centre the gradients before their outer products (AGOP only). "auto" centres them only if the first,
        uncentred update scores below the lazy kernel (iteration 0) on the validation rows: iteration 1 is then
        solved again under the centred AGOP, as are all later updates (``centred_agop`` in ``history_``).
    feature_update : {"agop", "fact"}, default="agop"
        The average gradient outer product, or the Features at Convergence Theorem matrix F with
        ``M = (F F^T)^(1/2)``.
    solver : {"auto", "direct", "cg", "nystrom"}, default="auto"
        Dense Cholesky on one worker, exact-kernel conjugate gradient, or FALKON with ``n_centers`` centres;
        ``auto`` picks ``direct`` for small n and ``nystrom`` above (thresholds in ``rfm.yaml``).
    tol : float, default=1e-6
        Relative residual at which CG stops.
    validation_fraction : float, default=0.1
        Share of the rows split off (seeded) to pick the best iteration when no ``X_val`` is given.
    scoring : {"accuracy", "balanced_accuracy", "roc_auc", "log_loss", "mse", "r2", "mae"} or None, default=None
        The validation metric that picks the best iteration, bandwidth/reg="auto" and each tree leaf's iteration
        (ties: the lower MSE), recorded as ``val_<scoring>`` in ``history_``. A classifier takes "accuracy" (None),
        "balanced_accuracy", "roc_auc" (one-vs-rest macro average for more than two classes), "log_loss" (of the
        probabilities calibrated on the validation rows) or "mse"; a regressor "mse" (None), "r2" (averaged over
        outputs: for one output it ranks iterations as "mse" does) or "mae".
    patience : int or None, default=2
        Stop after this many iterations without improvement; None runs all ``iters``.
    agop_samples : int or None, default=None
        Rows sampled for the feature update (None: the ``rfm.agop-sample`` setting).
    n_centers : int or None, default=None
        Nystrom centres m (None: the ``rfm.nystrom-centres`` setting).
    random_state : int or None, default=None
        Seed of the validation split, the AGOP sample and the centres (and of a tree's split samples and leaves).
    leaf_size : int, "auto" or None, default="auto"
        None: one global RFM. An int: a tree of leaf RFMs (xRFM, ``rfm_dask.tree``), whose nodes with more training
        rows than this are split, each leaf an exact RFM on at most this many rows fitted in one task (validated on
        the validation rows routed to it). "auto": what the measurements show wins, today the global RFM (with the
        bandwidth and ridge tuned, the default, it was at or above the tree on every real table measured; README,
        "Tree of leaf RFMs").
    split_samples : int, default=2000
        Rows of a node sampled (seeded) to fit its split model.
    split_method : {"agop", "pca"}, default="agop"
        A node's split direction: the top eigenvector of the AGOP of a one-iteration RFM on its sampled rows, or
        their top principal component. The threshold is the median of the node's projections.
    split_temperature : float or None, default=None
        None: every row is predicted by the leaf it is routed to. A float T > 0: soft routing, a mixture of the
        leaves by path probability, sigmoid((v.x - t) / (T * IQR)) per split (xRFM's rule).
    leaf_init : {"identity", "parent"}, default="identity"
        A leaf's RFM starts from M = I, or from the M of its parent's split model (``split_method="agop"`` only).
    checkpoint : path or None, default=None
        File to save the fit's state to after every iteration.
    resume : bool, default=False
        Continue from ``checkpoint`` when it holds the state of the same fit.
    client : distributed.Client or None, default=None
        The cluster to run on; None: the default client, or an in-process local cluster.
"""
ATTRIBUTES_DOC = """
    Attributes
    ----------
    feature_matrix_ : ndarray of shape (d, d), or (d,) when ``diag``
        The learned M of the kept iteration, scaled so that its largest entry is 1.
    feature_importances_ : ndarray of shape (d,)
        The diagonal of M divided by its sum.
    best_iter_ : int
        The iteration kept (0 = lazy kernel). For a tree, the scalar attributes ``best_iter_``, ``bandwidth_``,
        ``reg_`` and ``history_`` are those of its largest leaf; ``leaf_best_iters_``, ``leaf_bandwidths_``,
        ``leaf_regs_`` and ``leaf_histories_`` hold every leaf's.
    bandwidth_ : float
        The bandwidth of the kept iteration (the parameter, or the tuned value).
    reg_ : float
        The ridge of the kept iteration (the parameter, or the tuned value).
    history_ : list of dict
        One record per solve, in order: iteration, bandwidth, ridge, validation metrics, solver, CG iterations,
        residual, seconds; with ``centre_agop="auto"`` also ``centred_agop``, and iteration 1 twice where it was
        solved again centred; ``sampled_choice_kept`` in iteration 0's where a search on sampled rows was checked
        on the fit (False: the fit is untuned from there on).
    n_features_in_ : int
        The number of input features d.
    n_leaves_ : int
        The leaves of the tree (1: the global model).
    tree_ : rfm_dask.tree.structure.Tree
        The split directions (k, d), thresholds (k,), soft-routing scales (k,) and children (k, 2) of the tree
        (no split for the global model).
    leaf_sizes_ : ndarray of shape (n_leaves,)
        A tree's training rows per leaf (trees only, as the other ``leaf_*`` attributes).
    leaf_feature_matrices_ : ndarray of shape (n_leaves, d, d), or (n_leaves, d) when ``diag``
        Each leaf's M; ``feature_matrix_`` is their mean weighted by ``leaf_sizes_``, and ``feature_importances_``
        the weighted mean of their importances (``leaf_feature_importances_``).
    preprocessing_ : dict
        Only when fitted on an ingested store (``rfm_dask.app.workflows.fit_store``): its recorded preprocessing, with which
        ``predict`` reads a pandas DataFrame of raw columns (see ``rfm_dask.io.TableEncoder``).
    solver_options_ : dict or None
        The solver settings (``rfm.*`` in dask.config, see ``rfm_dask.options.SolverOptions``) the fit ran with;
        saved in the model file. None for a model loaded from a file written before they were recorded.
"""


class Range(Interval):
    """scikit-learn's ``Interval`` constraint, except that a bool is no number (``reg=True`` is refused, not 1.0).

    NaN is outside every range, and an open end at infinity excludes infinity (see ``Interval.__contains__``).
    """

    def is_satisfied_by(self, val: Any) -> bool:
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)



#: Allowed values of every constructor parameter, checked before a fit and on ``load`` (a list of alternatives per
#: parameter, None meaning None itself).
PARAMETER_CONSTRAINTS: dict = {
    "kernel": [StrOptions(set(KERNELS))],
    "bandwidth": [Range(Real, 0, None, closed="neither"), StrOptions({"auto"})],
    "exponent": [Range(Real, 0, 2, closed="right")],
    "reg": [Range(Real, 0, None, closed="left"), StrOptions({"auto"})],
    "iters": [Range(Integral, 0, None, closed="left")],
    "diag": ["boolean"],
    "agop_power": [Range(Real, 0, None, closed="neither")],
    "centre_agop": ["boolean", StrOptions({"auto"})],
    "feature_update": [StrOptions(set(FEATURE_UPDATES))],
    "solver": [StrOptions(set(SOLVERS))],
    "tol": [Range(Real, 0, 1, closed="neither")],
    "validation_fraction": [Range(Real, 0, 1, closed="left")],
    "scoring": [StrOptions(set(CLASSIFICATION_SCORINGS + REGRESSION_SCORINGS)), None],
    "patience": [Range(Integral, 0, None, closed="left"), None],
    "agop_samples": [Range(Integral, 1, None, closed="left"), None],
    "n_centers": [Range(Integral, 1, None, closed="left"), None],
    "random_state": [Range(Integral, 0, None, closed="left"), None],
    "leaf_size": [Range(Integral, 2, None, closed="left"), StrOptions({"auto"}), None],
    "split_samples": [Range(Integral, 2, None, closed="left")],
    "split_method": [StrOptions(set(SPLIT_METHODS))],
    "split_temperature": [Range(Real, 0, None, closed="neither"), None],
    "leaf_init": [StrOptions(set(LEAF_INITS))],
    "checkpoint": [str, os.PathLike, None],
    "resume": ["boolean"],
    "client": [Client, None],
}


def is_auto(value: Any) -> bool:
    """Whether a parameter value is the string "auto"."""
    return isinstance(value, str) and value == "auto"


def rfm_settings(est: Any) -> RFMSettings:
    """The settings of a fit from an estimator's validated parameters. None for agop_samples and n_centers means the
    ``rfm.agop-sample`` and ``rfm.nystrom-centres`` defaults, which are held to the same constraints; the solver
    options are read from dask.config here, once, on the client."""
    samples = est.agop_samples if est.agop_samples is not None else config.get("agop-sample")
    centres = est.n_centers if est.n_centers is not None else config.get("nystrom-centres")
    validate_parameter_constraints(
        {key: PARAMETER_CONSTRAINTS[key][:1] for key in ("agop_samples", "n_centers")},
        {"agop_samples": samples, "n_centers": centres},
        caller_name=f"{type(est).__name__} (with the rfm config's defaults)",
    )
    tune_bandwidth, tune_reg = is_auto(est.bandwidth), is_auto(est.reg)
    options = SolverOptions.from_config()
    return RFMSettings(
        # a tuned bandwidth or reg is chosen per iteration (see ``tuning``), starting from the untuned value
        spec=KernelSpec(est.kernel, UNTUNED_BANDWIDTH if tune_bandwidth else float(est.bandwidth),
                        float(est.exponent), options.gpu_fused, options.gpu_precision),
        reg=UNTUNED_REG if tune_reg else float(est.reg),
        iters=int(est.iters),
        diag=bool(est.diag) or est.kernel == "l1_laplace",  # the L1 kernel is defined for a diagonal M
        agop_power=float(est.agop_power),
        centre_agop=est.centre_agop if is_auto(est.centre_agop) else bool(est.centre_agop),
        solver=est.solver,
        tol=float(est.tol),
        agop_samples=int(samples),
        patience=est.patience,
        n_centers=int(centres),
        feature_update=est.feature_update,
        tune_bandwidth=tune_bandwidth,
        tune_reg=tune_reg,
        scoring=est.scoring,
        options=options,
    )
