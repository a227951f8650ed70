"""Parquet sources: files, directories, globs, fsspec URLs or lists of those, read in bounded record batches."""

from __future__ import annotations

import os
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from rfm_dask.io.errors import DataError, SourceNotFoundError

PathLike = Union[str, os.PathLike]
Source = Union[PathLike, Sequence[PathLike]]


@dataclass(frozen=True)
class ParquetPart:
    """One Parquet file: the filesystem that reads it, its path there, and its name in messages."""

    filesystem: pafs.FileSystem
    path: str
    name: str

    @contextmanager
    def open(self) -> Iterator[pq.ParquetFile]:
        """The file opened for reading (footer parsed); a file that is not valid Parquet raises ``DataError``."""
        try:
            handle = self.filesystem.open_input_file(self.path)
        except FileNotFoundError as err:
            raise SourceNotFoundError(f"{self.name} does not exist") from err
        with handle:
            try:
                parquet = pq.ParquetFile(handle)
            except (pa.ArrowException, OSError) as err:
                raise DataError(f"{self.name} is not a readable Parquet file ({err})") from err
            except UnicodeDecodeError as err:  # a column name (or other schema text) that is not UTF-8
                text = err.object.decode("utf-8", errors="backslashreplace")
                raise DataError(f"{self.name}: a column name is not valid UTF-8: '{text}' ({err.reason} at byte "
                                f"{err.start}); rename the column") from None
            yield parquet


@dataclass(frozen=True)
class ParquetSource:
    """Resolved Parquet files. ``schema`` is the first file's; ``num_rows`` the total from the files' footers."""

    given: tuple[str, ...]
    parts: tuple[ParquetPart, ...]
    schema: pa.Schema
    num_rows: int

    def batches(self, columns: Sequence[str], batch_rows: int) -> Iterator[tuple[str, pa.RecordBatch]]:
        """(file name, record batch of at most ``batch_rows`` rows holding ``columns``), file by file.

        Every file must hold every column in ``columns``; only those columns are read.
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be a positive integer, got {batch_rows}")
        columns = list(dict.fromkeys(columns))
        for part in self.parts:
            with part.open() as parquet:
                available = parquet.schema_arrow.names
                missing = [c for c in columns if c not in available]
                if missing:
                    raise DataError(f"{part.name}: missing required column(s) {missing} (available: {available})")
                repeated = [c for c in columns if available.count(c) > 1]
                if repeated:
                    raise DataError(f"{part.name}: column name(s) {repeated} appear more than once")
                batches = parquet.iter_batches(batch_size=batch_rows, columns=columns)
                while True:
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    except (pa.ArrowException, OSError) as err:
                        raise DataError(f"{part.name}: cannot read Parquet data ({err})") from err
                    yield part.name, batch

    def describe(self) -> dict:
        """A JSON-ready description: the sources as given, the number of files and the first file's columns."""
        return {
            "paths": list(self.given),
            "files": len(self.parts),
            "columns": {field.name: str(field.type) for field in self.schema},
        }


def open_source(source: Source) -> ParquetSource:
    """Resolve ``source`` to its Parquet files and read every footer (so a bad file fails before any work).

    ``source``: a path or fsspec URL (``file://``, ``memory://``, ...) of a file, a directory (every file below it
    whose path has no part starting with ``.`` or ``_``), a glob, or a list of those.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise SourceNotFoundError("no Parquet source given (empty list)")
    given = tuple(os.fspath(item) for item in items)
    parts = tuple(part for item in given for part in _expand(item))
    num_rows = 0
    schema = None
    for part in parts:
        with part.open() as parquet:
            num_rows += parquet.metadata.num_rows
            schema = schema or parquet.schema_arrow
    return ParquetSource(given, parts, schema, num_rows)


def _expand(item: str) -> list[ParquetPart]:
    """The files one source item names, sorted."""
    fs, path = fsspec.core.url_to_fs(item)
    if any(ch in path for ch in "*?["):
        matches = sorted(fs.glob(path))
        if not matches:
            raise SourceNotFoundError(f"no files match {item}")
    elif fs.exists(path):
        matches = [path]
    else:
        raise SourceNotFoundError(f"{item} does not exist")
    files = [f for m in matches for f in (_files_below(fs, m) if fs.isdir(m) else [m])]
    if not files:
        raise SourceNotFoundError(f"{item} holds no data files")
    local = isinstance(fs, LocalFileSystem)
    filesystem = pafs.LocalFileSystem() if local else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return [ParquetPart(filesystem, f, f if local else fs.unstrip_protocol(f)) for f in files]


def _files_below(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    """Files under ``directory`` (recursively), skipping hidden and ``_``-prefixed names such as ``_SUCCESS``."""
    root = directory.rstrip("/")
    return sorted(
        f for f in fs.find(root)
        if not any(p.startswith((".", "_")) for p in posixpath.relpath(f, root).split("/"))
    )
