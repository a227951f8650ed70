"""The distributed engine: a fit's rows as ``RowBlocks`` on Dask workers, and ``KernelPasses`` over them."""

from __future__ import annotations

import numpy as np
from distributed import Client

from . import checkpoint
from .kernels import KernelSpec
from .options import SolverOptions
from .passes import KernelPasses
from .row_blocks import RowBlocks, cluster_memory, fetch_rows, smallest_worker_memory, take_rows
from .scheduling import column_means


class ClusterEngine:
    """Rows as ``RowBlocks`` on the workers of ``client``; operators are ``KernelPasses`` (one task per block)."""

    def __init__(self, client: Client, options: SolverOptions) -> None:
        self.client = client
        self.options = options

    def worker_memory(self) -> int:
        return smallest_worker_memory(self.client)

    def column_means(self, rows: RowBlocks) -> np.ndarray:
        return column_means(self.client, rows)

    def rows_digest(self, rows: RowBlocks) -> np.ndarray:
        return checkpoint.rows_digest(self.client, rows)

    def take_rows(self, rows: RowBlocks, index: np.ndarray) -> RowBlocks:
        return take_rows(self.client, rows, index)

    def fetch_rows(self, rows: RowBlocks) -> np.ndarray:
        return fetch_rows(self.client, rows)

    def operator(self, centres: RowBlocks, S: np.ndarray, shift: np.ndarray, spec: KernelSpec) -> KernelPasses:
        return KernelPasses(self.client, centres, S, shift, spec, self.options.tile_elements,
                            cluster_memory(self.client))
