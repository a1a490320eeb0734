"""The prune plan: which outputs and failed/ entries a janitor pass deletes, and why. Reads, never writes.

The plan is made once, date folder by date folder, as a stream of Steps (Planner.steps): a dry run only
lists them, a real pass carries each out (delete.py) as it comes, while the planner still holds that
folder open, so the two can never differ. Nothing of a folder is kept once its step is handed out, so
memory stays flat in the size of the tree (as find's does). Only the documented layout is managed:
  outputs/YYYY-MM-DD/<user>/<stem>.mp4 + .json + .jpg   (one output: its files go together)
  failed/YYYY-MM-DD/<user>/<stem>/                       (one failed entry: the folder goes as a whole)
Anything else under those roots is reported as unmanaged and left alone. Symlinks are never followed,
and mount points are never entered nor deleted: folders on another filesystem (st_dev differs from the
root's), and bind mounts, which share st_dev and are only told apart by the mount table (read once per
pass from /proc/self/mountinfo).

Rules, in order: pinned (<file>.keep, <stem>.keep, or the keep marker in any folder above) is kept;
younger than janitor.min_age_hours is kept; older than its retention (the first matching rule, else
default_days) is "expired". When the filesystem of outputs/ is at or above critical_percent, the
oldest remaining outputs are added ("watermark") until free space would reach target_free_percent:
outputs/ is read a second time, oldest date folder first (date folders are in age order), the oldest
outputs of each date first, so only one date's outputs are held at a time.
Dot-named temp files (a job publishing) younger than min_age_hours, or whose job is still in the
spool, are in flight and kept; older ones are "abandoned-temp".
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple

from daemon.config import Config, RetentionRule
from daemon.disk import FsUsage
from daemon.names import CLAIM_PREFIX, is_date

# The mount table of this process: every mount point below the roots is refused (bind mounts included).
MOUNTINFO = "/proc/self/mountinfo"
_MOUNT_ESCAPE = re.compile(rb"\\([0-7]{3})")  # mountinfo writes space, tab, newline and \ as \ooo
MOUNT_WHY = "a mount point (another filesystem or a bind mount): never entered"

# Empty folder trees (holding nothing but folders) below outputs/ are removed; a pass looks at no more than
# this many such folders in all, so a huge tree costs bounded time (one larger than this is left alone).
EMPTY_FOLDERS_PER_PASS = 10_000
# Paths named one by one in each of the plan's lists (refused, left alone, pin markers); the rest are counted.
LISTED = 100

OUTPUT_SUFFIXES = (".mp4", ".json", ".jpg")
_SUFFIXES = frozenset(suffix[1:] for suffix in OUTPUT_SUFFIXES)
TEMP_MARKS = (".part", ".tmp", ".copy")
DAY = 86400.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Reasons, as they appear in --json and in the metrics.
EXPIRED, WATERMARK, FAILED_EXPIRED, ABANDONED_TEMP, EMPTY_FOLDER = (
    "expired", "watermark", "failed-expired", "abandoned-temp", "empty-folder")


class Member(NamedTuple):
    """One file of a group, as planned: deleted only while it is still this file (inode and mtime)."""

    name: str
    size: int
    freed: int  # allocated bytes its delete gives back (0 while another hard link keeps them)
    mtime_ns: int
    ino: int


@dataclass(slots=True)
class Group:
    """Files that are deleted together: one output's .mp4/.json/.jpg, a temp file, or a failed entry folder."""

    root: str  # "outputs" or "failed"
    folder: tuple[str, str]  # (date, user) under the root
    name: str  # the stem (outputs), the file name (temp), the entry folder's name (failed)
    members: list[Member]
    mtime: float  # the newest member's mtime: the group's age
    size: int  # sum of the members' sizes
    freed: int  # bytes a delete gives back (allocated blocks of files with no other hard link)
    has_video: bool = False
    kind: str = "output"  # output | temp | failed
    reason: str = ""
    detail: str = ""  # why, in words; for "expired" made from keep_days/rule when asked (describe)
    keep_days: float = 0.0
    rule: str = ""
    files: int = 0  # files inside a failed entry folder
    unarchived: bool = False  # archiving is on and its video has no verified copy (archive.py)

    def describe(self, now: float) -> str:
        if self.reason == EXPIRED:
            return f"{(now - self.mtime) / DAY:.1f} days old; kept {self.keep_days:g} days ({self.rule})"
        return self.detail


@dataclass(slots=True)
class Step:
    """What the pass does in one folder: delete *groups* there, then remove the folder itself if *remove*.

    A folder's step is handed out while the planner still holds the folder open: *fd* (and *parent_fd*,
    the folder above, when the step removes the folder) are the planner's own descriptors, opened
    O_NOFOLLOW and checked to be on the root's filesystem, valid until the next step is asked for (then
    set to None). None: the folder is opened again from the root, one component at a time."""

    root: str  # "outputs" or "failed"
    folder: tuple[str, ...]  # (date, user), or (date,) for a date folder
    groups: list[Group]
    remove: bool = False
    stamp: int | None = None  # the folder's mtime_ns while it was read (None: unknown)
    fd: int | None = None
    parent_fd: int | None = None
    tree: int = 0  # remove: an empty folder tree of this many folders (EmptyFolder.tree), deepest first


class ArchiveHold(NamedTuple):
    """With janitor.archive on: an output whose local video has no verified copy is never deleted by retention
    (kept "awaiting archive", retried next pass); the critical watermark takes it only when *required* is false,
    and after every archived one."""

    archived: set[tuple[str, str, str]]  # (date, user, stem) whose local video has a verified copy
    required: bool


