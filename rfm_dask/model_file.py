"""Model files: NumPy arrays plus JSON metadata in one zip archive. No pickle, written atomically, checked on load.

Layout of the archive::

    metadata.json        {"format": "rfm_dask.model", "format_version": 2, "rfm_dask_version": ..., "estimator": ...,
                          "state": {...}, "arrays": {name: {"shape", "dtype", "sha256"}}}
    arrays/<name>.npy    one .npy file per array, read with allow_pickle=False

Loading refuses, with a ``ModelFileError`` naming the problem, anything that is not such an archive: a truncated or
corrupt file, a file from a newer format version, missing or altered arrays (checked against their SHA-256), arrays
holding NaN or infinity. Its memory is bounded before anything is decompressed: the members' sizes recorded in the
zip directory (which ``zipfile`` never reads past) must stay within the ``rfm.model-file`` limits (total, metadata,
compression ratio), and each .npy header must declare the shape and dtype the metadata records and exactly the
member's size. Arrays are then read in pieces straight into their buffers, so a load needs about the arrays' size.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from . import config
from .atomic import atomic_path

FORMAT = "rfm_dask.model"
#: 1: one global model. 2: also trees of leaf models (an estimator's state "tree", arrays ``tree_*`` and
#: ``leaf<j>_*``). Files of every version up to this one are read.
FORMAT_VERSION = 2
_METADATA = "metadata.json"
_PIECE = 1 << 20  # bytes read from a member at a time
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what write_model_file uses


class ModelFileError(ValueError):
    """A model file that cannot be read: missing, corrupt, truncated, or from an incompatible version."""


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_model_file(
    path: str | os.PathLike, estimator: str, state: dict, arrays: dict[str, np.ndarray], overwrite: bool = False
) -> Path:
    """Write ``arrays`` (numeric NumPy arrays) and the JSON-serialisable ``state`` of an ``estimator`` class name."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    from . import __version__

    blobs = {}
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise TypeError(f"array {name!r} has dtype object, which cannot be saved without pickle")
        blobs[name] = _npy_bytes(array)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rfm_dask_version": __version__,
        "estimator": estimator,
        "state": state,
        "arrays": {
            name: {"shape": list(arrays[name].shape), "dtype": arrays[name].dtype.str, "sha256": _sha256(blob)}
            for name, blob in blobs.items()
        },
    }
    text = json.dumps(metadata, indent=1, default=_json_default, allow_nan=True)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(_METADATA, text)
            for name, blob in blobs.items():
                archive.writestr(f"arrays/{name}.npy", blob)
    return path


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def read_model_file(path: str | os.PathLike) -> tuple[str, dict, dict[str, np.ndarray]]:
    """Read a model file: (estimator class name, state, arrays). Raises ModelFileError for anything unreadable,
    and for a file whose members exceed the ``rfm.model-file`` size limits, before decompressing them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo(_METADATA)
            except KeyError:
                raise ModelFileError(f"{path} is a zip archive but not an rfm_dask model (no {_METADATA})") from None
            limit = int(config.get("model-file.max-metadata-bytes"))
            if info.file_size > limit:
                raise ModelFileError(f"{path}: its {_METADATA} is {info.file_size} bytes decompressed, more than "
                                     f"rfm.model-file.max-metadata-bytes={limit}")
            metadata = json.loads(_read_member(path, archive, info))
            _check_header(path, metadata)
            members = {name: _array_member(path, archive, name) for name in metadata["arrays"]}
            _check_sizes(path, [info, *members.values()])
            arrays = {name: _read_array(path, archive, members[name], name, entry)
                      for name, entry in metadata["arrays"].items()}
    except (zipfile.BadZipFile, zlib.error) as exc:
        raise ModelFileError(f"{path} is not a readable rfm_dask model file (corrupt or truncated: {exc})") from None
    except (NotImplementedError, RuntimeError) as exc:  # zipfile: unknown compression or version, encryption
        raise ModelFileError(f"{path} is not a readable rfm_dask model file (corrupt, or zip features rfm_dask "
                             f"does not write: {exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: the model metadata is not valid JSON ({exc})") from None
    except (OSError, EOFError, zipfile.LargeZipFile) as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc})") from None
    return metadata["estimator"], metadata["state"], arrays


def _check_header(path: Path, metadata: Any) -> None:
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an rfm_dask model file (its metadata names no {FORMAT!r} format)")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: invalid model format version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written in model format {version} by rfm_dask {metadata.get('rfm_dask_version')}; "
            f"this rfm_dask reads format {FORMAT_VERSION} or older: upgrade rfm_dask"
        )
    for key, kind in (("estimator", str), ("state", dict), ("arrays", dict)):
        if not isinstance(metadata.get(key), kind):
            raise ModelFileError(f"{path}: model metadata lacks a valid {key!r} entry")
    for name, info in metadata["arrays"].items():
        if not isinstance(info, dict):
            raise ModelFileError(f"{path}: model metadata describes array {name!r} by {info!r}, not a dict")


def _array_member(path: Path, archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(f"arrays/{name}.npy")
    except KeyError:
        raise ModelFileError(f"{path}: array {name!r} is missing from the model file") from None


def _check_sizes(path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse members that ``zipfile`` would decompress beyond the limits, before any is read: their total size,
    and, above ``rfm.model-file.ratio-exempt-bytes``, their ratio to the file's size (deflate bombs reach ~1000)."""
    for info in members:
        if info.compress_type not in _ZIP_METHODS:
            raise ModelFileError(f"{path} is not a readable rfm_dask model file (corrupt, or zip features rfm_dask "
                                 f"does not write: compression method {info.compress_type} of {info.filename})")
    total = sum(info.file_size for info in members)
    limit = int(config.get("model-file.max-bytes"))
    if total > limit:
        raise ModelFileError(f"{path}: its members are {total} bytes decompressed, more than "
                             f"rfm.model-file.max-bytes={limit}")
    ratio = total / max(path.stat().st_size, 1)
    if total > int(config.get("model-file.ratio-exempt-bytes")) and ratio > float(config.get("model-file.max-ratio")):
        raise ModelFileError(f"{path}: its members are {total} bytes decompressed, {ratio:.0f} times the file's size "
                             f"(more than rfm.model-file.max-ratio={config.get('model-file.max-ratio')}): a "
                             f"compression bomb, not a model")


