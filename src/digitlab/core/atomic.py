"""Atomic file writes: a kill, a crash or a full disk never leaves a partial file where a whole one was expected."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

from digitlab.core.errors import StorageError

# Errors that more room (or a higher limit) would cure: the message says so.
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create or replace `path` whole or not at all: `write(tmp)` fills a temporary file beside it, which is
    flushed to disk, then renamed over `path`.

    Readers see the old file or the new one, never a mix; on any failure the temporary file is removed and
    `path` is left as it was. An OSError (disk full, file too large, no permission) becomes a one-line
    `StorageError` naming the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden and per-process: writers never collide
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename must not reach the disk before the data does
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:  # a signal raised mid-write included: never leave the temporary file behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise storage_error(path, e) from None
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """`atomic_write` of `data`."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` for text (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def storage_error(path: str | Path, e: OSError) -> StorageError:
    """A one-line error for a failed write of `path`."""
    why = e.strerror or str(e)
    hint = " — free some space (or raise the file-size limit) and try again" if e.errno in _NO_ROOM else ""
    return StorageError(f"cannot write {path}: {why}{hint}")