class EmptyFolder(NamedTuple):
    """A folder the pass removes: emptied by it, or empty and older than min_age_hours; or (tree > 0) a tree
    of that many folders holding nothing but folders, each older than min_age_hours."""

    root: str
    parts: tuple[str, ...]  # (date, user) or (date,); a tree's own path below the root
    tree: int = 0


class _Measured(NamedTuple):
    """A failed/ entry as measured before it is judged."""

    size: int
    freed: int
    files: int
    newest: float  # the newest file's mtime: the entry's age
    pinned: bool  # a keep marker somewhere inside


@dataclass(slots=True)
class _Left:
    """A folder the watermark walk may empty: entries left in it once the pass has done what it planned so far."""

    parts: tuple[str, ...]  # (date, user) or (date,)
    left: int
    stamp: int | None = None  # its mtime_ns while the walk read it
    date: _Left | None = None  # a user folder's date folder
    gone: bool = False  # removed before the watermark (a dry run: planned to be)


@dataclass
class Plan:
    """What one pass deletes, and what it saw and kept (for the report, alerts and metrics).

    Steps are counted as they are made (note()): the totals need no list of them, so a pass over a tree of
    any size holds only one folder's steps at a time. With *record* (tests, and callers that want
    plan.actions() afterwards) every step is kept as well; the CLI passes a *listener* instead, which is
    handed each step's paths (actions) as the step is made and streams them out. Paths named one by one
    (refused, left alone, pin markers) are kept up to LISTED each; the rest only counted."""

    now: float
    roots: dict[str, str]  # "outputs"/"failed" -> absolute path
    record: bool = True
    listener: Callable[[Iterator[dict[str, Any]]], None] | None = None  # handed each step's paths as it is made
    devs: dict[str, int] = field(default_factory=dict)
    pinned: dict[str, Any] = field(default_factory=lambda: {"files": 0, "bytes": 0, "markers": [], "marker_count": 0})
    young: dict[str, int] = field(default_factory=lambda: {"files": 0, "bytes": 0})
    in_flight: int = 0
    awaiting_archive: dict[str, int] = field(default_factory=lambda: {"files": 0, "bytes": 0})
    refused: list[dict[str, str]] = field(default_factory=list)
    refused_count: int = 0
    unmanaged: list[str] = field(default_factory=list)
    unmanaged_count: int = 0
    users: dict[str, list[int]] = field(default_factory=dict)  # user -> [bytes, files] left after the pass
    dates: dict[str, int] = field(default_factory=dict)  # date -> bytes left after the pass
    outputs_left: int = 0  # outputs (groups with an .mp4) left after the pass
    failed_entries: int = 0  # failed/ entries left after the pass
    watermark: dict[str, Any] = field(default_factory=dict)
    shortfall: dict[str, int] | None = None
    by_reason: dict[str, dict[str, int]] = field(default_factory=dict)  # reason -> {"files", "bytes"} planned
    files: int = 0
    bytes: int = 0
    freed_estimate: int = 0
    freed_by_root: dict[str, int] = field(default_factory=dict)  # "outputs"/"failed" -> bytes a delete frees
    folder_count: int = 0
    action_count_: int = 0
    _steps: list[Step] = field(default_factory=list, repr=False)

    def path_of(self, group: Group, member: str | None = None) -> str:
        parts = [self.roots[group.root], *group.folder, member if member is not None else group.name]
        return os.path.join(*parts)

    # -- while the plan is made -----------------------------------------------------------------------------

    def note(self, step: Step) -> None:
        """Count a step as it is handed out (and keep it, or hand it to the listener)."""
        for g in step.groups:
            n = g.files if g.kind == "failed" else len(g.members)
            self.action_count_ += 1 if g.kind == "failed" else n
            r = self.by_reason.get(g.reason)
            if r is None:
                r = self.by_reason[g.reason] = {"files": 0, "bytes": 0}
            r["files"] += n
            r["bytes"] += g.size
            self.files += n
            self.bytes += g.size
            self.freed_estimate += g.freed
            self.freed_by_root[g.root] = self.freed_by_root.get(g.root, 0) + g.freed
        if step.remove:
            self.folder_count += 1
            self.action_count_ += 1
        if self.record:
            self._steps.append(step)
        if self.listener is not None:
            self.listener(self.step_actions(step))

    def refuse(self, path: str, why: str) -> None:
        self.refused_count += 1
        if len(self.refused) < LISTED:
            self.refused.append({"path": path, "why": why})

    def leave_alone(self, path: str) -> None:
        """Something not in the layout: reported, never touched."""
        self.unmanaged_count += 1
        if len(self.unmanaged) < LISTED:
            self.unmanaged.append(path)

    def take_back(self, path: str) -> None:
        """The last leave_alone(path) was an empty folder tree the pass removes after all."""
        self.unmanaged_count -= 1
        if self.unmanaged and self.unmanaged[-1] == path and len(self.unmanaged) > self.unmanaged_count:
            self.unmanaged.pop()

    def pin_marker(self, path: str) -> None:
        self.pinned["marker_count"] += 1
        if len(self.pinned["markers"]) < LISTED:
            self.pinned["markers"].append(path)

    # -- afterwards ---------------------------------------------------------------------------------------

    def step_actions(self, step: Step) -> Iterator[dict[str, Any]]:
        """One line per path of one step, in the order it is carried out: each path, size, reason."""
        for g in step.groups:
            if g.kind == "failed":
                yield {"path": self.path_of(g), "size": g.size, "files": g.files, "reason": g.reason,
                       "detail": g.describe(self.now)}
                continue
            detail = g.describe(self.now)
            for name, size, _freed, _mtime, _ino in g.members:
                yield {"path": self.path_of(g, name), "size": size, "reason": g.reason, "detail": detail}
        if step.remove:
            yield {"path": os.path.join(self.roots[step.root], *step.folder), "size": 0, "reason": EMPTY_FOLDER,
                   "detail": f"empty folder tree, {step.tree} folders" if step.tree else "emptied folder"}

    @property
    def deletions(self) -> list[Group]:
        """Every group planned (recorded plans only)."""
        return [g for step in self._steps for g in step.groups]

    @property
    def folders(self) -> list[EmptyFolder]:
        """Every folder the pass removes (recorded plans only)."""
        return [EmptyFolder(s.root, s.folder, s.tree) for s in self._steps if s.remove]

    def iter_actions(self) -> Iterator[dict[str, Any]]:
        """Every path of a recorded plan, in the order the pass carries them out."""
        for step in self._steps:
            yield from self.step_actions(step)

    def actions(self) -> list[dict[str, Any]]:
        return list(self.iter_actions())

    def action_count(self) -> int:
        return self.action_count_

    def totals(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "freed_estimate": self.freed_estimate,
                "folders": self.folder_count, "by_reason": self.by_reason}


