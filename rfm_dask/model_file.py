"""Model files: NumPy arrays plus JSON metadata in one zip archive. No pickle, written atomically, checked on load.

Layout of the archive::

    metadata.json        {"format": "rfm_dask.model", "format_version": 1, "rfm_dask_version": ..., "estimator": ...,
                          "state": {...}, "arrays": {name: {"shape", "dtype", "sha256"}}}
    arrays/<name>.npy    one .npy file per array, read with allow_pickle=False

Loading refuses, with a ``ModelFileError`` naming the problem, anything that is not such an archive: a truncated or
corrupt file, a file from a newer format version, missing or altered arrays (checked against their SHA-256).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path

FORMAT = "rfm_dask.model"
FORMAT_VERSION = 1
_METADATA = "metadata.json"


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
    """Read a model file: (estimator class name, state, arrays). Raises ModelFileError for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                metadata = json.loads(archive.read(_METADATA))
            except KeyError:
                raise ModelFileError(f"{path} is a zip archive but not an rfm_dask model (no {_METADATA})") from None
            _check_header(path, metadata)
            arrays = {name: _read_array(path, archive, name, info) for name, info in metadata["arrays"].items()}
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


def _read_array(path: Path, archive: zipfile.ZipFile, name: str, info: dict) -> np.ndarray:
    try:
        blob = archive.read(f"arrays/{name}.npy")
    except KeyError:
        raise ModelFileError(f"{path}: array {name!r} is missing from the model file") from None
    if _sha256(blob) != info.get("sha256"):
        raise ModelFileError(f"{path}: array {name!r} is corrupt (checksum mismatch)")
    try:
        array = np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)
    except ValueError as exc:
        raise ModelFileError(f"{path}: array {name!r} cannot be read without pickle ({exc})") from None
    if list(array.shape) != info.get("shape") or array.dtype.str != info.get("dtype"):
        raise ModelFileError(f"{path}: array {name!r} does not match its recorded shape/dtype")
    return array
