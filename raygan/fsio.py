"""Durable writes: a rename is atomic, but without fsync a crash can leave the new name
pointing at empty or partial data, or lose the rename itself.

Data is fsynced before the rename (so the new name never reaches disk ahead of its
contents) and the parent directory after it (so the rename itself survives a crash).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

FILE_MODE = 0o644  # results are shared artefacts; mkstemp alone would make them 0o600


def fsync_file(path: str | Path) -> None:
    """Flush one file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (creations, renames, deletions) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        # Some filesystems (certain FUSE and network mounts) cannot sync a directory at all;
        # a real I/O error must still surface.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(directory: str | Path) -> None:
    """fsync every file under `directory`, then every directory bottom-up, so that a rename
    of `directory` never becomes durable before its contents."""
    directory = Path(directory)
    for root, _, files in os.walk(directory, topdown=False):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(root)


def write_json_atomic(path: str | Path, obj: Any, **dump_kwargs: Any) -> Path:
    """Write `obj` as JSON to `path` so that readers see the old file or the new one, never
    a mix, even after a crash. `dump_kwargs` go to `json.dumps` (indent 2 by default)."""
    path = Path(path)
    dump_kwargs.setdefault("indent", 2)
    text = json.dumps(obj, **dump_kwargs)  # serialise first: a bad object touches nothing
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
