"""Which kernel: its name, bandwidth and exponent (``KernelSpec``), and the kernel names. Pure data, no arrays."""

from __future__ import annotations

from dataclasses import dataclass

KERNELS = ("laplace", "gaussian", "l1_laplace")
#: Kernels of the form exp(-(r / L)^q), with an exponent q in (0, 2].
LAPLACE_KERNELS = ("laplace", "l1_laplace")


@dataclass(frozen=True)
class KernelSpec:
    """Which kernel, its bandwidth L and (Laplace kernels only) its exponent q.

    Laplace: k = exp(-(r / L)^q), 0 < q <= 2, r = ||x~ - c~||_2.  Gaussian: k = exp(-r^2 / (2 L^2)).
    L1 Laplace (product Laplace): k = exp(-(r / L)^q), r = ||x~ - c~||_1 = sum_i s_i |x_i - c_i| for M = diag(s^2).
    """

    kind: str = "laplace"
    bandwidth: float = 10.0
    exponent: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kind!r}")
        if not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth!r}")
        if self.kind in LAPLACE_KERNELS and not 0 < self.exponent <= 2:
            raise ValueError(f"exponent must be in (0, 2], got {self.exponent!r}")

    @property
    def l1(self) -> bool:
        """Whether the kernel is of the L1 distance (no GEMM form, diagonal M only)."""
        return self.kind == "l1_laplace"

    @property
    def distance_power(self) -> int:
        """p with distance term a = r^p: 2 for the L2 kernels (squared distances), 1 for the L1 kernel."""
        return 1 if self.l1 else 2
