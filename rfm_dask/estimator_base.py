"""What the two RFM estimators share: their parameters, input checks, the fit (a global RFM or a tree of leaf RFMs on
the cluster), the fitted attributes and model files. The estimators themselves are in ``estimators``."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from distributed import Client
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted, validate_data

from rfm_dask.files.atomic import check_writable
from rfm_dask.files.model_file import write_model_file
from rfm_dask.io.transformer import TableEncoder, is_pandas_frame
from rfm_dask.model import KernelModel
from rfm_dask.model_state import check_state, fitted_state, restore_fitted
from rfm_dask.parallel.cluster import resolve_client
from rfm_dask.parallel.cluster_engine import ClusterEngine
from rfm_dask.parallel.inputs import check_dask_features, is_dask, to_host_targets
from rfm_dask.parallel.placement import check_weights, fit_rows
from rfm_dask.parallel.row_blocks import RowBlocks, take_rows
from rfm_dask.parameters import PARAMETER_CONSTRAINTS, RUN_PARAMS, rfm_settings
from rfm_dask.rfm_loop import RFMSettings, collapsible_duplicates, run_rfm
from rfm_dask.tree.fit import TreeFit, fit_tree
from rfm_dask.tree.settings import TreeSettings, check_leaf_init, resolve_leaf_size
from rfm_dask.tree.structure import Tree


class _RFMBase(BaseEstimator):
    """Shared parameters, input handling and fitting of the RFM estimators."""

    #: Allowed values of every constructor parameter, checked by ``_settings`` before a fit and on ``load``
    #: (scikit-learn's declarative validation: a list of alternatives per parameter, None meaning None itself).
    _parameter_constraints: dict = PARAMETER_CONSTRAINTS
    #: The ``scoring`` values of this estimator (None is its default, the first of them).
    _scorings: tuple[str, ...] = ()

    def __init__(
        self,
        kernel: str = "laplace",
        bandwidth: float | str = "auto",
        exponent: float = 1.0,
        reg: float | str = "auto",
        iters: int = 5,
        diag: bool = False,
        agop_power: float = 1.0,
        centre_agop: bool | str = "auto",
        feature_update: str = "agop",
        solver: str = "auto",
        tol: float = 1e-6,
        validation_fraction: float = 0.1,
        scoring: str | None = None,
        patience: int | None = 2,
        agop_samples: int | None = None,
        n_centers: int | None = None,
        random_state: int | None = None,
        leaf_size: int | str | None = "auto",
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
        self.scoring = scoring
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
        """The validated settings of a fit (see ``parameters.rfm_settings``)."""
        self._validate_params()
        if self.scoring is not None and self.scoring not in self._scorings:
            raise ValueError(f"The 'scoring' parameter of {type(self).__name__} must be one of {self._scorings} or "
                             f"None, got {self.scoring!r}")
        check_leaf_init(self.leaf_init, self.split_method)
        return rfm_settings(self)

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
        weights = None if sample_weight is None else check_weights(sample_weight, Y.shape[0])
        rng = np.random.default_rng(self.random_state)
        if (X_val is None) != (y_val is None):
            raise ValueError("pass both X_val and y_val, or neither")
        if X_val is not None:
            X_val, y_val = self._check_xy(X_val, y_val, reset=False)
        client = resolve_client(self.client)
        Y_val = None if X_val is None else self._encode(y_val, fitting=False)
        train, Y, val, Y_val, weights, kept = fit_rows(client, X, Y, X_val, Y_val, weights, self.validation_fraction,
                                                       rng)
        if weights is not None and not weights.sum() > 0:
            raise ValueError("sample_weight is zero on every training row")
        leaf_size = resolve_leaf_size(self.leaf_size)
        if leaf_size is not None:
            tree_settings = TreeSettings(leaf_size, int(self.split_samples), self.split_method, self.leaf_init,
                                         None if self.split_temperature is None else float(self.split_temperature))
            self._set_tree(fit_tree(client, train, Y, settings, tree_settings, rng, self._target_scaling, val, Y_val,
                                    metrics, weights, self.checkpoint, bool(self.resume)))
        else:
            scaling = self._target_scaling(Y, weights)
            engine = ClusterEngine(client, settings.options)
            # rows held here (not a dask collection) are solved as their distinct rows where they repeat
            duplicates = None if is_dask(X) else collapsible_duplicates(X[kept], settings, engine.worker_memory())
            if duplicates is not None:
                train = take_rows(client, train, duplicates.first)
            result = run_rfm(engine, train, Y, settings, rng, val, Y_val, metrics, self.checkpoint, bool(self.resume),
                             scaling, weights, duplicates=duplicates)
            self._set_model(
                KernelModel(result.centres, result.coef, result.feature_matrix, result.spec, result.shift, scaling),
                result.reg,
                result.best_iter,
                result.history,
            )
        self.solver_options_ = asdict(settings.options)
        self._calibrate(client, val, Y_val)

    def _calibrate(self, client: Client, val: RowBlocks | None, Y_val: np.ndarray | None) -> None:
        """After the model is fitted: fit what maps its outputs to the estimator's answers on the validation rows
        ``val`` with targets Y_val (n_val, c) (None: none). A regressor has nothing to calibrate."""

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
        A tree's file (model format 2) holds its splits and every leaf's predictor, whose centres are the leaf's
        (distinct) training rows: the file is at most about the size of the training data (float32).
        """
        check_is_fitted(self, "model_")
        state, arrays = fitted_state(self)
        return write_model_file(path, type(self).__name__, state, arrays, overwrite=overwrite)

    @classmethod
    def _from_state(cls, state: dict, arrays: dict[str, np.ndarray]) -> "_RFMBase":
        """A fitted estimator from a model file's state and arrays (see ``save``)."""
        estimator = cls(**{k: v for k, v in state["params"].items() if k not in RUN_PARAMS})
        check_state(state, arrays, classifier=not cls._y_numeric)
        restore_fitted(estimator, estimator._settings(), state, arrays)
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


def _importances(M: np.ndarray) -> np.ndarray:
    """The diagonal of M ((d, d), or (d,) diagonal) divided by its sum (uniform when it is 0): (d,)."""
    diag = M if M.ndim == 1 else np.diag(M)
    return diag / diag.sum() if diag.sum() > 0 else np.full_like(diag, 1.0 / diag.size)
