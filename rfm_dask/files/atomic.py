"""Atomic writes: build the output under a temporary sibling name, rename it into place only when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
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


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """Raise ``OSError`` naming ``path`` unless a file can be written there (as ``atomic_path`` writes it), leaving
    nothing behind: the nearest existing directory above it must be a directory that takes a new file. For checks
    before long work whose output would otherwise fail only at the end."""
    path = Path(path)
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists() or p == p.parent)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a directory")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=f".{path.name}.probe-"):
            pass
    except OSError as exc:
        raise type(exc)(f"cannot write the {what} {path}: {exc.strerror or exc}") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
