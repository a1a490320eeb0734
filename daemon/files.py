"""Whole-file writes and moves that a reader (or a crash) never sees half done.

write_atomic: temp file beside it, fsync, rename; used for job.json, the janitor's state and the
Prometheus textfile. Its temp name starts with a dot and ends in .tmp, so node_exporter's textfile
collector (which reads *.prom) and the janitor itself ignore it. move: rename, or copy + fsync + unlink
across filesystems; used by the claim and by failure filing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace *path* with *data* in one rename; on any error the old file is left as it was.

    *durable*: fsync before the rename, so a power cut leaves the old file or the new one, never an empty
    one. Only files whose loss costs nothing skip it (a worker's heartbeat; a render's record, whose absence
    only means the render is done again): an fsync is 4 ms or more on many disks, per file."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def move(src: Path, dst: Path) -> None:
    """rename(2), or copy + fsync + unlink across filesystems. Never follows a symlink."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        if src.is_symlink() or not src.is_file():
            raise
        shutil.copyfile(src, dst, follow_symlinks=False)
        with open(dst, "rb") as handle:
            os.fsync(handle.fileno())
        os.unlink(src)


def exists_at(dir_fd: int, name: str) -> bool:
    """Whether *name* is in the folder open as *dir_fd*, as itself (a symlink counts, never followed)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True
