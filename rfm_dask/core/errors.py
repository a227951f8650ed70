"""Errors of the numerical core."""


class NumericalError(RuntimeError):
    """A fit's arithmetic failed: a solve or feature update gave non-finite values, or a CG residual grew past what a
    positive definite system allows (reg too small for the kernel, or inputs too large in magnitude)."""
