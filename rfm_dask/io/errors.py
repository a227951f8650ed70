"""Errors and warnings raised while reading and encoding tabular data."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class DataError(ValueError):
    """Data that cannot be read or encoded as asked; the message names the file, column or setting at fault."""


class SourceNotFoundError(DataError, FileNotFoundError):
    """A Parquet source (file, directory, glob or URL) that names no existing file."""


class DataWarning(UserWarning):
    """Something in the data was handled in a way the caller may not expect (constant or dropped columns)."""


@contextmanager
def located(where: str) -> Iterator[None]:
    """Prefix the message of any ``DataError`` raised inside the block with ``where`` (a file name)."""
    try:
        yield
    except DataError as err:
        raise type(err)(f"{where}: {err}") from err
