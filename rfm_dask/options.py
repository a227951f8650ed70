"""Typed option groups read once from dask.config (``rfm.*``, see rfm.yaml) on the client.

The RFM loop, the solvers and the tasks they submit take these values as arguments; nothing below the estimators
reads dask.config while fitting, so a fit inside a worker task (a tree's leaf) is the fit the client asked for.
The options that change the fitted model are part of ``training.RFMSettings``, hence of the checkpoint fingerprint
and of the model file.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import config


@dataclass(frozen=True)
class SolverOptions:
    """How a KRR solve runs; ``from_config`` reads them (rfm.yaml holds each default and its reason).

    Attributes
    ----------
    direct_max_rows, cg_max_rows : int
        ``solver="auto"``: the dense solve up to ``direct_max_rows`` training rows, then exact CG up to
        ``cg_max_rows``, then Nystrom (FALKON).
    cg_max_iter, cg_refresh_every : int
        CG iterations per solve, and how often the true residual is recomputed.
    preconditioner_rank : int
        Landmark columns of the CG solver's Nystrom preconditioner.
    one_worker_bytes : int
        Nystrom: the whole solve runs as one task when K_nm (n x m float64) fits in this many bytes.
    kernel_cache_fraction : float
        Nystrom, larger n: K_nm's blocks are kept on the workers when they fit this share of their total memory.
    tile_elements : int
        Kernel entries per tile in a block function (rows x centres).
    tune_rows, tune_scale_rows : int
        ``bandwidth="auto"`` / ``reg="auto"``: the rows of the exact search solves, and the rows whose median
        pairwise distance scales the bandwidth grid (see ``tuning``).
    """

    direct_max_rows: int
    cg_max_rows: int
    cg_max_iter: int
    cg_refresh_every: int
    preconditioner_rank: int
    one_worker_bytes: int
    kernel_cache_fraction: float
    tile_elements: int
    tune_rows: int
    tune_scale_rows: int

    @classmethod
    def from_config(cls) -> "SolverOptions":
        """The options as dask.config holds them now (user settings over the packaged rfm.yaml)."""
        return cls(
            direct_max_rows=int(config.get("direct-max-rows")),
            cg_max_rows=int(config.get("cg-max-rows")),
            cg_max_iter=int(config.get("cg.max-iter")),
            cg_refresh_every=int(config.get("cg.refresh-every")),
            preconditioner_rank=int(config.get("cg.preconditioner-rank")),
            one_worker_bytes=int(config.get("one-worker-bytes")),
            kernel_cache_fraction=float(config.get("kernel-cache-fraction")),
            tile_elements=int(config.get("tile-elements")),
            tune_rows=int(config.get("tune.rows")),
            tune_scale_rows=int(config.get("tune.scale-rows")),
        )
