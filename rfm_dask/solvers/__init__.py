"""Kernel ridge regression solvers: dense ``direct`` (Cholesky) and client-side preconditioned ``cg``."""