class _Rules:
    """Retention rules: the first glob (relative to outputs/) that matches the file or its folders wins."""

    def __init__(self, rules: Iterable[RetentionRule], default_days: float) -> None:
        self.rules = [(re.compile(fnmatch.translate(r.match)).match, r.days, r.match) for r in rules]
        self.default_days = default_days

    def for_folder(self, date: str, user: str) -> list[bool]:
        folder = f"{date}/{user}"
        return [bool(m(date) or m(folder)) for m, _, _ in self.rules]

    def days(self, folder_hits: list[bool], rel_names: list[str]) -> tuple[float, str]:
        for (match, days, pattern), hit in zip(self.rules, folder_hits, strict=True):
            if hit or any(match(n) for n in rel_names):
                return days, f"rule {pattern!r}"
        return self.default_days, "default_days"


def _is_temp(name: str) -> bool:
    return name.startswith(".") and any(mark in name for mark in TEMP_MARKS)


def _temp_job_id(name: str) -> str:
    """The job id in a publish temp name: .<stem>.<job-id>.part (or .part.copy, .<name>.json.<job-id>.part)."""
    core = name
    for suffix in (".copy", ".part", ".tmp"):
        if core.endswith(suffix):
            core = core[: -len(suffix)]
    return core.rsplit(".", 1)[-1]


def mount_points(roots: Iterable[str]) -> set[str]:
    """Every mount point strictly below *roots*, spelled as the planner spells paths (root + relative part).

    The mount table has real paths: a root reached through a symlinked parent is mapped back."""
    try:
        with open(MOUNTINFO, "rb") as handle:
            table = handle.read()
    except OSError:
        return set()
    reals = [(os.path.realpath(root).rstrip("/") + "/", root.rstrip("/")) for root in roots]
    found: set[str] = set()
    for line in table.splitlines():
        fields = line.split(b" ", 5)
        if len(fields) < 5:
            continue
        point = os.fsdecode(_MOUNT_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4]))
        for real, root in reals:
            if point.startswith(real):
                found.add(f"{root}/{point[len(real):]}")
    return found


def _holding(mounts: set[str]) -> set[str]:
    """Every folder with a mount point somewhere below it (checked entry by entry when scanned)."""
    above: set[str] = set()
    for point in mounts:
        folder = os.path.dirname(point)
        while folder not in above and folder not in ("", "/"):
            above.add(folder)
            folder = os.path.dirname(folder)
    return above


