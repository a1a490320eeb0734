"""Carrying out a prune plan without ever leaving the root: no symlinks, no other filesystems, no surprises.

Every folder is opened relative to its parent's file descriptor with O_NOFOLLOW, and checked to be on
the root's filesystem, so a folder swapped for a symlink after the plan was made is refused rather than
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.janitor.plan import Group, Member, Plan

if TYPE_CHECKING:
    from daemon.janitor.unlinker import Unlinker

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Someone else got there first, or the folder was refilled: not a failure of the pass.
_GONE = (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST)
REFUSED, FAILED = "refused", "failed"
# An output not deleted whole: (its index in the folder's list, files deleted, REFUSED|FAILED, errno, text).
Problem = tuple[int, int, str, int, str]
# What became of one folder: its problems, and its removal (None: not tried; (errno, text); (0, "") removed).
FolderResult = tuple[list[Problem], tuple[int, str] | None]


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
        self.add(group.root, group.reason, files, size, freed)

    def add(self, root: str, reason: str, files: int, size: int, freed: int) -> None:
        self.files += files
        self.bytes += size
        self.freed += freed
        self.by_reason[reason] = self.by_reason.get(reason, 0) + size
        self.freed_by_root[root] = self.freed_by_root.get(root, 0) + freed


class _Folders:
    """Opens root/<parts...> one component at a time (O_NOFOLLOW), keeping the chain of open folders so that
    the next folder of the same date reuses the root's and the date's descriptors."""

    def __init__(self, root: str, dev: int) -> None:
        self.root, self.dev = root, dev
        self._chain: list[tuple[str, int]] = []  # [(name, fd)]: root, then each part

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
        if os.fstat(fd).st_dev != self.dev:
            self.close()
            raise Refused(f"{name} is on another filesystem")

    def close(self) -> None:
        while self._chain:
            os.close(self._chain.pop()[1])


class Executor:
    """Carries out a plan's deletions, starting while the plan is still being made.

    The planner hands over each folder's expired outputs as soon as the folder is read (Planner's
    on_folder), and the helper process deletes them while the planner reads on; other groups (temps,
    failed/ entries, the watermark's) come one by one (on_delete) and are deleted here. finish() waits
    for the helper and removes the emptied folders. Order and content are the plan's, so a dry run still
    prints exactly what happens. (A deleting thread was tried: Python's GIL hand-offs made it slower.)
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.outcome = Outcome()
        self._openers: dict[str, _Folders] = {}
        self._helper: Unlinker | None = None  # started at the first submit_folder
        self._handed: list[tuple[str, tuple[str, str], list[Group]]] = []  # what the helper was handed
        self._removed: set[tuple[str, tuple[str, ...]]] = set()  # (root, folder) removed (or tried) with its outputs

    def submit(self, group: Group) -> None:
        plan, outcome = self.plan, self.outcome
        try:
            opener = self._opener(group.root)
            fd = opener.open(group.folder)  # the open chain is reused while the folder stays the same
            if group.kind == "failed":
                _remove_entry(fd, group, opener.dev, outcome)
            else:
                stamp = plan.stamps.get((group.root, *group.folder))
                self._account(group.root, group.folder, [group], delete_outputs([fd], (stamp, [group.members], None)))
        except Refused as exc:
            outcome.skipped.append({"path": plan.path_of(group), "why": str(exc)})
        except OSError as exc:
            _record_error(plan.path_of(group), exc, outcome)

    def submit_folder(self, fd: int, root: str, folder: tuple[str, str], stamp: int, groups: list[Group],
                      parent_fd: int | None = None) -> None:
        """Delete one folder's planned outputs through the planner's own fd of that folder (opened O_NOFOLLOW
        relative to its parent and checked to be on the root's filesystem), while the planner still holds it.

        parent_fd (the planner's fd of the folder above) is given when the pass empties the folder: it is
        then removed right away, relative to that fd. The unlinks run in the helper process (unlinker.py),
        which receives these very descriptors, so the planner reads the next folder meanwhile; without a
        helper they run here. Same checks either way (delete_outputs). The counts are taken when the results
        are in (finish)."""
        then_remove = folder[-1] if parent_fd is not None else None
        payload = (stamp, [group.members for group in groups], then_remove)
        fds = [fd] if parent_fd is None else [fd, parent_fd]
        if self._helper is None:
            from daemon.janitor.unlinker import Unlinker  # socket and pickle: only for a pass that deletes

            self._helper = Unlinker(delete_outputs)
            # On one CPU the helper would only take turns with the planner: not started, it takes nothing.
            if Unlinker.worthwhile() and not self._helper.start():
                log.warning("deleting in the janitor's own process: %s", self._helper.failure)
        if self._helper.submit(fds, payload):
            self._handed.append((root, folder, groups))
        else:
            self._account(root, folder, groups, delete_outputs(fds, payload))

    def _account(self, root: str, folder: tuple[str, str], groups: list[Group], result: FolderResult) -> None:
        """Add one folder's results to the outcome: every output counted whole unless a problem names it."""
        outcome, plan = self.outcome, self.plan
        problems, removal = result
        if removal is not None:  # the folder's removal was attempted: _remove_folders leaves it be
            self._removed.add((root, folder))
            if removal[0] == 0:
                outcome.folders += 1
            else:
                _record_error(os.path.join(plan.roots[root], *folder), OSError(*removal), outcome)
        bad = {problem[0]: problem for problem in problems} if problems else None
        sums: dict[str, list[int]] = {}  # reason -> [files, bytes, freed] of the outputs deleted whole
        for index, group in enumerate(groups):
            problem = bad.get(index) if bad else None
            if problem is None:
                total = sums.get(group.reason)
                if total is None:
                    total = sums[group.reason] = [0, 0, 0]
                total[0] += len(group.members)
                total[1] += group.size
                total[2] += group.freed
                continue
            _, done, kind, number, text = problem
            if kind == REFUSED:
                outcome.skipped.append({"path": plan.path_of(group), "why": text})
            else:
                _record_error(plan.path_of(group), OSError(number, text), outcome)
            if done:
                part = group.members[:done]
                outcome.count(group, done, sum(m[1] for m in part), sum(m[2] for m in part))
        for reason, (files, size, freed) in sums.items():
            outcome.add(root, reason, files, size, freed)

    def _collect(self) -> None:
        """Wait for the helper and account for what it did; what it cannot account for is an error."""
        helper, handed = self._helper, self._handed
        self._helper, self._handed = None, []
        if helper is None:
            return
        results = helper.finish()
        if results is None:
            log.error("the janitor's deleting helper stopped early: %s", helper.failure)
            for _root, _folder, groups in handed:
                group = groups[0]
                self.outcome.errors.append({
                    "path": os.path.dirname(self.plan.path_of(group)),
                    "error": f"{helper.failure}; what it deleted in this folder is unknown (the next pass looks "
                             "again)"})
            return
        for (root, folder, groups), result in zip(handed, results, strict=True):
            self._account(root, folder, groups, result)

    def finish(self) -> Outcome:
        """Wait for the deletions handed to the helper, remove the emptied folders and close everything."""
        try:
            self._collect()
            self._remove_folders()
        finally:
            self.close()
        return self.outcome

    def close(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None
        for opener in self._openers.values():
            opener.close()

    def _opener(self, root: str) -> _Folders:
        opener = self._openers.get(root)
        if opener is None:
            opener = self._openers[root] = _Folders(self.plan.roots[root], self.plan.devs[root])
        return opener

    def _remove_folders(self) -> None:
        plan, outcome = self.plan, self.outcome
        for root, parts in plan.folders:
            if (root, parts) in self._removed:
                continue
            try:
                fd = self._opener(root).open(parts[:-1])
                os.rmdir(parts[-1], dir_fd=fd)
                outcome.folders += 1
            except Refused as exc:
                outcome.skipped.append({"path": os.path.join(plan.roots[root], *parts), "why": str(exc)})
            except OSError as exc:
                _record_error(os.path.join(plan.roots[root], *parts), exc, outcome)


def carry_out(plan: Plan) -> Outcome:
    """Delete what a finished *plan* lists, in its order. Never raises for a single path; see Outcome.errors."""
    executor = Executor(plan)
    for group in plan.deletions:
        executor.submit(group)
    return executor.finish()


def _record_error(path: str, exc: OSError, outcome: Outcome) -> None:
    if exc.errno in _GONE:
        outcome.skipped.append({"path": path, "why": os.strerror(exc.errno or 0).lower()})
    elif exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR:
        outcome.skipped.append({"path": path, "why": "a folder on the way is now a symlink or a file (refused)"})
    else:
        log.error("cannot delete %s: %s", path, exc.strerror or exc)
        outcome.errors.append({"path": path, "error": exc.strerror or str(exc)})


def delete_outputs(fds: list[int], payload: tuple[int | None, list[list[Member]], str | None]) -> FolderResult:
    """Delete one folder's planned outputs through its descriptor fds[0]: (the outputs not deleted whole,
    how removing the emptied folder went: None if not asked or not tried, else (errno, text), (0, "") = done).

    payload: (the folder's mtime_ns seen while planning (None: unknown), each output's members, the folder's
    name to remove from fds[1] once its outputs are gone, or None). When the folder's mtime is unchanged no
    name in it was added, removed or replaced since, so the files are not checked one by one; otherwise each
    output's files are checked together first (inode + mtime), so it goes whole or not at all. Plain data in
    and out: this runs in the helper process (unlinker.py) or, without one, in the janitor."""
    fd = fds[0]
    stamp, outputs, then_remove = payload
    problems: list[Problem] = []
    try:
        verify = os.fstat(fd).st_mtime_ns != stamp
    except OSError as exc:
        return [(index, 0, FAILED, exc.errno or 0, exc.strerror or str(exc)) for index in range(len(outputs))], None
    unlink = os.unlink
    for index, members in enumerate(outputs):
        done = 0
        try:
            if verify:
                _verify(fd, members)
            for member in members:
                unlink(member[0], dir_fd=fd)
                done += 1
        except Refused as exc:
            problems.append((index, done, REFUSED, 0, str(exc)))
        except OSError as exc:
            problems.append((index, done, FAILED, exc.errno or 0, exc.strerror or str(exc)))
    if then_remove is None or problems:
        return problems, None
    try:
        os.rmdir(then_remove, dir_fd=fds[1])
    except OSError as exc:
        return problems, (exc.errno or 0, exc.strerror or str(exc))
    return problems, (0, "")


def _verify(fd: int, members: list[Member]) -> None:
    """Raise Refused unless every file of the output is still the planned one (same inode and mtime)."""
    for name, _size, _freed, mtime_ns, ino in members:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != ino or st.st_mtime_ns != mtime_ns:
            raise Refused(f"{name} changed since the plan was made")


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
