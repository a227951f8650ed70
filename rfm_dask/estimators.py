"""scikit-learn estimators RFMRegressor and RFMClassifier over NumPy, pandas and dask inputs."""

from __future__ import annotations

import os
from numbers import Integral, Real
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from distributed import Client
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from . import config
from .atomic import check_writable
from .cluster import resolve_client
from .cluster_engine import ClusterEngine
from .inputs import check_dask_features, check_finite_targets, is_dask, to_host_targets
from .io.transformer import TableEncoder, is_pandas_frame
from .kernel_spec import KERNELS, KernelSpec
from .krr import SOLVERS
from .model import KernelModel
from .model_file import ModelFileError, read_model_file, write_model_file
from .row_blocks import RowBlocks, block_rows, place_rows, put_rows, take_rows
from .targets import TargetScaling
from .training import FEATURE_UPDATES, FitResult, RFMSettings, classification_metrics, regression_metrics, run_rfm
from .tree.fit import TreeFit, fit_tree
from .tree.settings import LEAF_INITS, TreeSettings, check_leaf_init, resolve_leaf_size
from .tree.model import TreeModel
from .tree.split import SPLIT_METHODS
from .tree.structure import Tree


def _place(client: Client, X: Any) -> RowBlocks:
    """Put checked features on the cluster: dask arrays are persisted or streamed (see ``place_rows``), NumPy
    arrays persisted in row blocks (see ``put_rows``)."""
    if isinstance(X, da.Array):
        return place_rows(client, X)
    return put_rows(client, X, block_rows(X.shape[0], X.shape[1]))