class _Member:
    """A zip member read in pieces of at most ``_PIECE`` bytes, hashed (SHA-256) as it is read."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
        self.path, self.name, self.size = path, info.filename, info.file_size
        self.handle = archive.open(info)
        self.digest = hashlib.sha256()
        self.offset = 0  # bytes read so far

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the member's end)."""
        data = self.handle.read(n)
        self.digest.update(data)
        self.offset += len(data)
        return data

    def read_into(self, buffer: memoryview) -> None:
        """Fill ``buffer`` (bytes) from the member; a member that ends early is refused."""
        for start in range(0, len(buffer), _PIECE):
            piece = self.read(min(_PIECE, len(buffer) - start))
            buffer[start:start + len(piece)] = piece
            if start + len(piece) < min(start + _PIECE, len(buffer)):
                raise ModelFileError(f"{self.path}: {self.name} ends before its recorded {self.size} bytes")

    def close(self) -> None:
        self.handle.close()


def _read_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytearray:
    """A member's bytes, read in pieces after checking its size against the limits."""
    _check_sizes(path, [info])
    buffer = bytearray(info.file_size)
    member = _Member(path, archive, info)
    try:
        member.read_into(memoryview(buffer))
    finally:
        member.close()
    return buffer


def _read_array(path: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo, name: str, info: dict) -> np.ndarray:
    """One array: its .npy header must declare the metadata's shape and dtype, a numeric dtype and exactly the
    member's size before its data is read (in pieces, into the array's own buffer); then its SHA-256 and its values
    (all finite) are checked."""
    reader = _Member(path, archive, member)
    try:
        shape, fortran, dtype = _npy_header(path, name, reader)
        if list(shape) != info.get("shape") or dtype.str != info.get("dtype"):
            raise ModelFileError(f"{path}: array {name!r} does not match its recorded shape/dtype")
        nbytes = math.prod(shape) * dtype.itemsize
        if reader.offset + nbytes != member.file_size:
            raise ModelFileError(f"{path}: array {name!r} declares {nbytes} bytes of data in a member of "
                                 f"{member.file_size} bytes")
        array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        reader.read_into(memoryview(array.reshape(-1, order="A").view(np.uint8)))  # to the member's end
    finally:
        reader.close()
    if reader.digest.hexdigest() != info.get("sha256"):
        raise ModelFileError(f"{path}: array {name!r} is corrupt (checksum mismatch)")
    if dtype.kind in "fc" and not np.isfinite(array).all():
        raise ModelFileError(f"{path}: array {name!r} holds NaN or infinite values")
    return array


def _npy_header(path: Path, name: str, reader: _Member) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) from a .npy header; a dtype that is not numeric (objects need pickle) is
    refused."""
    try:
        version = np.lib.format.read_magic(reader)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(reader)
    except ValueError as exc:
        raise ModelFileError(f"{path}: array {name!r} has no readable .npy header ({exc})") from None
    if any(n < 0 for n in shape):
        raise ModelFileError(f"{path}: array {name!r} has a .npy header of negative shape {shape}")
    if dtype.hasobject:
        raise ModelFileError(f"{path}: array {name!r} has dtype object, which cannot be read without pickle")
    if dtype.kind not in "biufc" or dtype.subdtype is not None or dtype.names is not None:
        raise ModelFileError(f"{path}: array {name!r} has dtype {dtype}, not a number type")
    return shape, bool(fortran), dtype
