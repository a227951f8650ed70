"""Target scaling: kernel ridge regression has no intercept, so targets are centred (and, for regression, scaled)
per output before the solve, and predictions are mapped back (DESIGN section 2, "Targets")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TargetScaling:
    """The affine map z = (y - offset) / scale per output; predictions map back as y = offset + scale * z.

    offset (c,) and scale (c,) float64, scale > 0. The identity (offset 0, scale 1) is what models saved before
    target scaling existed use.
    """

    offset: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        offset, scale = (np.asarray(a, dtype=np.float64) for a in (self.offset, self.scale))
        if offset.ndim != 1 or scale.shape != offset.shape:
            raise ValueError(f"target offset {offset.shape} and scale {scale.shape} must be two (c,) vectors")
        if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError(f"target offset must be finite and scale finite and > 0, got {offset}, {scale}")
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "scale", scale)

    @classmethod
    def identity(cls, c: int) -> "TargetScaling":
        """No scaling, for c outputs."""
        return cls(np.zeros(c), np.ones(c))

    @classmethod
    def centre(cls, Y: np.ndarray, weights: np.ndarray | None = None) -> "TargetScaling":
        """Subtract the (weighted) mean of each column of Y (n, c); for 0/1 class indicators, the class frequencies."""
        return cls(np.average(Y, axis=0, weights=weights), np.ones(Y.shape[1]))

    @classmethod
    def standardise(cls, Y: np.ndarray, weights: np.ndarray | None = None) -> "TargetScaling":
        """Centre and divide by the (weighted) standard deviation of each column of Y (n, c).

        A column that is constant (standard deviation within rounding of its mean) keeps scale 1.
        """
        mean = np.average(Y, axis=0, weights=weights)
        std = np.sqrt(np.average((Y - mean) ** 2, axis=0, weights=weights))
        constant = std <= 10 * np.finfo(np.float64).eps * np.abs(mean)
        return cls(mean, np.where(constant | (std == 0), 1.0, std))

    @property
    def n_outputs(self) -> int:
        return int(self.offset.size)

    def transform(self, Y: np.ndarray) -> np.ndarray:
        """Scaled targets (n, c) float64 from targets Y (n, c)."""
        return (np.asarray(Y, dtype=np.float64) - self.offset) / self.scale

    def inverse(self, F: np.ndarray) -> np.ndarray:
        """Predictions (n, c) on the targets' scale from scaled ones F (n, c)."""
        return self.offset + self.scale * F
