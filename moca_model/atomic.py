"""Atomic file writes: write to a temporary file in the target's folder, then rename it into place, so a
crash never leaves a half-written file, and an existing file is only replaced when the caller says so."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_target(path, overwrite: bool = False, suffix: str = ".tmp"):
    """`with atomic_target(path) as tmp: write(tmp)` -> `path` appears only if the block succeeds.
    `suffix` lets writers that pick a format from the name (e.g. ".mp4") see the right extension."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or pass overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        # mkstemp (and safetensors, which replaces the file) make 0600: give it the mode open() would
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:          # the bytes are on disk before the name points at them
            os.fsync(f.fileno())
        if path.exists() and not overwrite:  # appeared meanwhile: still never overwrite silently
            raise FileExistsError(f"{path} appeared while writing; choose another name or pass overwrite=True")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)               # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask
