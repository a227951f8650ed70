"""Appending rows to Zarr arrays of known length, one whole chunk of rows at a time."""

from __future__ import annotations

import numpy as np
import zarr

from rfm_dask.io.errors import DataError


class ChunkWriter:
    """Buffers rows for equal-length Zarr arrays (first axis = rows, chunked by ``chunk_rows``) and writes each
    chunk once it is full; memory is one chunk of rows per array."""

    def __init__(self, arrays: dict[str, zarr.Array], chunk_rows: int) -> None:
        self._arrays = arrays
        self._chunk_rows = chunk_rows
        self._buffers = {k: np.empty((chunk_rows, *a.shape[1:]), dtype=a.dtype) for k, a in arrays.items()}
        self._filled = 0
        self.rows_written = 0

    def append(self, rows: dict[str, np.ndarray]) -> None:
        """Append b rows: ``rows`` maps every array name to its (b, ...) values."""
        b = len(next(iter(rows.values())))
        start = 0
        while start < b:
            take = min(self._chunk_rows - self._filled, b - start)
            for name, buffer in self._buffers.items():
                buffer[self._filled:self._filled + take] = rows[name][start:start + take]
            self._filled += take
            start += take
            if self._filled == self._chunk_rows:
                self._flush()

    def close(self) -> None:
        """Write the last, partial chunk."""
        if self._filled:
            self._flush()

    def _flush(self) -> None:
        stop = self.rows_written + self._filled
        for name, array in self._arrays.items():
            if stop > array.shape[0]:
                raise DataError("more rows than counted in the first pass (did the data change?)")
            array[self.rows_written:stop] = self._buffers[name][: self._filled]
        self.rows_written, self._filled = stop, 0
