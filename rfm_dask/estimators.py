"""scikit-learn estimators RFMRegressor and RFMClassifier over NumPy, pandas and dask inputs (shared parts in
``estimator_base``), and ``load`` for their model files."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
from distributed import Client
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from rfm_dask.core.metrics import (
    CLASSIFICATION_SCORINGS,
    REGRESSION_SCORINGS,
    calibrated_proba,
    classification_metrics,
    fit_temperature,
    regression_metrics,
    scores_to_index,
    scores_to_proba,
)
from rfm_dask.core.targets import TargetScaling
from rfm_dask.estimator_base import _RFMBase
from rfm_dask.files.model_file import ModelFileError, read_model_file
from rfm_dask.parallel.inputs import check_finite_targets
from rfm_dask.parallel.row_blocks import RowBlocks
from rfm_dask.parallel.scheduling import scores_on_rows
from rfm_dask.parameters import ATTRIBUTES_DOC, PARAMETERS_DOC


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
""" + PARAMETERS_DOC + ATTRIBUTES_DOC

    _y_numeric = True
    _scorings = REGRESSION_SCORINGS

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
    ``predict_proba`` is calibrated on the validation rows by temperature scaling: softmax(S / T) of the class
    scores S (for two classes, the scores 1 - s and s of the second class's score s: Platt's sigmoid
    p = sigmoid((2 s - 1) / T) with its threshold fixed at s = 1/2), T fitted after the best iteration is chosen to
    minimise the validation log-loss of the chosen model. T > 0 keeps the order of the scores, so ``predict`` (the
    largest score; s > 1/2 for two classes) is unchanged and equals the argmax of ``predict_proba``. A tree is
    calibrated once, on the whole model's validation scores. Without validation rows (``validation_fraction=0``
    leaving none, and no ``X_val``) the probabilities are not calibrated: the scores clipped to be non-negative and
    normalised (``core.metrics.scores_to_proba``), as are those of models saved before calibration existed.
""" + PARAMETERS_DOC + ATTRIBUTES_DOC + """    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted.
    calibration_ : float or None
        The temperature T of ``predict_proba`` (see above), fitted on the validation rows; None when there were none
        (uncalibrated probabilities). Saved in the model file.
"""

    _y_numeric = False
    _scorings = CLASSIFICATION_SCORINGS

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
        return {"classes": classes.tolist(), "classes_dtype": classes.dtype.str, "calibration": self.calibration_}

    def _restore_target_state(self, state: dict) -> None:
        self.classes_ = np.asarray(state["classes"], dtype=np.dtype(state["classes_dtype"]))
        # files from before calibration existed: uncalibrated probabilities, as they had
        self.calibration_ = state.get("calibration")

    def _calibrate(self, client: Client, val: RowBlocks | None, Y_val: np.ndarray | None) -> None:
        """``calibration_``: the temperature fitted on the model's scores on the validation rows (None without)."""
        self.calibration_ = None if val is None else fit_temperature(scores_on_rows(client, self.model_, val), Y_val)

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
        """Class probabilities (n, n_classes): the scores calibrated by the temperature ``calibration_``, or clipped
        and normalised when it is None (see the class docstring); lazy for dask input."""
        F = self._decision(X)
        to_proba = scores_to_proba if self.calibration_ is None else partial(calibrated_proba,
                                                                              temperature=self.calibration_)
        if isinstance(F, da.Array):
            k = len(self.classes_)
            return F.map_blocks(to_proba, chunks=(F.chunks[0], (k,)), meta=np.empty((0, k)))
        return to_proba(F)

    def predict(self, X: Any) -> Any:
        """Predicted labels (n,): the class of the largest score, the argmax of ``predict_proba`` too; lazy for dask
        input."""
        F = self._decision(X)
        if isinstance(F, da.Array):
            return F.map_blocks(
                scores_to_index, drop_axis=1, dtype=np.intp, meta=np.empty((0,), dtype=np.intp)
            ).map_blocks(self.classes_.take, dtype=self.classes_.dtype, meta=np.empty((0,), self.classes_.dtype))
        return self.classes_[scores_to_index(F)]




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
