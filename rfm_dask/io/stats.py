"""Streaming per-column moments in float64, merged batch by batch (Chan et al.'s parallel update)."""

from __future__ import annotations

import numpy as np


class Moments:
    """Count, mean, sum of squared deviations, min and max of p columns, updated with (k, p) blocks of rows.

    Kept rather than scikit-learn's ``StandardScaler.partial_fit`` (the same parallel update): measured on 200k rows
    in 400 blocks, both agree with a long-double reference to the same precision (relative 1e-15 for the mean;
    for the standard deviation about 1e-9 at an offset of 1e6 and 1e-6 at 1e9, for both), but the scaler validates
    its input on every call, 6 to 8 times slower here (ingest calls it once per column per batch), and keeps no
    min and max, which ``constant`` needs exactly.
    """

    def __init__(self, p: int) -> None:
        self.n = 0
        self.mean = np.zeros(p)
        self.m2 = np.zeros(p)
        self.lo = np.full(p, np.inf)
        self.hi = np.full(p, -np.inf)

    def add(self, values: np.ndarray) -> None:
        """Merge a (k, p) block of finite float64 rows."""
        k = values.shape[0]
        if k == 0:
            return
        block_mean = values.mean(axis=0)
        block_m2 = ((values - block_mean) ** 2).sum(axis=0)
        total = self.n + k
        delta = block_mean - self.mean
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + block_m2 + delta**2 * (self.n * k / total)
        self.n = total
        self.lo = np.minimum(self.lo, values.min(axis=0))
        self.hi = np.maximum(self.hi, values.max(axis=0))

    @property
    def std(self) -> np.ndarray:
        """(p,) population standard deviation (ddof = 0)."""
        return np.sqrt(self.m2 / self.n)

    @property
    def constant(self) -> np.ndarray:
        """(p,) bool: the columns whose values were all equal."""
        return self.lo == self.hi
