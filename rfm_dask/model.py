"""A fitted kernel predictor f(x) = K_M(x, C) beta, evaluated in-process (NumPy) or lazily over a dask array."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import dask.array as da
import numpy as np

from . import config
from . import kernels as kn
from . import worker_tasks as wt
from .backend import like, namespace_of
from .blas_threads import single_blas_thread
from .features import matrix_sqrt
from .targets import TargetScaling


def _decision_block(X: Any, packed: dict, spec: kn.KernelSpec) -> np.ndarray:
    """f on one (b, d) block, mapped back to the targets' scale: (b, c) float64 on the host, for NumPy or CuPy
    blocks (the kernel product of ``worker_tasks.matvec``, as in the fit)."""
    xp = namespace_of(X)
    centres = (like(xp, packed["Ct"]), like(xp, packed["c_sq"]))
    F = wt.matvec(X.astype(np.float32, copy=False), (packed["S"], packed["shift"]), centres, packed["coef"], spec,
                  packed["tile"])
    return packed["target"].inverse(F)


def _decision_block_of(X: Any, holder: np.ndarray, spec: kn.KernelSpec) -> np.ndarray:
    """``_decision_block`` with the packed model held in a 0-d object array (see ``KernelModel.decision_dask``)."""
    return _decision_block(X, holder.item(), spec)


@dataclass
class KernelModel:
    """centres (m, d) float32, coef (m, c) float64, feature_matrix (d, d) or (d,) ((d,) for the L1 kernel), the
    kernel, the shift (d,) subtracted before the feature map (see ``kernels.transform``), and the target scaling the
    coefficients were solved under (predictions are mapped back by it; None means the identity)."""

    centres: np.ndarray
    coef: np.ndarray
    feature_matrix: np.ndarray
    spec: kn.KernelSpec
    shift: np.ndarray
    target: TargetScaling | None = None

    def __post_init__(self) -> None:
        m, d = self.centres.shape if self.centres.ndim == 2 else (None, None)
        consistent = (
            m is not None
            and self.coef.ndim == 2
            and self.coef.shape[0] == m
            and self.feature_matrix.shape in ((d,), (d, d))
            and self.shift.shape == (d,)
            and (self.feature_matrix.ndim == 1 or not self.spec.l1)
        )
        if self.target is None and self.coef.ndim == 2:
            self.target = TargetScaling.identity(self.coef.shape[1])
        consistent = consistent and self.target is not None and self.target.n_outputs == self.coef.shape[1]
        if not consistent:
            raise ValueError(
                f"inconsistent model arrays: centres {self.centres.shape}, coef {self.coef.shape}, "
                f"feature_matrix {self.feature_matrix.shape} (diagonal (d,) for the L1 kernel), "
                f"shift {self.shift.shape}, target outputs {None if self.target is None else self.target.n_outputs}"
            )

    @cached_property
    def _packed(self) -> dict:
        S = matrix_sqrt(self.feature_matrix).astype(np.float32)
        shift = self.shift.astype(np.float32)
        Ct = single_blas_thread(kn.transform)(np, self.centres, S, shift)
        return {"S": S, "shift": shift, "Ct": Ct, "c_sq": kn.sq_norms(np, Ct), "coef": self.coef,
                "target": self.target, "tile": int(config.get("tile-elements"))}

    @property
    def n_outputs(self) -> int:
        return int(self.coef.shape[1])

    def decision(self, X: np.ndarray) -> np.ndarray:
        """f(X) on the targets' scale for a NumPy (n, d) array, computed here in row chunks: (n, c) float64."""
        return in_row_chunks(_decision_block, X, self.n_outputs, self._packed, self.spec)

    def decision_dask(self, X: da.Array) -> da.Array:
        """f(X) on the targets' scale for a dask (n, d) array, lazily: (n, c) float64 with X's row chunks. The model
        enters the graph once."""
        return map_row_blocks(_decision_block_of, X, self.n_outputs, self._packed, spec=self.spec)


def in_row_chunks(fn: Callable[..., np.ndarray], X: np.ndarray, c: int, *args: Any) -> np.ndarray:
    """``fn(chunk, *args)`` (b, c) over the ``rfm.predict-chunk-rows`` row chunks of a NumPy (n, d) array, here:
    (n, c) float64."""
    step = int(config.get("predict-chunk-rows"))
    parts = [fn(X[s : s + step], *args) for s in range(0, X.shape[0], step)]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, c))


def map_row_blocks(fn: Callable[..., np.ndarray], X: da.Array, c: int, model: Any, **kwargs: Any) -> da.Array:
    """``fn(block, holder, **kwargs)`` (b, c) float64 on every row block of a dask (n, d) array, lazily, where
    ``holder.item()`` is ``model``: (n, c) with X's row chunks. The model enters the graph once."""
    X = X.rechunk({1: -1})
    # the model as a 0-d object array of one chunk, broadcast to every block (index ""): one key that all tasks
    # share, in both of dask's array modes (delayed arguments break the array-expression mode)
    holder = np.empty((), dtype=object)
    holder[()] = model
    return da.blockwise(
        fn, "ij", X, "ij", da.from_array(holder, chunks=()), "",
        adjust_chunks={"j": (c,)},
        dtype=np.float64,
        meta=np.empty((0, c), dtype=np.float64),
        **kwargs,
    )
