"""Atomic writes: build the output under a temporary sibling name, rename it into place only when complete."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same directory, so the rename is atomic); on success it replaces
    ``path``, on error it is removed, file or directory, with the parent directories made for it, and ``path`` is
    left untouched."""
    path = Path(path)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)  # keep the extension: writers such as matplotlib pick a format from it
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}{suffix}")
    done = False
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
        done = True
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        for directory in made if not done else ():
            try:
                directory.rmdir()
            except OSError:  # not empty (written meanwhile by someone else) or already gone
                break


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