def _validation_rows(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray | None:
    """Seeded random validation row indices (sorted), or None when there are too few rows to split."""
    n_val = int(fraction * n)
    if n_val < 1 or n - n_val < 2:
        return None
    return np.sort(rng.choice(n, n_val, replace=False))


# how a fit runs, not what it learned: never written to a model file, and ignored in one (a path there could make a
# later fit of the loaded model overwrite a file of the author's choosing)
_RUN_PARAMS = frozenset({"client", "checkpoint", "resume"})

_PARAMETERS_DOC = """
    Parameters
    ----------
    kernel : {"laplace", "gaussian", "l1_laplace"}, default="laplace"
        Laplace ``k = exp(-(r / L)^q)`` or Gaussian ``k = exp(-r^2 / (2 L^2))`` of the Mahalanobis distance
        ``r = ||x - z||_M``, or the product Laplace ``k = exp(-(sum_i s_i |x_i - z_i| / L)^q)`` with
        ``M = diag(s^2)`` (always a diagonal M).
    bandwidth : float or "auto", default=10.0
        The bandwidth L; "auto" chooses it at every iteration on the validation rows, over a grid relative to the
        median pairwise distance under the current M (``rfm_dask.tuning``).
    exponent : float, default=1.0
        The Laplace exponent q, ``0 < q <= 2``.
    reg : float or "auto", default=1e-3
        Ridge: every solver solves ``(K + reg I) alpha = y`` on the scaled targets; "auto" chooses it on the
        validation rows over a fixed grid.
    iters : int, default=5
        Updates of M; iteration 0 (``M = I``) is the lazy kernel.
    diag : bool, default=False
        Learn a diagonal M (d values) instead of a full (d, d) one.
    agop_power : float, default=1.0
        M is the AGOP to this power (1 or 1/2).
    centre_agop : bool, default=False
        Centre the gradients before their outer products.
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
    patience : int or None, default=2
        Stop after this many iterations without improvement; None runs all ``iters``.
    agop_samples : int or None, default=None
        Rows sampled for the AGOP (None: ``rfm.agop-sample``).
    n_centers : int or None, default=None
        Nystrom centres m (None: ``rfm.nystrom-centres``).
    random_state : int or None, default=None
        Seed of the validation split, the AGOP sample and the centres (and of a tree's split samples and leaves).
    leaf_size : int, "auto" or None, default=None
        None: one global RFM. An int: a tree of leaf RFMs (xRFM, ``rfm_dask.tree``), whose nodes with more training
        rows than this are split, each leaf an exact RFM on at most this many rows fitted in one task (validated on
        the validation rows routed to it). "auto": a tree of leaves of ``tree.settings.AUTO_LEAF_SIZE`` rows when there
        are at least ``tree.settings.AUTO_MIN_LEAVES`` times that many training rows, else the global RFM.
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
_ATTRIBUTES_DOC = """
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
        One record per iteration: validation metrics, solver, CG iterations, residual, seconds.
    n_features_in_ : int
        The number of input features d.
    n_leaves_ : int
        The leaves of the tree (1: the global model).
    tree_ : rfm_dask.tree.structure.Tree
        The split directions (k, d), thresholds (k,), soft-routing scales (k,) and children (k, 2) of the tree
        (no split for the global model).
    leaf_sizes_ : ndarray of shape (n_leaves_,)
        A tree's training rows per leaf (trees only, as the other ``leaf_*`` attributes).
    leaf_feature_matrices_ : ndarray of shape (n_leaves_, d, d), or (n_leaves_, d) when ``diag``
        Each leaf's M; ``feature_matrix_`` is their mean weighted by ``leaf_sizes_``, and ``feature_importances_``
        the weighted mean of their importances (``leaf_feature_importances_``).
    preprocessing_ : dict
        Only when fitted on an ingested store (``rfm_dask.jobs.fit_store``): its recorded preprocessing, with which
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


class _RFMBase(BaseEstimator):
    """Shared parameters, input handling and fitting of the RFM estimators."""

    #: Allowed values of every constructor parameter, checked by ``_settings`` before a fit and on ``load``
    #: (scikit-learn's declarative validation: a list of alternatives per parameter, None meaning None itself).
    _parameter_constraints: dict = {
        "kernel": [StrOptions(set(KERNELS))],
        "bandwidth": [Range(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "exponent": [Range(Real, 0, 2, closed="right")],
        "reg": [Range(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "iters": [Range(Integral, 0, None, closed="left")],
        "diag": ["boolean"],
        "agop_power": [Range(Real, 0, None, closed="neither")],
        "centre_agop": ["boolean"],
        "feature_update": [StrOptions(set(FEATURE_UPDATES))],
        "solver": [StrOptions(set(SOLVERS))],
        "tol": [Range(Real, 0, 1, closed="neither")],
        "validation_fraction": [Range(Real, 0, 1, closed="left")],
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

    def __init__(
        self,
        kernel: str = "laplace",
        bandwidth: float | str = 10.0,
        exponent: float = 1.0,
        reg: float | str = 1e-3,
        iters: int = 5,
        diag: bool = False,
        agop_power: float = 1.0,
        centre_agop: bool = False,
        feature_update: str = "agop",
        solver: str = "auto",
        tol: float = 1e-6,
        validation_fraction: float = 0.1,
        patience: int | None = 2,
        agop_samples: int | None = None,
        n_centers: int | None = None,
        random_state: int | None = None,
        leaf_size: int | str | None = None,
        split_samples: int = 2000,
        split_method: str = "agop",
        split_temperature: float | None = None,
        leaf_init: str = "identity",
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        client: Client | None = None,
    ) -> None:
        self.kernel = kernel
        self.bandwidth = bandwidth
        self.exponent = exponent
        self.reg = reg
        self.iters = iters
        self.diag = diag
        self.agop_power = agop_power
        self.centre_agop = centre_agop
        self.feature_update = feature_update
        self.solver = solver
        self.tol = tol
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.agop_samples = agop_samples
        self.n_centers = n_centers
        self.random_state = random_state
        self.leaf_size = leaf_size
        self.split_samples = split_samples
        self.split_method = split_method
        self.split_temperature = split_temperature
        self.leaf_init = leaf_init
        self.checkpoint = checkpoint
        self.resume = resume
        self.client = client

    # -- scikit-learn and pickling contract ---------------------------------------------------------------------
    def __sklearn_clone__(self):
        """Clone parameters as scikit-learn does, but share the client (a Client cannot be deep-copied)."""
        params = self.get_params(deep=False)
        client = params.pop("client")
        return type(self)(client=client, **{k: clone(v, safe=False) for k, v in params.items()})

    def __getstate__(self) -> dict:
        """Pickles never carry the client: it is replaced by None."""
        state = super().__getstate__()
        state["client"] = None
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags

    # -- fitting ------------------------------------------------------------------------------------------------
    def _settings(self) -> RFMSettings:
        """The validated settings (``_parameter_constraints``); None for agop_samples and n_centers means the
        ``rfm.agop-sample`` and ``rfm.nystrom-centres`` defaults, which are held to the same constraints."""
        self._validate_params()
        check_leaf_init(self.leaf_init, self.split_method)
        samples = self.agop_samples if self.agop_samples is not None else config.get("agop-sample")
        centres = self.n_centers if self.n_centers is not None else config.get("nystrom-centres")
        validate_parameter_constraints(
            {key: self._parameter_constraints[key][:1] for key in ("agop_samples", "n_centers")},
            {"agop_samples": samples, "n_centers": centres},
            caller_name=f"{type(self).__name__} (with the rfm config's defaults)",
        )
        tune_bandwidth, tune_reg = _is_auto(self.bandwidth), _is_auto(self.reg)
        return RFMSettings(
            # a tuned bandwidth or reg is chosen per iteration (see ``tuning``); the placeholders are not used
            spec=KernelSpec(self.kernel, 1.0 if tune_bandwidth else float(self.bandwidth), float(self.exponent)),
            reg=0.0 if tune_reg else float(self.reg),
            iters=int(self.iters),
            diag=bool(self.diag) or self.kernel == "l1_laplace",  # the L1 kernel is defined for a diagonal M
            agop_power=float(self.agop_power),
            centre_agop=bool(self.centre_agop),
            solver=self.solver,
            tol=float(self.tol),
            agop_samples=int(samples),
            patience=self.patience,
            n_centers=int(centres),
            feature_update=self.feature_update,
            tune_bandwidth=tune_bandwidth,
            tune_reg=tune_reg,
        )

    def _check_features(self, X: Any, reset: bool) -> Any:
        """Checked float32 features (n, d): a dask array stays lazy, anything else becomes NumPy.

        Feature names are recorded (``reset``) and checked as scikit-learn does for pandas: a dask DataFrame's
        columns are read from its empty ``_meta`` frame, without computing anything.
        """
        if is_dask(X):
            checked = check_dask_features(X, None if reset else self.n_features_in_)
            validate_data(self, checked if isinstance(X, da.Array) else X._meta, reset=reset, skip_check_array=True)
            return checked
        return validate_data(self, X, reset=reset, dtype=np.float32)

    def _check_xy(self, X: Any, y: Any, reset: bool) -> tuple[Any, np.ndarray]:
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if is_dask(X):
            X = self._check_features(X, reset)
            y = to_host_targets(y)
        else:
            X, y = validate_data(
                self, X, y, reset=reset, dtype=np.float32, multi_output=True, y_numeric=self._y_numeric
            )
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
        return X, y

    def _fit_targets(self, X: Any, y: Any, X_val: Any, y_val: Any, metrics, sample_weight: Any = None) -> None:
        """Shared fit: ``self._encode(y)`` maps targets to an (n, c) float64 matrix."""
        settings = self._settings()
        if self.checkpoint is not None:
            check_writable(self.checkpoint, "checkpoint")
        X, y = self._check_xy(X, y, reset=True)
        Y = self._encode(y, fitting=True)
        weights = None if sample_weight is None else _check_weights(sample_weight, Y.shape[0])
        rng = np.random.default_rng(self.random_state)
        if (X_val is None) != (y_val is None):
            raise ValueError("pass both X_val and y_val, or neither")
        if X_val is not None:
            X_val, y_val = self._check_xy(X_val, y_val, reset=False)
        client = resolve_client(self.client)
        train, val, Y_val = _place(client, X), None, None
        if X_val is not None:
            val, Y_val = _place(client, X_val), self._encode(y_val, fitting=False)
        elif (val_rows := _validation_rows(Y.shape[0], self.validation_fraction, rng)) is not None:
            is_val = np.zeros(Y.shape[0], dtype=bool)
            is_val[val_rows] = True
            train, val = take_rows(client, train, np.flatnonzero(~is_val)), take_rows(client, train, val_rows)
            Y, Y_val = Y[~is_val], Y[is_val]
            weights = None if weights is None else weights[~is_val]
        if weights is not None and not weights.sum() > 0:
            raise ValueError("sample_weight is zero on every training row")
        leaf_size = resolve_leaf_size(self.leaf_size, Y.shape[0])
        if leaf_size is not None:
            tree_settings = TreeSettings(leaf_size, int(self.split_samples), self.split_method, self.leaf_init,
                                         None if self.split_temperature is None else float(self.split_temperature))
            self._set_tree(fit_tree(client, train, Y, settings, tree_settings, rng, self._target_scaling, val, Y_val,
                                    metrics, weights, self.checkpoint, bool(self.resume)))
            self.solver_options_ = asdict(settings.options)
            return
        scaling = self._target_scaling(Y, weights)
        result = run_rfm(ClusterEngine(client, settings.options), train, Y, settings, rng, val, Y_val, metrics, self.checkpoint, bool(self.resume),
                         scaling, weights)
        self._set_model(
            KernelModel(result.centres, result.coef, result.feature_matrix, result.spec, result.shift, scaling),
            result.reg,
            result.best_iter,
            result.history,
        )
        self.solver_options_ = asdict(settings.options)

    def _set_model(self, model: KernelModel, reg: float, best_iter: int, history: list[dict]) -> None:
        """Set the fitted attributes from the kept predictor and the ridge it was solved with."""
        self.model_ = model
        self.bandwidth_ = float(model.spec.bandwidth)
        self.reg_ = float(reg)
        self.feature_matrix_ = model.feature_matrix
        self.feature_importances_ = _importances(model.feature_matrix)
        self.best_iter_ = best_iter
        self.history_ = history
        self.n_leaves_ = 1
        self.tree_ = Tree.single_leaf(model.centres.shape[1])

    def _set_tree(self, fit: TreeFit) -> None:
        """Set the fitted attributes of a tree from its fit: the scalar ones from its largest leaf (see the class
        docstring), per-leaf ones, and the leaf-size-weighted mean M and importances."""
        sizes, leaves, results = fit.leaf_sizes, fit.model.leaves, fit.results
        largest = int(np.argmax(sizes))
        self._set_model(leaves[largest], results[largest].reg, results[largest].best_iter, results[largest].history)
        self.model_, self.tree_, self.n_leaves_, self.leaf_sizes_ = fit.model, fit.model.tree, len(leaves), sizes
        self.leaf_bandwidths_ = np.array([leaf.spec.bandwidth for leaf in leaves])
        self.leaf_regs_ = np.array([r.reg for r in results], dtype=np.float64)
        self.leaf_best_iters_ = np.array([r.best_iter for r in results], dtype=np.int64)
        self.leaf_histories_ = [r.history for r in results]
        self.leaf_feature_matrices_ = np.stack([leaf.feature_matrix for leaf in leaves])
        self.leaf_feature_importances_ = np.stack([_importances(leaf.feature_matrix) for leaf in leaves])
        share = sizes / sizes.sum()
        self.feature_matrix_ = np.tensordot(share, self.leaf_feature_matrices_, axes=1)
        self.feature_importances_ = share @ self.leaf_feature_importances_

    # -- model files ----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save the fitted model to ``path``: arrays plus JSON metadata in one file, no pickle, written atomically.

        Load it with ``rfm_dask.load(path)``. A ``preprocessing_`` dict (set when fitting from an ingested store)
        is saved with it, so the loaded model can read raw Parquet columns. ``client``, ``checkpoint`` and ``resume``
        say how a fit runs, not what it learned: they are not saved, and the loaded model has their defaults.
        """
        check_is_fitted(self, "model_")
        params = {k: v for k, v in self.get_params(deep=False).items() if k not in _RUN_PARAMS}
        state = {
            "params": params,
            "n_features_in": int(self.n_features_in_),
            "feature_names_in": [str(c) for c in getattr(self, "feature_names_in_", [])] or None,
            "best_iter": int(self.best_iter_),
            "bandwidth": self.bandwidth_,
            "reg": self.reg_,
            "history": self.history_,
            "preprocessing": getattr(self, "preprocessing_", None),
            "solver_options": self.solver_options_,
            **self._target_state(),
        }
        model = self.model_
        if isinstance(model, TreeModel):
            state["tree"] = {"leaf_sizes": self.leaf_sizes_.tolist(), "leaves": [
                {"best_iter": int(i), "bandwidth": float(b), "reg": float(r), "history": h} for i, b, r, h in zip(
                    self.leaf_best_iters_, self.leaf_bandwidths_, self.leaf_regs_, self.leaf_histories_)]}
            tree = model.tree
            arrays = {"tree_directions": tree.directions, "tree_thresholds": tree.thresholds,
                      "tree_scales": tree.scales, "tree_children": tree.children}
            for j, leaf in enumerate(model.leaves):
                arrays.update(_model_arrays(leaf, f"leaf{j}_"))
        else:
            arrays = _model_arrays(model)
        return write_model_file(path, type(self).__name__, state, arrays, overwrite=overwrite)

    @classmethod
    def _from_state(cls, state: dict, arrays: dict[str, np.ndarray]) -> "_RFMBase":
        """A fitted estimator from a model file's state and arrays (see ``save``)."""
        estimator = cls(**{k: v for k, v in state["params"].items() if k not in _RUN_PARAMS})
        settings = estimator._settings()
        _check_state(state, arrays, classifier=issubclass(cls, RFMClassifier))
        estimator.n_features_in_ = int(state["n_features_in"])
        if state.get("feature_names_in"):
            estimator.feature_names_in_ = np.asarray(state["feature_names_in"], dtype=object)
        if state.get("preprocessing") is not None:
            estimator.preprocessing_ = state["preprocessing"]
        estimator._restore_target_state(state)
        # the solver options the model was fitted with (rfm.* settings); files from before they were recorded: None
        estimator.solver_options_ = state.get("solver_options")
        if "tree" in state:
            estimator._set_tree(_saved_tree(state["tree"], arrays, settings.spec, estimator.split_temperature))
            return estimator
        # files from before tuning existed hold no fitted bandwidth and reg: the parameters are the fitted values
        spec = replace(settings.spec, bandwidth=float(state.get("bandwidth", settings.spec.bandwidth)))
        estimator._set_model(_saved_model(arrays, "", spec), float(state.get("reg", settings.reg)),
                             int(state["best_iter"]), list(state["history"]))
        return estimator

    def _raw_columns_to_features(self, X: Any) -> Any:
        """For a model fitted on an ingested store, a pandas DataFrame holds raw columns (matched by name, as
        in Parquet): its features through the recorded preprocessing. Any other ``X`` is returned as it is."""
        info = getattr(self, "preprocessing_", None)
        if not is_pandas_frame(X) or not info or info.get("preprocessor") is None:
            return X
        return TableEncoder.from_model(self).transform(X)

    def _decision(self, X: Any) -> Any:
        """Raw predictor outputs (n, c): lazy for dask input, NumPy otherwise."""
        check_is_fitted(self, "model_")
        X = self._check_features(self._raw_columns_to_features(X), reset=False)
        if isinstance(X, da.Array):
            return self.model_.decision_dask(X)
        return self.model_.decision(X)


class RFMRegressor(RegressorMixin, _RFMBase):
    __doc__ = """Recursive Feature Machine for regression (single or multiple outputs).

    Parameters mirror the RFM papers: a Laplace (exponent q) or Gaussian Mahalanobis kernel with bandwidth L, or
    (``kernel="l1_laplace"``) xRFM's product-Laplace kernel ``exp(-(sum_i s_i |x_i - z_i| / L)^q)`` with
    ``M = diag(s^2)``, which always learns a diagonal M whatever ``diag`` says; ridge
    ``reg`` as in (K + reg I) alpha = y, ``iters`` updates of M (full or diagonal) by ``feature_update``: "agop"
    (the average gradient outer product, to the power ``agop_power``, 1 or 1/2) or "fact" (the Features at
    Convergence Theorem matrix F, M = (F F^T)^(1/2)).
    Kernel ridge regression has no intercept: each output is centred and scaled to unit variance on the training
    rows before the solve (y = mean + std * z), so ``reg`` acts on the scaled targets, and predictions are mapped
    back; the validation metrics are on the targets' scale.
""" + _PARAMETERS_DOC + _ATTRIBUTES_DOC

    _y_numeric = True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _encode(self, y: np.ndarray, fitting: bool) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        check_finite_targets(y)
        if fitting:
            self._single_output = y.ndim == 1
        return y.reshape(y.shape[0], -1)

    def _target_scaling(self, Y: np.ndarray, weights: np.ndarray | None) -> TargetScaling:
        """Each output centred and scaled to unit (weighted) variance on the training rows Y (n, c)."""
        return TargetScaling.standardise(Y, weights)

    def _target_state(self) -> dict:
        return {"single_output": bool(self._single_output)}

    def _restore_target_state(self, state: dict) -> None:
        self._single_output = bool(state["single_output"])

    def fit(
        self, X: Any, y: Any, X_val: Any = None, y_val: Any = None, sample_weight: Any = None
    ) -> "RFMRegressor":
        """Fit on X (n, d) and y (n,) or (n, k); validation rows are split off when X_val/y_val are not given.

        ``sample_weight`` (n,), >= 0: the weighted ridge (K + reg W^-1) alpha = y (direct and cg solvers), i.e. the
        loss sum_i w_i (y_i - f(x_i))^2; the targets' mean and scale are weighted too, validation metrics are not.
        """
        self._fit_targets(X, y, X_val, y_val, regression_metrics, sample_weight)
        return self

    def predict(self, X: Any) -> Any:
        """Predictions (n,) or (n, k); a dask array in gives a lazy dask array out."""
        F = self._decision(X)
        return F[:, 0] if self._single_output else F


class RFMClassifier(ClassifierMixin, _RFMBase):
    __doc__ = """Recursive Feature Machine for classification: kernel regression on one-hot labels (one column for two
    classes).

    The 0/1 indicators are centred by the class frequencies of the training rows before the solve and the scores
    mapped back (the frequencies added), so far from the training rows the scores fall to the class frequencies,
    not to 0.
    ``predict_proba`` clips the regression scores to be non-negative and normalises them (not calibrated).
""" + _PARAMETERS_DOC + _ATTRIBUTES_DOC + """    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted.
"""

    _y_numeric = False

    def _encode(self, y: np.ndarray, fitting: bool) -> np.ndarray:
        y = column_or_1d(y, warn=True)
        if fitting:
            check_classification_targets(y)
            self.classes_, index = np.unique(y, return_inverse=True)
            if len(self.classes_) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes in the data, "
                    f"but the data contains only one class: {np.asarray(self.classes_[0]).item()!r}"
                )
        else:
            unseen = np.setdiff1d(np.unique(y), self.classes_)
            if unseen.size:
                raise ValueError(f"y_val has labels not seen in y: {unseen.tolist()}")
            index = np.searchsorted(self.classes_, y)
        if len(self.classes_) == 2:
            return index.astype(np.float64)[:, None]
        return np.eye(len(self.classes_))[index]

    def _target_scaling(self, Y: np.ndarray, weights: np.ndarray | None) -> TargetScaling:
        """The 0/1 class indicators Y (n, c) centred by the (weighted) class frequencies of the training rows."""
        return TargetScaling.centre(Y, weights)

    def _target_state(self) -> dict:
        classes = self.classes_
        if classes.dtype.hasobject:
            classes = classes.astype(str)
        return {"classes": classes.tolist(), "classes_dtype": classes.dtype.str}

    def _restore_target_state(self, state: dict) -> None:
        self.classes_ = np.asarray(state["classes"], dtype=np.dtype(state["classes_dtype"]))

    def fit(
        self, X: Any, y: Any, X_val: Any = None, y_val: Any = None, sample_weight: Any = None
    ) -> "RFMClassifier":
        """Fit on X (n, d) and labels y (n,); validation rows are split off when X_val/y_val are not given.

        ``sample_weight`` (n,), >= 0: weighted ridge on the indicators (see ``RFMRegressor.fit``); the class
        frequencies that centre them are weighted too.
        """
        self._fit_targets(X, y, X_val, y_val, classification_metrics, sample_weight)
        return self

    def predict_proba(self, X: Any) -> Any:
        """Class scores turned into probabilities (n, n_classes); lazy for dask input."""
        F = self._decision(X)
        if isinstance(F, da.Array):
            k = len(self.classes_)
            return F.map_blocks(_scores_to_proba, chunks=(F.chunks[0], (k,)), meta=np.empty((0, k)))
        return _scores_to_proba(F)

    def predict(self, X: Any) -> Any:
        """Predicted labels (n,); lazy for dask input."""
        F = self._decision(X)
        if isinstance(F, da.Array):
            return F.map_blocks(
                _scores_to_index, drop_axis=1, dtype=np.intp, meta=np.empty((0,), dtype=np.intp)
            ).map_blocks(self.classes_.take, dtype=self.classes_.dtype, meta=np.empty((0,), self.classes_.dtype))
        return self.classes_[_scores_to_index(F)]


def _check_state(state: dict, arrays: dict[str, np.ndarray], classifier: bool) -> None:
    """Raise ``ValueError`` unless a model file's state fits its arrays (``load`` reports it as ``ModelFileError``)."""
    tree = state.get("tree")
    if tree is not None and not (isinstance(tree, dict) and isinstance(tree.get("leaves"), list)
                                 and isinstance(tree.get("leaf_sizes"), list)
                                 and len(tree["leaves"]) == len(tree["leaf_sizes"]) >= 1):
        raise ValueError(f"tree must be a dict of equally long lists 'leaves' and 'leaf_sizes', got {tree!r}")
    prefixes = [""] if tree is None else [f"leaf{j}_" for j in range(len(tree["leaves"]))]
    d = state["n_features_in"]
    for prefix in prefixes:
        centres, coef = arrays[prefix + "centres"], arrays[prefix + "coef"]
        if isinstance(d, bool) or not isinstance(d, int) or centres.ndim != 2 or centres.shape[1] != d:
            raise ValueError(f"n_features_in {d!r} does not match the centres' shape {centres.shape}")
    names = state.get("feature_names_in")
    if names is not None and not (isinstance(names, list) and len(names) == d
                                  and all(isinstance(n, str) for n in names)):
        raise ValueError(f"feature_names_in must be null or a list of {d} strings, got {names!r}")
    if state.get("preprocessing") is not None and not isinstance(state["preprocessing"], dict):
        raise ValueError(f"preprocessing must be null or a dict, got {state['preprocessing']!r}")
    if not isinstance(state["history"], list):
        raise ValueError(f"history must be a list, got {state['history']!r}")
    if state.get("solver_options") is not None and not isinstance(state["solver_options"], dict):
        raise ValueError(f"solver_options must be null or a dict, got {state['solver_options']!r}")
    outputs = coef.shape[1] if coef.ndim == 2 else None
    if classifier:
        classes = state["classes"]
        if not isinstance(classes, list) or len(classes) < 2 or len(set(map(str, classes))) < len(classes):
            raise ValueError(f"classes must be a list of at least 2 distinct labels, got {classes!r}")
        if outputs != (1 if len(classes) == 2 else len(classes)):
            raise ValueError(f"{len(classes)} classes do not fit coefficients of shape {coef.shape}")
    elif state["single_output"] is True and outputs != 1:
        raise ValueError(f"a single-output model has coefficients of shape {coef.shape}")


def _check_weights(sample_weight: Any, n: int) -> np.ndarray:
    """Sample weights as an (n,) float64 array: finite and >= 0, else ValueError."""
    weights = np.asarray(sample_weight.compute() if is_dask(sample_weight) else sample_weight, dtype=np.float64)
    if weights.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got {weights.shape}")
    if not (np.all(np.isfinite(weights)) and np.all(weights >= 0)):
        raise ValueError("sample_weight must be finite and >= 0")
    return weights


def _importances(M: np.ndarray) -> np.ndarray:
    """The diagonal of M ((d, d), or (d,) diagonal) divided by its sum (uniform when it is 0): (d,)."""
    diag = M if M.ndim == 1 else np.diag(M)
    return diag / diag.sum() if diag.sum() > 0 else np.full_like(diag, 1.0 / diag.size)


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == "auto"


def _model_arrays(model: KernelModel, prefix: str = "") -> dict[str, np.ndarray]:
    """A predictor's arrays for a model file, named with ``prefix`` (a tree's leaf j: ``leaf<j>_``)."""
    arrays = {"centres": model.centres, "coef": model.coef, "feature_matrix": model.feature_matrix,
              "shift": model.shift, "target_offset": model.target.offset, "target_scale": model.target.scale}
    return {prefix + name: a for name, a in arrays.items()}


def _saved_model(arrays: dict[str, np.ndarray], prefix: str, spec: KernelSpec) -> KernelModel:
    """The predictor of a model file's arrays named with ``prefix`` (see ``_model_arrays``); files saved before
    targets were scaled have no target arrays (the identity)."""
    scaling = None
    if prefix + "target_offset" in arrays or prefix + "target_scale" in arrays:
        scaling = TargetScaling(arrays[prefix + "target_offset"], arrays[prefix + "target_scale"])
    return KernelModel(arrays[prefix + "centres"], arrays[prefix + "coef"], arrays[prefix + "feature_matrix"], spec,
                       arrays[prefix + "shift"], scaling)


def _saved_tree(info: dict, arrays: dict[str, np.ndarray], spec: KernelSpec, temperature: float | None) -> TreeFit:
    """A tree's fit from a model file: its ``state["tree"]`` (per-leaf sizes, iterations, kernels, histories) and
    its arrays (``tree_*`` and ``leaf<j>_*``)."""
    tree = Tree(arrays["tree_directions"], arrays["tree_thresholds"], arrays["tree_scales"],
                arrays["tree_children"])
    leaves, results = [], []
    for j, leaf in enumerate(info["leaves"]):
        leaf_spec = replace(spec, bandwidth=float(leaf["bandwidth"]))
        model = _saved_model(arrays, f"leaf{j}_", leaf_spec)
        leaves.append(model)
        results.append(FitResult(model.feature_matrix, model.coef, model.shift, int(leaf["best_iter"]), leaf_spec,
                                 float(leaf["reg"]), model.centres, list(leaf["history"])))
    sizes = np.asarray(info["leaf_sizes"], dtype=np.int64)
    if np.any(sizes < 1):
        raise ValueError(f"leaf sizes must be positive, got {info['leaf_sizes']!r}")
    return TreeFit(TreeModel(tree, leaves, None if temperature is None else float(temperature)), sizes, results)


def _scores_to_index(F: np.ndarray) -> np.ndarray:
    """Class index per row from scores (n, c): threshold 0.5 for one column, argmax otherwise."""
    return (F[:, 0] > 0.5).astype(np.intp) if F.shape[1] == 1 else np.argmax(F, axis=1)


def _scores_to_proba(F: np.ndarray) -> np.ndarray:
    """Probabilities (n, k) from scores (n, c): clipped to [0, 1] for binary, clipped at 0 and normalised otherwise.

    Rows with no positive score put all mass on their largest score, so argmax(proba) always matches predict.
    """
    if F.shape[1] == 1:
        p = np.clip(F[:, 0], 0.0, 1.0)
        return np.column_stack([1.0 - p, p])
    P = np.maximum(F, 0.0)
    total = P.sum(axis=1, keepdims=True)
    empty = total[:, 0] == 0
    P[empty, np.argmax(F[empty], axis=1)] = 1.0
    total[empty] = 1.0
    return P / total


def load(path: str | os.PathLike) -> RFMRegressor | RFMClassifier:
    """Load a model saved with ``save``: no code is executed (no pickle); a corrupt file, a file from a newer
    format, or one whose contents do not make a valid model raises ``ModelFileError``."""
    name, state, arrays = read_model_file(path)
    classes = {cls.__name__: cls for cls in (RFMRegressor, RFMClassifier)}
    if name not in classes:
        raise ModelFileError(f"{path}: unknown estimator {name!r} (expected one of {sorted(classes)})")
    try:
        return classes[name]._from_state(state, arrays)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ModelFileError(f"{path}: the model file's contents are not a valid {name} ({exc!r})") from None
