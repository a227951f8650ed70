"""Checkpoints of the RFM loop: after each completed iteration its state is written atomically, so a fit killed
mid-way resumes from the last complete iteration and ends with the same model as an uninterrupted fit.

A checkpoint is a model-file archive (arrays + JSON, no pickle) whose metadata carries a fingerprint of the fit
(settings, seed state, targets, and every byte of the training and validation rows, by ``rows_digest``); resuming
refuses a checkpoint written for a different fit.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from .backend import to_host
from .model_file import ModelFileError, read_model_file, write_model_file
from .scheduling import Submitter
from .row_blocks import RowBlocks, materialise

KIND = "rfm_dask.checkpoint"


class CheckpointMismatch(ValueError):
    """A checkpoint that belongs to another fit (other settings or data)."""


def fingerprint(settings: Any, meta: dict, arrays: list[np.ndarray]) -> str:
    """SHA-256 of the fit's settings (a dataclass), other JSON-able ``meta`` (the seed state) and the arrays that
    define its data."""
    text = json.dumps({"settings": asdict(settings), **meta}, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def block_digest(block: Any) -> bytes:
    """SHA-256 of one row block (b, d): its dtype, shape and bytes, on the host."""
    block = np.ascontiguousarray(to_host(materialise(block)))
    digest = hashlib.sha256(f"{block.dtype.str}{block.shape}".encode())
    digest.update(block.data)
    return digest.digest()


def rows_digest(client: Client, rows: RowBlocks) -> np.ndarray:
    """Per-block SHA-256 digests of all the rows, computed on the workers (one task per block, a bounded number in
    flight) and listed in block order: (n_blocks, 32) uint8. Any changed value, reordered rows or other block
    split changes it; it costs one read of the rows."""
    calls = ((block_digest, block) for block in rows.futures)
    digests = client.gather(list(Submitter(client).stream(calls, spread=rows.streamed)))
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 32)


def save_checkpoint(path: str | os.PathLike, key: str, state: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write (replace) the checkpoint at ``path`` atomically: JSON ``state`` and numeric ``arrays``."""
    write_model_file(path, KIND, {"fingerprint": key, **state}, arrays, overwrite=True)


def load_checkpoint(path: str | os.PathLike, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """The checkpoint's (state, arrays) if ``path`` exists; raises CheckpointMismatch if it is for another fit."""
    if not Path(path).exists():
        return None
    kind, state, arrays = read_model_file(path)
    if kind != KIND:
        raise ModelFileError(f"{path} is not an rfm_dask checkpoint (it holds {kind!r})")
    if state.get("fingerprint") != key:
        raise CheckpointMismatch(
            f"checkpoint {path} was written by a fit with other settings or data; remove it or resume that fit"
        )
    return state, arrays
