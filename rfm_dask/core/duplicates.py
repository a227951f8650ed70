"""Duplicate training rows as weighted distinct rows.

Kernel ridge regression on rows with duplicates is the weighted ridge on the distinct rows: for the rows i of a
group g of equal rows, sum_i w_i (f(x_g) - y_i)^2 = W_g (f(x_g) - ybar_g)^2 + const, with W_g = sum_i w_i and
ybar_g the weighted mean of the y_i. So (K + reg W^-1) alpha = ybar on the m distinct rows gives the predictor of
(K + reg W_rows^-1) alpha = y on all n rows, and each distinct row's coefficient is the sum of its rows'
coefficients. A table of a few categorical columns may hold far fewer distinct rows than rows (CPS1988: 27%,
Fertility: 0.4%), and an exact solve costs O(m^3) instead of O(n^3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Duplicates:
    """n rows as m distinct rows: ``inverse`` (n,) int64, the distinct row of each row (distinct rows numbered by
    their first appearance); ``first`` (m,) int64, the first row of each distinct row (increasing)."""

    inverse: np.ndarray
    first: np.ndarray

    @classmethod
    def of(cls, X: np.ndarray) -> "Duplicates":
        """The distinct rows of X (n, d), compared by their bytes (so 0.0 and -0.0 stay apart)."""
        X = np.ascontiguousarray(X)
        _, first, inverse = np.unique(X.view(np.dtype((np.void, X.dtype.itemsize * X.shape[1]))).ravel(),
                                      return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        return cls(rank[inverse.ravel()].astype(np.int64), first[order].astype(np.int64))

    @property
    def n_rows(self) -> int:
        return int(self.inverse.size)

    @property
    def n_distinct(self) -> int:
        return int(self.first.size)

    @property
    def counts(self) -> np.ndarray:
        """(m,) int64: the number of rows of each distinct row."""
        return np.bincount(self.inverse, minlength=self.n_distinct)

    def collapse(
        self, index: np.ndarray, Z: np.ndarray, weights: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows ``index`` (sorted, of the n rows) with targets Z (n, c) and weights (n,) (None: 1) as weighted
        distinct rows: (their distinct rows (k,) int64, increasing; targets (k, c), each group's weighted mean (0
        where its weight is 0); weights (k,) float64, each group's summed weight)."""
        groups, inverse = np.unique(self.inverse[index], return_inverse=True)
        w = np.ones(index.size) if weights is None else np.asarray(weights, dtype=np.float64)[index]
        total = np.bincount(inverse, weights=w, minlength=groups.size)
        Zw = np.stack([np.bincount(inverse, weights=w * Z[index, k], minlength=groups.size)
                       for k in range(Z.shape[1])], axis=1)
        return groups, np.divide(Zw, total[:, None], out=np.zeros_like(Zw), where=total[:, None] > 0), total
