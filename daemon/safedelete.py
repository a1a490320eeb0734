"""Carrying out a prune plan without ever leaving the root: no symlinks, no other filesystems, no surprises.

Every folder is opened relative to its parent's file descriptor with O_NOFOLLOW, and checked to be on
the root's filesystem, so a folder swapped for a symlink after the plan was made is refused rather than
followed. A file is deleted only if it is still the file that was planned (same inode and mtime);
an output's files are checked together first, so an output is deleted whole or not at all.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from daemon.prune import Group, Plan

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Someone else got there first, or the folder was refilled: not a failure of the pass.
_GONE = (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST)


class Refused(Exception):
    """A path the janitor will not touch (symlink, other filesystem, changed since planned)."""


@dataclass
class Outcome:
    """What a pass actually did."""

    files: int = 0
    bytes: int = 0  # sizes of the deleted files
    freed: int = 0  # allocated bytes given back to the filesystem
    folders: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)  # reason -> bytes
    freed_by_root: dict[str, int] = field(default_factory=dict)  # "outputs"/"failed" -> allocated bytes freed
    skipped: list[dict[str, str]] = field(default_factory=list)  # changed or gone since planned
    errors: list[dict[str, str]] = field(default_factory=list)  # could not delete: the pass failed

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "freed": self.freed, "folders": self.folders,
                "by_reason": self.by_reason, "skipped": self.skipped, "errors": self.errors}

    def count(self, group: Group, files: int, size: int, freed: int) -> None:
        self.files += files
        self.bytes += size
        self.freed += freed
        self.by_reason[group.reason] = self.by_reason.get(group.reason, 0) + size
        self.freed_by_root[group.root] = self.freed_by_root.get(group.root, 0) + freed


class _Folders:
    """Opens root/<parts...> one component at a time (O_NOFOLLOW), caching the last folder opened."""

    def __init__(self, root: str, dev: int) -> None:
        self.root, self.dev = root, dev
        self._key: tuple[str, ...] | None = None
        self._fd: int | None = None

    def open(self, parts: tuple[str, ...]) -> int:
        if self._key == parts and self._fd is not None:
            return self._fd
        self.close()
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            self._check(fd, self.root)
            for part in parts:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                self._check(fd, part)
        except BaseException:
            os.close(fd)
            raise
        self._key, self._fd = parts, fd
        return fd

    def _check(self, fd: int, name: str) -> None:
        if os.fstat(fd).st_dev != self.dev:
            raise Refused(f"{name} is on another filesystem")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._key = self._fd = None


def carry_out(plan: Plan) -> Outcome:
    """Delete what *plan* lists, in its order. Never raises for a single path; see Outcome.errors."""
    outcome = Outcome()
    openers = {root: _Folders(path, plan.devs[root]) for root, path in plan.roots.items() if root in plan.devs}
    try:
        for group in plan.deletions:
            try:
                fd = openers[group.root].open(group.folder)
                if group.kind == "failed":
                    _remove_entry(fd, group, openers[group.root].dev, outcome)
                else:
                    _remove_group(fd, group, outcome)
            except Refused as exc:
                outcome.skipped.append({"path": plan.path_of(group), "why": str(exc)})
            except OSError as exc:
                _record_error(plan.path_of(group), exc, outcome)
        for root, parts in plan.folders:
            path = os.path.join(plan.roots[root], *parts)
            try:
                fd = openers[root].open(parts[:-1])
                os.rmdir(parts[-1], dir_fd=fd)
                outcome.folders += 1
            except Refused as exc:
                outcome.skipped.append({"path": path, "why": str(exc)})
            except OSError as exc:
                _record_error(path, exc, outcome)
    finally:
        for opener in openers.values():
            opener.close()
    return outcome


def _record_error(path: str, exc: OSError, outcome: Outcome) -> None:
    if exc.errno in _GONE:
        outcome.skipped.append({"path": path, "why": os.strerror(exc.errno or 0).lower()})
    elif exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR:
        outcome.skipped.append({"path": path, "why": "a folder on the way is now a symlink or a file (refused)"})
    else:
        log.error("cannot delete %s: %s", path, exc.strerror or exc)
        outcome.errors.append({"path": path, "error": exc.strerror or str(exc)})


def _remove_group(fd: int, group: Group, outcome: Outcome) -> None:
    """Delete an output's files together, only if every one is still the planned file."""
    for name, _size, _freed, mtime_ns, ino in group.members:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != ino or st.st_mtime_ns != mtime_ns:
            raise Refused(f"{name} changed since the plan was made")
    for name, size, freed, _mtime, _ino in group.members:
        os.unlink(name, dir_fd=fd)
        outcome.count(group, 1, size, freed)


def _remove_entry(fd: int, group: Group, dev: int, outcome: Outcome) -> None:
    """Delete a failed/ entry (a folder, or a lone file) if it is still the planned one."""
    name, size, freed, _mtime, ino = group.members[0]
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if st.st_ino != ino:
        raise Refused(f"{name} changed since the plan was made")
    if stat.S_ISDIR(st.st_mode):
        files = _remove_tree(fd, name, dev)
    elif stat.S_ISREG(st.st_mode):
        os.unlink(name, dir_fd=fd)
        files = 1
    else:
        raise Refused(f"{name} is not a file or folder")
    outcome.count(group, files, size, freed)


def _remove_tree(parent_fd: int, name: str, dev: int) -> int:
    """rm -r of parent/name through directory file descriptors: symlinks are unlinked, never followed."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    files = 0
    try:
        if os.fstat(fd).st_dev != dev:
            raise Refused(f"{name} is on another filesystem")
        with os.scandir(fd) as it:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for child, is_dir in children:
            if is_dir:
                files += _remove_tree(fd, child, dev)
            else:
                os.unlink(child, dir_fd=fd)
                files += 1
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
    return files
