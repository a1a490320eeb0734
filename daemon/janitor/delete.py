"""Carrying out a prune plan without ever leaving the root: no symlinks, no other filesystems, no surprises.

Every folder is reached through a descriptor opened relative to its parent with O_NOFOLLOW and checked
to be on the root's filesystem (the planner's own, while it still holds the folder, else opened again
from the root), so a folder swapped for a symlink after the plan was made is refused rather than
followed. A file is deleted only if it is still the file that was planned (same inode and mtime);
an output's files are checked together first, so an output is deleted whole or not at all. (Fast path:
when a folder's mtime is the one seen while planning, no name in it was added, removed or replaced
since, so its files are not checked one by one.)
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from daemon.janitor.plan import LISTED, Group, Member, Plan, Step, empty_tree, mount_id

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
    skipped: list[dict[str, str]] = field(default_factory=list)  # changed or gone since planned (first LISTED)
    errors: list[dict[str, str]] = field(default_factory=list)  # could not delete: the pass failed (first LISTED)
    skipped_count: int = 0
    error_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "freed": self.freed, "folders": self.folders,
                "by_reason": self.by_reason, "skipped": self.skipped, "skipped_count": self.skipped_count,
                "errors": self.errors, "error_count": self.error_count}

    def count(self, group: Group, files: int, size: int, freed: int) -> None:
        self.files += files
        self.bytes += size
        self.freed += freed
        self.by_reason[group.reason] = self.by_reason.get(group.reason, 0) + size
        self.freed_by_root[group.root] = self.freed_by_root.get(group.root, 0) + freed

    def skip(self, path: str, why: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < LISTED:
            self.skipped.append({"path": path, "why": why})

    def failed(self, path: str, exc: OSError) -> None:
        """An OSError on *path*: someone else's doing (skipped) or a failure of the pass (errors)."""
        if exc.errno in _GONE:
            self.skip(path, os.strerror(exc.errno or 0).lower())
        elif exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR:
            self.skip(path, "a folder on the way is now a symlink or a file (refused)")
        else:
            self.error_count += 1
            if len(self.errors) < LISTED:
                log.error("cannot delete %s: %s", path, exc.strerror or exc)
                self.errors.append({"path": path, "error": exc.strerror or str(exc)})


class _Folders:
    """Opens root/<parts...> one component at a time (O_NOFOLLOW), keeping the chain of open folders so that
    the next folder of the same date reuses the root's and the date's descriptors."""

    def __init__(self, root: str, dev: int) -> None:
        self.root, self.dev = root, dev
        self._chain: list[tuple[str, int]] = []  # [(name, fd)]: root, then each part
        self._mount: int | None = None  # the root's mount id, once opened

    def open(self, parts: tuple[str, ...]) -> int:
        wanted = ("", *parts)
        chain = self._chain
        keep = 0
        while keep < len(chain) and keep < len(wanted) and chain[keep][0] == wanted[keep]:
            keep += 1
        if keep == len(wanted) == len(chain):
            return chain[-1][1]
        while len(chain) > keep:
            os.close(chain.pop()[1])
        if not chain:
            fd = os.open(self.root, _DIR_FLAGS)
            chain.append(("", fd))
            self._check(fd, self.root)
        for part in wanted[len(chain):]:
            fd = os.open(part, _DIR_FLAGS, dir_fd=chain[-1][1])
            chain.append((part, fd))
            self._check(fd, part)
        return chain[-1][1]

    def _check(self, fd: int, name: str) -> None:
        mount = mount_id(fd)
        if self._mount is None:
            self._mount = mount  # the root's
        if os.fstat(fd).st_dev != self.dev or mount != self._mount:
            self.close()
            raise Refused(f"{name} is a mount point (another filesystem or a bind mount)")

    def close(self) -> None:
        while self._chain:
            os.close(self._chain.pop()[1])