def mount_id(fd: int) -> int | None:
    """The mount an open folder is on (/proc/self/fdinfo's mnt_id): a bind mount differs from its parent's
    even where st_dev is the same. None where the kernel does not say."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as handle:
            for line in handle:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def empty_tree(parent_fd: int, name: str, budget: int, recent: float | None) -> tuple[int, bool]:
    """Walk parent/name, deepest first, through descriptors (O_NOFOLLOW; up again by "..", checked to be the
    folder it came from), never into another filesystem or mount. Returns (folders seen, empty): empty when
    it holds nothing but folders, at most *budget* of them, none modified after *recent*.

    recent None removes instead: each folder (rmdir: only ever an empty one) once its own folders are gone;
    whatever appeared meanwhile (ENOTEMPTY) stops it there, leaving the rest."""
    top = os.fstat(parent_fd)
    mount = mount_id(parent_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    frames: list[tuple[tuple[int, int], str, list[str]]] = []  # open levels: (dev, ino), name, folders to do
    seen = 0
    entering = name
    try:
        while True:
            st = os.fstat(fd)
            seen += 1
            if seen > budget or st.st_dev != top.st_dev or mount_id(fd) != mount:
                return seen, False
            if recent is not None and st.st_mtime >= recent:
                return seen, False
            subs: list[str] = []
            with os.scandir(fd) as it:
                for entry in it:
                    if not entry.is_dir(follow_symlinks=False):
                        return seen, False
                    subs.append(entry.name)
            frames.append(((st.st_dev, st.st_ino), entering, subs))
            while not frames[-1][2]:  # this folder is done: go up, and remove it when asked
                _ident, done, _ = frames.pop()
                up = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = up
                up_st = os.fstat(fd)
                expected = frames[-1][0] if frames else (top.st_dev, top.st_ino)
                if (up_st.st_dev, up_st.st_ino) != expected:
                    return seen, False  # moved meanwhile: stop here
                if recent is None:
                    os.rmdir(done, dir_fd=fd)
                if not frames:
                    return seen, True
            entering = frames[-1][2].pop()
            child = os.open(entering, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def _freed(st: os.stat_result) -> int:
    """Bytes a delete gives back: the allocated blocks, none while another hard link keeps them."""
    return st.st_blocks * 512 if st.st_nlink <= 1 else 0


class Planner:
    """Makes a Plan from the configuration and the current state of the disk, one Step at a time.

    Memory stays flat in the size of the tree: the plan is made date folder by date folder, and nothing is
    kept of a folder once its step is handed out (see Plan for the counts that are kept)."""

    def __init__(self, config: Config, now: float, outputs_fs: FsUsage | None,
                 hold: ArchiveHold | None = None,
                 listener: Callable[[Iterator[dict[str, Any]]], None] | None = None) -> None:
        janitor = config.janitor
        self.hold = hold
        self.now = now
        self.marker = janitor.keep_marker
        self.min_age = janitor.min_age_hours * 3600
        self.recent = now - self.min_age  # an empty folder younger than this stays (a job may publish into it)
        self.closed = datetime.date.fromtimestamp(now - 2 * DAY).isoformat()  # no job publishes into these dates
        self.failed_days = janitor.failed_days
        self.failed_age = max(janitor.failed_days * DAY, self.min_age)
        self.rules = _Rules(janitor.retention.rules, janitor.retention.default_days)
        self.disk = janitor.disk
        self.outputs_fs = outputs_fs
        # The watermark applies (and what it could not take is counted) only on a critical disk.
        self.critical = outputs_fs is not None and outputs_fs.percent >= self.disk.critical_percent
        self.plan = Plan(now=now, roots={"outputs": os.path.abspath(config.paths.outputs),
                                         "failed": os.path.abspath(config.paths.failed)},
                         record=listener is None, listener=listener)
        self.spool_jobs = self._spool_job_ids(config.paths.spool)
        self.mounts = mount_points(self.plan.roots.values())
        self.holding_mounts = _holding(self.mounts)
        self._young_freed = 0
        self._pinned_freed = 0
        self._held_freed = 0  # unarchived outputs the watermark may not take (archive.required)
        self._trees: set[tuple[str, ...]] = set()  # empty trees planned under outputs/ (bounded by the budget)
        self._tree_budget = EMPTY_FOLDERS_PER_PASS
        self._last_stamp = 0  # st_mtime_ns and st_mtime of the folder _open_dir opened last
        self._last_mtime = 0.0

    @staticmethod
    def _spool_job_ids(spool: str) -> set[str]:
        try:
            return {n.removeprefix(CLAIM_PREFIX) for n in os.listdir(spool)}
        except OSError:
            return set()

    # -- outputs ------------------------------------------------------------------------------------------

    def build(self) -> Plan:
        """The whole plan, nothing carried out (a dry run, or a plan to look at first)."""
        for _step in self.steps():
            pass
        return self.plan

    def steps(self) -> Iterator[Step]:
        """The plan as it is made, date folder by date folder: each user folder's step as soon as it is read
        (its emptied folder with it), each date folder's removal once its users are done; then, on a critical
        disk, the watermark's outputs, oldest date first. Each step is counted in self.plan (Plan.note)."""
        for root in ("outputs", "failed"):
            path = self.plan.roots[root]
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
                self.plan.refuse(path, "the root is a symlink or not a folder")
                continue
            self.plan.devs[root] = st.st_dev
            pinned = os.path.lexists(os.path.join(path, self.marker))
            if pinned:
                self.plan.pin_marker(os.path.join(path, self.marker))
            yield from self._scan_dates(root, path, st.st_dev, pinned)
        yield from self._apply_watermark()

    def _emit(self, step: Step) -> Iterator[Step]:
        """Hand out one step, counted; its descriptors are the planner's and only valid until the next."""
        self.plan.note(step)
        yield step
        step.fd = step.parent_fd = None

    def _scan_dates(self, root_name: str, root: str, dev: int, pinned: bool) -> Iterator[Step]:
        """Walk <root>/<date>/<user>/ through directory file descriptors (O_NOFOLLOW at every level)."""
        scan_folder = self._scan_output_folder if root_name == "outputs" else self._scan_failed_folder
        marker = self.marker
        root_fd = os.open(root, _DIR_FLAGS)
        try:
            with os.scandir(root_fd) as it:
                dates = sorted(it, key=lambda e: e.name)
            for date in dates:
                name = date.name
                if name == marker:
                    continue
                path = os.path.join(root, name)
                if not self._managed_dir(date, path, dev, is_date(name)):
                    if root_name == "outputs" and path not in self.mounts and self._unmanaged_is_dir(date):
                        seen = self._plan_tree(root_fd, (name,), path)
                        if seen:
                            yield from self._emit(Step(root_name, (name,), [], remove=True, parent_fd=root_fd,
                                                       tree=seen))
                    continue
                date_fd = self._open_dir(root_fd, name, path, dev)
                if date_fd is None:
                    continue
                date_mtime = self._last_mtime
                removed = 0
                try:
                    with os.scandir(date_fd) as it:
                        users = sorted(it, key=lambda e: e.name)
                    date_pinned = pinned or any(u.name == marker for u in users)
                    if date_pinned and not pinned:
                        self.plan.pin_marker(os.path.join(path, marker))
                    for user in users:
                        if user.name == marker:
                            continue
                        user_path = f"{path}/{user.name}"  # = os.path.join(path, user.name): path has no trailing /
                        if self._managed_dir(user, user_path, dev, not user.name.startswith(".")):
                            removed += yield from scan_folder(date_fd, name, user, user_path, dev, date_pinned)
                finally:
                    os.close(date_fd)
                if self._goes(name, len(users), removed, date_mtime):
                    yield from self._emit(Step(root_name, (name,), [], remove=True, parent_fd=root_fd))
        finally:
            os.close(root_fd)

    def _goes(self, date: str, entries: int, gone: int, mtime: float) -> bool:
        """Whether a folder is removed: the pass empties it, or it is empty and older than min_age_hours, or
        of a date two days gone (a pass killed mid-way leaves emptied folders that look fresh)."""
        return entries == gone and (gone > 0 or mtime < self.recent or date < self.closed)

    def _open_dir(self, parent_fd: int, name: str, path: str, dev: int) -> int | None:
        """A folder's fd, opened without following a symlink and checked to be on the root's filesystem."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            why = f"cannot open it: {exc.strerror}"
            with contextlib.suppress(OSError):
                if os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_dev != dev:
                    why = MOUNT_WHY
            self.plan.refuse(path, why)
            return None
        st = os.fstat(fd)
        if st.st_dev != dev:
            os.close(fd)
            self.plan.refuse(path, MOUNT_WHY)
            return None
        self._last_stamp = st.st_mtime_ns
        self._last_mtime = st.st_mtime
        return fd

    def _managed_dir(self, entry: os.DirEntry[str], path: str, dev: int, name_ok: bool) -> bool:
        """True for a real folder on the root's filesystem with a managed name; records why not otherwise."""
        if path in self.mounts:
            self.plan.refuse(path, MOUNT_WHY)
            return False
        if entry.is_symlink():
            self.plan.refuse(path, "symlink (never followed)")
            return False
        if not entry.is_dir(follow_symlinks=False):
            self.plan.leave_alone(path)
            return False
        if not name_ok:
            if entry.stat(follow_symlinks=False).st_dev != dev:
                self.plan.refuse(path, MOUNT_WHY)
            else:
                self.plan.leave_alone(path)
            return False
        return True  # its st_dev is checked on the fd itself when it is opened (_open_dir): no lstat needed

    def _scan_output_folder(self, date_fd: int, date: str, user_entry: os.DirEntry[str], user_path: str, dev: int,
                            pinned_above: bool) -> Generator[Step, None, int]:
        """One outputs/<date>/<user>/ folder: the hot loop of a pass, one fstatat per file relative to the folder.

        Kept lean on purpose (locals, no per-file objects beyond one (name, stat) pair): it runs once per file.
        The folder's empty folder trees go first, then its abandoned temps and expired outputs make one step
        (with the folder itself when that empties it), handed out while its fd is still open. Returns 1 when
        the folder is removed, else 0."""
        user = user_entry.name
        marker = self.marker
        plan = self.plan
        pins: set[str] | None = None
        folder_marker = False
        groups: dict[str, list[tuple[str, os.stat_result]]] = {}  # stem -> its files
        temps: list[tuple[str, os.stat_result]] | None = None
        trees: list[tuple[str, int]] = []  # empty folder trees in it: (name, folders)
        entries = videos = 0
        user_fd = self._open_dir(date_fd, user, user_path, dev)
        if user_fd is None:
            return 0
        stamp = self._last_stamp
        folder_mtime = self._last_mtime
        mounts = self.mounts if user_path in self.holding_mounts else None  # None: no mount point in here
        try:
            with os.scandir(user_fd) as it:
                for entry in it:
                    entries += 1
                    if mounts is not None and f"{user_path}/{entry.name}" in mounts:
                        plan.refuse(f"{user_path}/{entry.name}", MOUNT_WHY)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        if self._odd_entry(entry, f"{user_path}/{entry.name}"):
                            seen = self._plan_tree(user_fd, (date, user, entry.name), f"{user_path}/{entry.name}")
                            if seen:
                                trees.append((entry.name, seen))
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # renamed or deleted since the folder was read
                        entries -= 1
                        continue
                    name = entry.name
                    stem, _, suffix = name.rpartition(".")
                    if suffix not in _SUFFIXES or not stem:
                        if name == marker:
                            folder_marker = True
                            continue
                        if name.endswith(marker):
                            if pins is None:
                                pins = set()
                            pins.add(name[:-len(marker)])
                            continue
                        if name[0] == "." and _is_temp(name):
                            if temps is None:
                                temps = []
                            temps.append((name, st))
                            continue
                        plan.leave_alone(f"{user_path}/{name}")  # not an output's file: left alone
                        continue
                    elif suffix == "mp4":
                        videos += 1  # a stem has one .mp4 at most: this counts outputs with their video
                    found = groups.get(stem)
                    if found is None:
                        groups[stem] = [(name, st)]
                    else:
                        found.append((name, st))
            folder_pinned = pinned_above or folder_marker
            if folder_marker and not pinned_above:
                plan.pin_marker(os.path.join(user_path, marker))
            for name, seen in trees:
                yield from self._emit(Step("outputs", (date, user, name), [], remove=True, parent_fd=user_fd,
                                           tree=seen))
            gone: list[Group] = []
            for name, st in temps or ():
                temp = self._temp(date, user, name, st)
                if temp is not None:
                    gone.append(temp)
            expired, deleted = self._judge_outputs(date, user, user_path, groups, videos, pins, folder_pinned)
            gone += expired
            remove = self._goes(date, entries, len(trees) + len(gone) - len(expired) + deleted, folder_mtime)
            if gone or remove:
                gone.sort(key=attrgetter("name"))
                yield from self._emit(Step("outputs", (date, user), gone, remove, stamp, user_fd,
                                           date_fd if remove else None))
        finally:
            os.close(user_fd)
        return int(remove)

    def _judge_outputs(self, date: str, user: str, user_path: str, groups: dict[str, list[tuple[str, os.stat_result]]],
                       videos: int, pins: set[str] | None, folder_pinned: bool) -> tuple[list[Group], int]:
        """Sort one folder's outputs into pinned / young / kept / expired; returns the expired and their files.

        Runs once per output: the common case (no pins, no rules, three files) takes the fewest steps, and
        whether an output has its video is only worked out where it matters (deleted)."""
        plan = self.plan
        folder = (date, user)
        rules = self.rules
        folder_hits = rules.for_folder(date, user) if rules.rules else None
        days, rule = rules.default_days, "default_days"
        cutoff = self.now - days * DAY
        young_cut = self.recent
        total_size = total_files = deleted_here = deleted_size = deleted_videos = 0
        critical = self.critical
        expired: list[Group] = []
        for stem, found in groups.items():
            if len(found) == 3:  # the usual .mp4 + .json + .jpg, unrolled
                s0, s1, s2 = found[0][1], found[1][1], found[2][1]
                mtime = s0.st_mtime
                if s1.st_mtime > mtime:
                    mtime = s1.st_mtime
                if s2.st_mtime > mtime:
                    mtime = s2.st_mtime
                size = s0.st_size + s1.st_size + s2.st_size
                total_files += 3
            else:
                mtime = 0.0
                size = 0
                for _name, st in found:
                    if st.st_mtime > mtime:
                        mtime = st.st_mtime
                    size += st.st_size
                total_files += len(found)
            total_size += size
            if folder_pinned or (pins and (stem in pins or any(n in pins for n, _ in found))):
                self._pin(found, size, user_path, stem, pins, folder_pinned)
                continue
            if mtime > young_cut:
                plan.young["files"] += len(found)
                plan.young["bytes"] += size
                if critical:
                    self._young_freed += sum(_freed(st) for _, st in found)
                continue
            if folder_hits is not None:
                days, rule = rules.days(folder_hits, [f"{date}/{user}/{n}" for n, _ in found])
                cutoff = self.now - days * DAY
            if mtime < cutoff:
                members = [Member(name, st.st_size, st.st_blocks * 512 if st.st_nlink <= 1 else 0, st.st_mtime_ns,
                                  st.st_ino) for name, st in found]
                freed = sum([m.freed for m in members])
                has_video = f"{stem}.mp4" in [name for name, _ in found]
                if has_video and self.hold is not None and (date, user, stem) not in self.hold.archived:
                    plan.awaiting_archive["files"] += len(found)  # no verified copy yet: retention waits for it
                    plan.awaiting_archive["bytes"] += size
                    continue
                expired.append(Group("outputs", folder, stem, members, mtime, size, freed, has_video, "output",
                                     EXPIRED, "", days, rule))
                deleted_here += len(found)
                deleted_size += size
                deleted_videos += has_video
        usage = plan.users.get(user)
        if usage is None:
            usage = plan.users[user] = [0, 0]
        usage[0] += total_size - deleted_size
        usage[1] += total_files - deleted_here
        plan.dates[date] = plan.dates.get(date, 0) + total_size - deleted_size
        plan.outputs_left += videos - deleted_videos
        return expired, deleted_here

    def _pin(self, found: list[tuple[str, os.stat_result]], size: int, user_path: str, stem: str,
             pins: set[str] | None, folder_pinned: bool) -> None:
        """Count a pinned output; name its marker unless the whole folder is pinned."""
        plan = self.plan
        plan.pinned["files"] += len(found)
        plan.pinned["bytes"] += size
        if self.critical:
            self._pinned_freed += sum(_freed(st) for _, st in found)
        if not folder_pinned and pins is not None:  # each marker by the name it was made with
            names = [stem] if stem in pins else []
            names += [name for name, _ in found if name in pins]
            for name in names:
                plan.pin_marker(os.path.join(user_path, name + self.marker))

    def _odd_entry(self, entry: os.DirEntry[str], path: str) -> bool:
        """Anything in a user folder that is not a plain file: reported, never touched. True for a folder."""
        if entry.is_symlink():
            self.plan.refuse(path, "symlink (never followed)")
        elif entry.is_dir(follow_symlinks=False):
            self.plan.leave_alone(path)
            return True
        else:
            self.plan.refuse(path, "not a regular file")
        return False

    @staticmethod
    def _unmanaged_is_dir(entry: os.DirEntry[str]) -> bool:
        return not entry.is_symlink() and entry.is_dir(follow_symlinks=False)

    def _plan_tree(self, parent_fd: int, parts: tuple[str, ...], path: str) -> int:
        """The folders in outputs/<parts> when it is an empty folder tree the pass removes (it was just left
        alone: it is taken back), else 0. Bounded by EMPTY_FOLDERS_PER_PASS folders in all per pass."""
        if self._tree_budget <= 0:
            return 0
        try:
            seen, empty = empty_tree(parent_fd, parts[-1], self._tree_budget, self.recent)
        except OSError:
            return 0
        self._tree_budget -= seen
        if not empty:
            return 0
        self.plan.take_back(path)
        self._trees.add(parts)
        return seen

    def _abandoned(self, name: str, st: os.stat_result) -> bool:
        """A temp file whose job is gone: older than min_age_hours and not in the spool."""
        return self.now - st.st_mtime >= self.min_age and _temp_job_id(name) not in self.spool_jobs

    def _temp(self, date: str, user: str, name: str, st: os.stat_result) -> Group | None:
        """An abandoned temp file to delete, or None while it is in flight."""
        if not self._abandoned(name, st):
            self.plan.in_flight += 1
            return None
        age = self.now - st.st_mtime
        freed = _freed(st)
        return Group("outputs", (date, user), name, [Member(name, st.st_size, freed, st.st_mtime_ns, st.st_ino)],
                     st.st_mtime, st.st_size, freed, kind="temp", reason=ABANDONED_TEMP,
                     detail=f"temp file {age / 3600:.0f} h old and its job is not in the spool")

    # -- failed/ ------------------------------------------------------------------------------------------

    def _scan_failed_folder(self, date_fd: int, date: str, user_entry: os.DirEntry[str], user_path: str, dev: int,
                            pinned_above: bool) -> Generator[Step, None, int]:
        """One failed/<date>/<user>/ folder: each entry is deleted whole once it is older than failed_days.
        Returns 1 when the folder is removed, else 0."""
        user = user_entry.name
        marker = self.marker
        plan = self.plan
        folder_st = user_entry.stat(follow_symlinks=False)
        if folder_st.st_dev != dev:  # (outputs/ checks this on the folder's fd, in _open_dir)
            plan.refuse(user_path, MOUNT_WHY)
            return 0
        with os.scandir(user_path) as it:
            entries = list(it)
        names = {e.name for e in entries}
        folder_pinned = pinned_above or marker in names
        if marker in names and not pinned_above:
            plan.pin_marker(os.path.join(user_path, marker))
        gone: list[Group] = []
        for entry in entries:
            if entry.name == marker or entry.name.endswith(marker):
                continue
            if entry.path in self.mounts:
                plan.refuse(entry.path, MOUNT_WHY)
                continue
            if entry.is_symlink():
                plan.refuse(entry.path, "symlink (never followed)")
                continue
            measured = self._measure_entry(entry, dev)
            if measured is None:
                continue
            size, freed, files, newest, entry_pinned = measured
            st = entry.stat(follow_symlinks=False)
            plan.failed_entries += 1
            group = Group("failed", (date, user), entry.name,
                          [Member(entry.name, size, freed, st.st_mtime_ns, st.st_ino)], newest, size, freed,
                          kind="failed", files=files)
            if folder_pinned or entry_pinned or (entry.name + marker) in names:
                plan.pinned["files"] += files
                plan.pinned["bytes"] += size
                self._pinned_freed += freed
                if not folder_pinned:
                    plan.pin_marker(entry.path + ("/" + marker if entry_pinned else marker))
                continue
            age = self.now - newest
            if age > self.failed_age:
                group.reason = FAILED_EXPIRED
                group.detail = f"{age / DAY:.1f} days old; failed/ entries are kept {self.failed_days:g} days"
                plan.failed_entries -= 1
                gone.append(group)
        remove = self._goes(date, len(entries), len(gone), folder_st.st_mtime)
        if gone or remove:  # opened again from the root when carried out (fd None): the entries were read by path
            gone.sort(key=attrgetter("name"))
            yield from self._emit(Step("failed", (date, user), gone, remove, None, None, date_fd if remove else None))
        return int(remove)

    def _measure_entry(self, entry: os.DirEntry[str], dev: int) -> _Measured | None:
        """A failed entry's size, files, age and keep marker; None if refused."""
        st = entry.stat(follow_symlinks=False)
        if not entry.is_dir(follow_symlinks=False):
            if not stat.S_ISREG(st.st_mode):
                self.plan.refuse(entry.path, "not a regular file")
                return None
            return _Measured(st.st_size, _freed(st), 1, st.st_mtime, False)
        size = freed = files = 0
        newest = 0.0  # the newest file's mtime: folder mtimes change when anything is added or removed
        pinned = False
        stack = [entry.path]
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as it:
                for child in it:
                    cst = child.stat(follow_symlinks=False)
                    if cst.st_dev != dev or child.path in self.mounts:
                        self.plan.refuse(child.path, MOUNT_WHY)
                        return None
                    if child.name == self.marker:
                        pinned = True
                    if child.is_dir(follow_symlinks=False):
                        stack.append(child.path)
                    else:
                        newest = max(newest, cst.st_mtime)
                        files += 1
                        size += cst.st_size
                        freed += _freed(cst)
        return _Measured(size, freed, files, newest or st.st_mtime, pinned)

    # -- watermark --------------------------------------------------------------------------------------

    def _apply_watermark(self) -> Iterator[Step]:
        """On a critical disk: the oldest remaining outputs, oldest date folder first (oldest output first within
        it), one step each, until the free-space target is met; a folder this empties goes with it."""
        fs = self.outputs_fs
        if fs is None or not self.critical or "outputs" not in self.plan.devs:
            return
        on_fs = {root for root, dev in self.plan.devs.items() if dev == fs.dev}
        avail = fs.avail + sum(self.plan.freed_by_root.get(root, 0) for root in on_fs)
        target = fs.size * self.disk.target_free_percent / 100.0
        taken = 0
        if avail < target:
            detail = (f"disk {fs.percent:.1f}% used >= critical {self.disk.critical_percent:g}%: "
                      f"oldest first until {self.disk.target_free_percent:g}% is free")
            for date, candidates in self._oldest_dates():
                for group, folder in candidates:
                    if avail >= target:
                        break
                    group.reason, group.detail = WATERMARK, detail
                    if group.unarchived:
                        group.detail += "; NOT ARCHIVED (janitor.archive.required is false)"
                    self._take(group)
                    folder.left -= len(group.members)
                    remove = folder.left == 0
                    yield from self._emit(Step("outputs", group.folder, [group], remove, folder.stamp))
                    avail += group.freed
                    taken += 1
                    if remove:
                        date.left -= 1
                        if date.left == 0:
                            yield from self._emit(Step("outputs", date.parts, [], remove=True))
                if avail >= target:
                    break
        self.plan.watermark = {"percent": round(fs.percent, 2), "target_free_percent": self.disk.target_free_percent,
                               "outputs": taken, "avail_after_estimate": int(avail)}
        if avail < target:
            self.plan.shortfall = {"needed": int(target - avail), "pinned": self._pinned_freed,
                                   "young": self._young_freed, "unarchived": self._held_freed}

    def _take(self, group: Group) -> None:
        """Count a watermark output as deleted in the totals left for users, dates and outputs."""
        date, user = group.folder
        usage = self.plan.users[user]
        usage[0] -= group.size
        usage[1] -= len(group.members)
        self.plan.dates[date] -= group.size
        self.plan.outputs_left -= group.has_video

    def _oldest_dates(self) -> Iterator[tuple[_Left, list[tuple[Group, _Left]]]]:
        """outputs/ read again, one date folder at a time, oldest first: its outputs the watermark may take
        (not pinned, not young, not expired), oldest first, each with its folder's count of entries left.

        In a real pass what was planned before is gone already; in a dry run it is still there, so what the
        pass plans to delete (expired outputs, abandoned temps, empty trees) is counted as gone, and the two
        agree. Only one date folder's outputs are held at a time. Nothing is reported again: the first walk
        did."""
        root = self.plan.roots["outputs"]
        dev = self.plan.devs["outputs"]
        marker = self.marker
        try:
            root_fd = self._open_quiet(None, root, dev)
        except OSError:
            return
        try:
            root_pinned = os.path.lexists(os.path.join(root, marker))
            with os.scandir(root_fd) as it:
                names = sorted(e.name for e in it if is_date(e.name) and e.is_dir(follow_symlinks=False))
            for name in names:
                if f"{root}/{name}" in self.mounts:
                    continue
                try:
                    date_fd = self._open_quiet(root_fd, name, dev)
                except OSError:
                    continue
                try:
                    with os.scandir(date_fd) as it:
                        users = sorted(it, key=lambda e: e.name)
                    date = _Left((name,), len(users))
                    pinned = root_pinned or any(u.name == marker for u in users)
                    candidates: list[tuple[tuple[bool, float, str, str], Group, _Left]] = []
                    for user in users:
                        path = f"{root}/{name}/{user.name}"
                        if (user.name == marker or user.name.startswith(".") or path in self.mounts
                                or not self._unmanaged_is_dir(user)):
                            continue
                        try:
                            user_fd = self._open_quiet(date_fd, user.name, dev)
                        except OSError:
                            continue
                        try:
                            folder = self._walk_user(user_fd, name, user.name, path, pinned, date, candidates)
                        except OSError:
                            continue
                        finally:
                            os.close(user_fd)
                        if folder.gone:  # removed by the first walk (a dry run: planned to be)
                            date.left -= 1
                finally:
                    os.close(date_fd)
                if candidates:
                    candidates.sort(key=lambda c: c[0])
                    yield date, [(group, folder) for _key, group, folder in candidates]
        finally:
            os.close(root_fd)

    def _walk_user(self, user_fd: int, date: str, user: str, path: str, pinned_above: bool, date_left: _Left,
                   candidates: list[tuple[tuple[bool, float, str, str], Group, _Left]]) -> _Left:
        """One user folder for the watermark: adds its candidates; returns its count of entries left."""
        folder_st = os.fstat(user_fd)
        marker = self.marker
        entries = gone = 0
        pins: set[str] = set()
        folder_marker = False
        groups: dict[str, list[tuple[str, os.stat_result]]] = {}
        mounts = self.mounts if path in self.holding_mounts else ()
        with os.scandir(user_fd) as it:
            for entry in it:
                entries += 1
                name = entry.name
                if f"{path}/{name}" in mounts:
                    continue
                if not entry.is_file(follow_symlinks=False):
                    gone += (date, user, name) in self._trees
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    entries -= 1
                    continue
                stem, _, suffix = name.rpartition(".")
                if suffix not in _SUFFIXES or not stem:
                    if name == marker:
                        folder_marker = True
                    elif name.endswith(marker):
                        pins.add(name[:-len(marker)])
                    elif name[0] == "." and _is_temp(name):
                        gone += self._abandoned(name, st)
                    continue
                groups.setdefault(stem, []).append((name, st))
        folder = _Left((date, user), entries, folder_st.st_mtime_ns, date_left)
        if not (pinned_above or folder_marker):
            gone += self._candidates(date, user, groups, pins, folder, candidates)
        folder.left -= gone
        folder.gone = self._goes(date, entries, gone, folder_st.st_mtime)
        return folder

    def _candidates(self, date: str, user: str, groups: dict[str, list[tuple[str, os.stat_result]]], pins: set[str],
                    folder: _Left, candidates: list[tuple[tuple[bool, float, str, str], Group, _Left]]) -> int:
        """Adds a folder's outputs the watermark may take (not pinned, young or expired) to *candidates*;
        returns the files of its expired outputs (deleted by the first walk; a dry run: planned to be)."""
        gone = 0
        folder_hits = self.rules.for_folder(date, user) if self.rules.rules else None
        for stem, found in groups.items():
            if stem in pins or any(n in pins for n, _ in found):
                continue
            mtime = max(st.st_mtime for _, st in found)
            if mtime > self.recent:
                continue
            days = self.rules.default_days
            if folder_hits is not None:
                days, _rule = self.rules.days(folder_hits, [f"{date}/{user}/{n}" for n, _ in found])
            has_video = f"{stem}.mp4" in [n for n, _ in found]
            unarchived = has_video and self.hold is not None and (date, user, stem) not in self.hold.archived
            if mtime < self.now - days * DAY and not unarchived:
                gone += len(found)  # expired: deleted by the first walk (a dry run: planned to be)
                continue
            members = [Member(n, st.st_size, _freed(st), st.st_mtime_ns, st.st_ino) for n, st in found]
            group = Group("outputs", (date, user), stem, members, mtime, sum(m.size for m in members),
                          sum(m.freed for m in members), has_video, unarchived=unarchived)
            if unarchived and self.hold.required:  # type: ignore[union-attr]
                self._held_freed += group.freed  # better a full-disk alert than a lost video
                continue
            # Within a date, archived outputs (their videos already gone, or not archiving) before unarchived.
            candidates.append(((unarchived, mtime, user, stem), group, folder))
        return gone

    @staticmethod
    def _open_quiet(parent_fd: int | None, name: str, dev: int) -> int:
        """A folder's fd (O_NOFOLLOW), on the root's filesystem, else OSError; reports nothing."""
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        if os.fstat(fd).st_dev != dev:
            os.close(fd)
            raise OSError(errno.EXDEV, "another filesystem")
        return fd
