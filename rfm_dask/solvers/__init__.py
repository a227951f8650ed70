"""Kernel ridge regression solvers: dense ``direct`` (Cholesky), client-side preconditioned ``cg``, FALKON, their
preconditioners, and the choice among them (``dispatch``)."""