class Executor:
    """Carries out a plan's steps one folder at a time, in the plan's order and with its content, so a dry
    run prints exactly what happens. A step never raises for a single path: see Outcome.skipped/errors."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.outcome = Outcome()
        self._openers: dict[str, _Folders] = {}

    def do(self, step: Step) -> None:
        """Delete the step's groups in its folder, then remove the folder if the step says so."""
        plan, outcome = self.plan, self.outcome
        if step.groups:
            try:
                fd = step.fd if step.fd is not None else self._opener(step.root).open(step.folder)
                verify = os.fstat(fd).st_mtime_ns != step.stamp
            except Refused as exc:
                for group in step.groups:
                    outcome.skip(plan.path_of(group), str(exc))
            except OSError as exc:
                for group in step.groups:
                    outcome.failed(plan.path_of(group), exc)
            else:
                for group in step.groups:
                    if group.kind == "failed":
                        self._remove_entry(fd, group)
                    else:
                        self._delete_output(fd, group, verify)
        if step.remove:
            self._remove_folder(step)

    def _delete_output(self, fd: int, group: Group, verify: bool) -> None:
        """One output's files (or a temp file) through the folder's fd: checked together first unless the
        folder is unchanged since planning, then unlinked; what went is counted even if the rest could not."""
        done = 0
        try:
            if verify:
                _verify(fd, group.members)
            for member in group.members:
                os.unlink(member.name, dir_fd=fd)
                done += 1
        except Refused as exc:
            self.outcome.skip(self.plan.path_of(group), str(exc))
        except OSError as exc:
            self.outcome.failed(self.plan.path_of(group), exc)
        else:
            self.outcome.count(group, done, group.size, group.freed)
            return
        if done:
            part = group.members[:done]
            self.outcome.count(group, done, sum(m.size for m in part), sum(m.freed for m in part))

    def _remove_entry(self, fd: int, group: Group) -> None:
        """Delete a failed/ entry (a folder, or a lone file) if it is still the planned one."""
        name, size, freed, _mtime, ino = group.members[0]
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if st.st_ino != ino:
                raise Refused(f"{name} changed since the plan was made")
            if stat.S_ISDIR(st.st_mode):
                files = _remove_tree(fd, name, self.plan.devs[group.root], mount_id(fd))
            elif stat.S_ISREG(st.st_mode):
                os.unlink(name, dir_fd=fd)
                files = 1
            else:
                raise Refused(f"{name} is not a file or folder")
        except Refused as exc:
            self.outcome.skip(self.plan.path_of(group), str(exc))
        except OSError as exc:
            self.outcome.failed(self.plan.path_of(group), exc)
        else:
            self.outcome.count(group, files, size, freed)

    def _remove_folder(self, step: Step) -> None:
        path = os.path.join(self.plan.roots[step.root], *step.folder)
        try:
            parent = step.parent_fd if step.parent_fd is not None else self._opener(step.root).open(step.folder[:-1])
            if step.tree:
                removed, whole = empty_tree(parent, step.folder[-1], step.tree, None)
                if not whole:
                    raise Refused("the empty folder tree changed since the plan was made")
            else:
                os.rmdir(step.folder[-1], dir_fd=parent)
        except Refused as exc:
            self.outcome.skip(path, str(exc))
        except OSError as exc:
            self.outcome.failed(path, exc)
        else:
            self.outcome.folders += 1

    def _opener(self, root: str) -> _Folders:
        opener = self._openers.get(root)
        if opener is None:
            opener = self._openers[root] = _Folders(self.plan.roots[root], self.plan.devs[root])
        return opener

    def close(self) -> None:
        for opener in self._openers.values():
            opener.close()


def carry_out(plan: Plan, steps: Iterable[Step]) -> Outcome:
    """Carry out each step as it comes (Planner.steps(): a folder's step while the planner holds it open)."""
    executor = Executor(plan)
    try:
        for step in steps:
            executor.do(step)
    finally:
        executor.close()
    return executor.outcome


def _verify(fd: int, members: list[Member]) -> None:
    """Raise Refused unless every file of the output is still the planned one (same inode and mtime)."""
    for member in members:
        st = os.stat(member.name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != member.ino or st.st_mtime_ns != member.mtime_ns:
            raise Refused(f"{member.name} changed since the plan was made")


def _remove_tree(parent_fd: int, name: str, dev: int, mount: int | None) -> int:
    """rm -r of parent/name through directory file descriptors: symlinks are unlinked, never followed, and
    no folder on another mount (*mount*: the parent's mount id) is entered, a bind mount included."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    files = 0
    try:
        if os.fstat(fd).st_dev != dev or mount_id(fd) != mount:
            raise Refused(f"{name} is a mount point (another filesystem or a bind mount)")
        with os.scandir(fd) as it:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for child, is_dir in children:
            if is_dir:
                files += _remove_tree(fd, child, dev, mount)
            else:
                os.unlink(child, dir_fd=fd)
                files += 1
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
    return files
