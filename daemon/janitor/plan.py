"""The prune plan: which outputs and failed/ entries a janitor pass deletes, and why. Reads, never writes.

The plan is made once, folder by folder, as a stream of Steps (Planner.steps): a dry run only lists
them, a real pass carries each out (delete.py) as it comes, while the planner still holds that folder
open, so the two can never differ. Only the documented layout is managed:
  outputs/YYYY-MM-DD/<user>/<stem>.mp4 + .json + .jpg   (one output: its files go together)
  failed/YYYY-MM-DD/<user>/<stem>/                       (one failed entry: the folder goes as a whole)
Anything else under those roots is reported as unmanaged and left alone. Symlinks are never followed,
and mount points are never entered nor deleted: folders on another filesystem (st_dev differs from the
root's), and bind mounts, which share st_dev and are only told apart by the mount table (read once per
pass from /proc/self/mountinfo).

Rules, in order: pinned (<file>.keep, <stem>.keep, or the keep marker in any folder above) is kept;
younger than janitor.min_age_hours is kept; older than its retention (the first matching rule, else
default_days) is "expired". When the filesystem of outputs/ is at or above critical_percent, the
oldest remaining outputs are added ("watermark") until free space would reach target_free_percent.
Dot-named temp files (a job publishing) younger than min_age_hours, or whose job is still in the
spool, are in flight and kept; older ones are "abandoned-temp".
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple

from daemon.config import Config, RetentionRule
from daemon.disk import FsUsage
from daemon.names import CLAIM_PREFIX

# The mount table of this process: every mount point below the roots is refused (bind mounts included).
MOUNTINFO = "/proc/self/mountinfo"
_MOUNT_ESCAPE = re.compile(rb"\\([0-7]{3})")  # mountinfo writes space, tab, newline and \ as \ooo
MOUNT_WHY = "a mount point (another filesystem or a bind mount): never entered"

# Empty folder trees (holding nothing but folders) below outputs/ are removed; a pass looks at no more than
# this many such folders in all, so a huge tree costs bounded time (one larger than this is left alone).
EMPTY_FOLDERS_PER_PASS = 10_000

DATE_NAME = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
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
class _Folder:
    """A date/user folder: how many entries it holds, to know whether the pass empties it."""

    root: str
    date: str
    user: str
    entries: int
    mtime: float
    deleted: int = 0


@dataclass
class Plan:
    """Everything one pass will delete, plus what it saw and kept (for the report, alerts and metrics)."""

    now: float
    roots: dict[str, str]  # "outputs"/"failed" -> absolute path
    devs: dict[str, int] = field(default_factory=dict)
    deletions: list[Group] = field(default_factory=list)
    folders: list[EmptyFolder] = field(default_factory=list)  # deepest first
    pinned: dict[str, Any] = field(default_factory=lambda: {"files": 0, "bytes": 0, "markers": []})
    young: dict[str, int] = field(default_factory=lambda: {"files": 0, "bytes": 0})
    in_flight: int = 0
    awaiting_archive: dict[str, int] = field(default_factory=lambda: {"files": 0, "bytes": 0})
    refused: list[dict[str, str]] = field(default_factory=list)
    unmanaged: list[str] = field(default_factory=list)
    stamps: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (root, date, user) -> folder mtime_ns
    users: dict[str, list[int]] = field(default_factory=dict)  # user -> [bytes, files] left after the pass
    dates: dict[str, int] = field(default_factory=dict)  # date -> bytes left after the pass
    outputs_left: int = 0  # outputs (groups with an .mp4) left after the pass
    failed_entries: int = 0  # failed/ entries left after the pass
    watermark: dict[str, Any] = field(default_factory=dict)
    shortfall: dict[str, int] | None = None
    _summarized: tuple[tuple[int, int], dict[str, Any], int] | None = field(default=None, repr=False, compare=False)

    def path_of(self, group: Group, member: str | None = None) -> str:
        parts = [self.roots[group.root], *group.folder, member if member is not None else group.name]
        return os.path.join(*parts)

    def iter_actions(self) -> Iterator[dict[str, Any]]:
        """One line per path, in the order the pass carries them out: each path, size, reason."""
        for g in self.deletions:
            if g.kind == "failed":
                yield {"path": self.path_of(g), "size": g.size, "files": g.files, "reason": g.reason,
                       "detail": g.describe(self.now)}
                continue
            detail = g.describe(self.now)
            for name, size, _freed, _mtime, _ino in g.members:
                yield {"path": self.path_of(g, name), "size": size, "reason": g.reason, "detail": detail}
        for root, parts, tree in self.folders:
            yield {"path": os.path.join(self.roots[root], *parts), "size": 0, "reason": EMPTY_FOLDER,
                   "detail": f"empty folder tree, {tree} folders" if tree else "emptied folder"}

    def actions(self) -> list[dict[str, Any]]:
        return list(self.iter_actions())

    def action_count(self) -> int:
        return self._summary()[1]

    def totals(self) -> dict[str, Any]:
        return self._summary()[0]

    def _summary(self) -> tuple[dict[str, Any], int]:
        """(totals, number of actions): one loop over the deletions for both, redone only if the plan grew."""
        key = (len(self.deletions), len(self.folders))
        if self._summarized is not None and self._summarized[0] == key:
            return self._summarized[1], self._summarized[2]
        by_reason: dict[str, dict[str, int]] = {}
        files = size = freed = actions = 0
        for g in self.deletions:
            if g.kind == "failed":
                n = g.files
                actions += 1
            else:
                n = len(g.members)
                actions += n
            r = by_reason.get(g.reason)
            if r is None:
                r = by_reason[g.reason] = {"files": 0, "bytes": 0}
            r["files"] += n
            r["bytes"] += g.size
            files += n
            size += g.size
            freed += g.freed
        totals = {"files": files, "bytes": size, "freed_estimate": freed, "folders": len(self.folders),
                  "by_reason": by_reason}
        actions += len(self.folders)
        self._summarized = (key, totals, actions)
        return totals, actions


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


def _is_date(name: str) -> bool:
    """A date folder's name: YYYY-MM-DD and a real day (2026-13-45 and 2026-02-30 are not in the layout)."""
    if DATE_NAME.match(name) is None:
        return False
    try:
        datetime.date(int(name[:4]), int(name[5:7]), int(name[8:10]))
    except ValueError:
        return False
    return True


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
    """Makes a Plan from the configuration and the current state of the disk, one Step at a time."""

    def __init__(self, config: Config, now: float, outputs_fs: FsUsage | None,
                 hold: ArchiveHold | None = None) -> None:
        janitor = config.janitor
        self.hold = hold
        self.now = now
        self.marker = janitor.keep_marker
        self.min_age = janitor.min_age_hours * 3600
        self.failed_days = janitor.failed_days
        self.failed_age = max(janitor.failed_days * DAY, self.min_age)
        self.rules = _Rules(janitor.retention.rules, janitor.retention.default_days)
        self.disk = janitor.disk
        self.outputs_fs = outputs_fs
        # Outputs that could go early are only collected when the watermark can apply (saves memory).
        self.collect_candidates = outputs_fs is not None and outputs_fs.percent >= self.disk.critical_percent
        self.plan = Plan(now=now, roots={"outputs": os.path.abspath(config.paths.outputs),
                                         "failed": os.path.abspath(config.paths.failed)})
        self.spool_jobs = self._spool_job_ids(config.paths.spool)
        self.mounts = mount_points(self.plan.roots.values())
        self.holding_mounts = _holding(self.mounts)
        self._folders: list[_Folder] = []
        self._candidates: list[Group] = []  # outputs that may go early when the disk is critical
        self._young_freed = 0
        self._pinned_freed = 0
        self._held_freed = 0  # unarchived outputs the watermark may not take (archive.required)
        self._deleted_counts: dict[tuple[str, str, str], int] = {}
        self._removed: set[tuple[str, tuple[str, ...]]] = set()  # folders a step already removes
        self._trees: dict[tuple[str, str, str], int] = {}  # (root, date, user) -> empty trees planned in it
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
        """The plan as it is made: each folder's step as soon as the folder is read, then the watermark's
        outputs (oldest first) and the folders left empty. self.plan records every step (for the report)
        and is complete once the steps are."""
        for root in ("outputs", "failed"):
            path = self.plan.roots[root]
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
                self.plan.refused.append({"path": path, "why": "the root is a symlink or not a folder"})
                continue
            self.plan.devs[root] = st.st_dev
            pinned = os.path.lexists(os.path.join(path, self.marker))
            if pinned:
                self.plan.pinned["markers"].append(os.path.join(path, self.marker))
            yield from self._scan_dates(root, path, st.st_dev, pinned)
        yield from self._apply_watermark()
        self._plan_empty_folders()
        for folder in self.plan.folders:
            if (folder.root, folder.parts) not in self._removed:
                yield Step(folder.root, folder.parts, [], remove=True, tree=folder.tree)
        self.plan.deletions.sort(key=attrgetter("root", "folder", "name"))

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
                if not self._managed_dir(date, path, dev, _is_date(name)):
                    if root_name == "outputs" and path not in self.mounts and self._unmanaged_is_dir(date):
                        self._plan_tree(root_fd, root_name, (name,), path)
                    continue
                date_fd = self._open_dir(root_fd, name, path, dev)
                if date_fd is None:
                    continue
                date_mtime = self._last_mtime
                try:
                    with os.scandir(date_fd) as it:
                        users = sorted(it, key=lambda e: e.name)
                    date_pinned = pinned or any(u.name == marker for u in users)
                    if date_pinned and not pinned:
                        self.plan.pinned["markers"].append(os.path.join(path, marker))
                    for user in users:
                        if user.name == marker:
                            continue
                        user_path = f"{path}/{user.name}"  # = os.path.join(path, user.name): path has no trailing /
                        if self._managed_dir(user, user_path, dev, not user.name.startswith(".")):
                            yield from scan_folder(date_fd, name, user, user_path, dev, date_pinned)
                finally:
                    os.close(date_fd)
                self._folders.append(_Folder(root_name, name, "", len(users), date_mtime))
        finally:
            os.close(root_fd)

    def _open_dir(self, parent_fd: int, name: str, path: str, dev: int) -> int | None:
        """A folder's fd, opened without following a symlink and checked to be on the root's filesystem."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            why = f"cannot open it: {exc.strerror}"
            with contextlib.suppress(OSError):
                if os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_dev != dev:
                    why = MOUNT_WHY
            self.plan.refused.append({"path": path, "why": why})
            return None
        st = os.fstat(fd)
        if st.st_dev != dev:
            os.close(fd)
            self.plan.refused.append({"path": path, "why": MOUNT_WHY})
            return None
        self._last_stamp = st.st_mtime_ns
        self._last_mtime = st.st_mtime
        return fd

    def _managed_dir(self, entry: os.DirEntry[str], path: str, dev: int, name_ok: bool) -> bool:
        """True for a real folder on the root's filesystem with a managed name; records why not otherwise."""
        if path in self.mounts:
            self.plan.refused.append({"path": path, "why": MOUNT_WHY})
            return False
        if entry.is_symlink():
            self.plan.refused.append({"path": path, "why": "symlink (never followed)"})
            return False
        if not entry.is_dir(follow_symlinks=False):
            self.plan.unmanaged.append(path)
            return False
        if not name_ok:
            if entry.stat(follow_symlinks=False).st_dev != dev:
                self.plan.refused.append({"path": path, "why": MOUNT_WHY})
            else:
                self.plan.unmanaged.append(path)
            return False
        return True  # its st_dev is checked on the fd itself when it is opened (_open_dir): no lstat needed

    def _scan_output_folder(self, date_fd: int, date: str, user_entry: os.DirEntry[str], user_path: str, dev: int,
                            pinned_above: bool) -> Iterator[Step]:
        """One outputs/<date>/<user>/ folder: the hot loop of a pass, one fstatat per file relative to the folder.

        Kept lean on purpose (locals, no per-file objects beyond one (name, stat) pair): it runs once per file.
        The folder's abandoned temps and expired outputs make one step, handed out while its fd is still open."""
        user = user_entry.name
        marker = self.marker
        plan = self.plan
        pins: set[str] | None = None
        folder_marker = False
        groups: dict[str, list[tuple[str, os.stat_result]]] = {}  # stem -> its files
        temps: list[tuple[str, os.stat_result]] | None = None
        entries = videos = trees = 0
        user_fd = self._open_dir(date_fd, user, user_path, dev)
        if user_fd is None:
            return
        stamp = plan.stamps[("outputs", date, user)] = self._last_stamp
        folder_mtime = self._last_mtime
        mounts = self.mounts if user_path in self.holding_mounts else None  # None: no mount point in here
        try:
            with os.scandir(user_fd) as it:
                for entry in it:
                    entries += 1
                    if mounts is not None and f"{user_path}/{entry.name}" in mounts:
                        plan.refused.append({"path": f"{user_path}/{entry.name}", "why": MOUNT_WHY})
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        self._odd_entry(entry, os.path.join(user_path, entry.name))
                        if plan.unmanaged and plan.unmanaged[-1] == f"{user_path}/{entry.name}" and \
                                self._plan_tree(user_fd, "outputs", (date, user, entry.name), plan.unmanaged[-1]):
                            trees += 1
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
                        plan.unmanaged.append(f"{user_path}/{name}")  # not an output's file: left alone
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
                plan.pinned["markers"].append(os.path.join(user_path, marker))
            self._folders.append(_Folder("outputs", date, user, entries, folder_mtime))
            if trees:
                self._trees[("outputs", date, user)] = trees
            gone: list[Group] = []
            for name, st in temps or ():
                temp = self._temp(date, user, name, st)
                if temp is not None:
                    gone.append(temp)
            gone += self._judge_outputs(date, user, user_path, groups, videos, pins, folder_pinned)
            if gone:
                plan.deletions.extend(gone)
                yield from self._step("outputs", date, user, entries, gone, stamp, user_fd, date_fd)
        finally:
            os.close(user_fd)

    def _step(self, root: str, date: str, user: str, entries: int, gone: list[Group], stamp: int | None,
              fd: int | None, date_fd: int) -> Iterator[Step]:
        """Hand out one folder's step; a folder this pass empties (the watermark only ever adds) goes with it."""
        remove = entries == self._deleted_counts.get((root, date, user), 0)
        if remove:
            self._removed.add((root, (date, user)))
        step = Step(root, (date, user), gone, remove, stamp, fd, date_fd if remove else None)
        yield step
        step.fd = step.parent_fd = None  # closed after this: a step kept for later opens its folder again

    def _judge_outputs(self, date: str, user: str, user_path: str, groups: dict[str, list[tuple[str, os.stat_result]]],
                       videos: int, pins: set[str] | None, folder_pinned: bool) -> list[Group]:
        """Sort one folder's outputs into pinned / young / kept / expired (returned) / watermark candidates.

        Runs once per output: the common case (no pins, no rules, three files) takes the fewest steps, and
        whether an output has its video is only worked out where it matters (deleted or a candidate)."""
        plan = self.plan
        folder = (date, user)
        rules = self.rules
        folder_hits = rules.for_folder(date, user) if rules.rules else None
        days, rule = rules.default_days, "default_days"
        cutoff = self.now - days * DAY
        young_cut = self.now - self.min_age
        total_size = total_files = deleted_here = deleted_size = deleted_videos = 0
        watermark = self.collect_candidates
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
                if watermark:
                    self._young_freed += sum(_freed(st) for _, st in found)
                continue
            if folder_hits is not None:
                days, rule = rules.days(folder_hits, [f"{date}/{user}/{n}" for n, _ in found])
                cutoff = self.now - days * DAY
            if mtime < cutoff or watermark:
                members = [Member(name, st.st_size, st.st_blocks * 512 if st.st_nlink <= 1 else 0, st.st_mtime_ns,
                                  st.st_ino) for name, st in found]
                freed = sum([m.freed for m in members])
                has_video = f"{stem}.mp4" in [name for name, _ in found]
                held = has_video and self.hold is not None and (date, user, stem) not in self.hold.archived
                if held:  # archiving is on and this video has no verified copy yet: retention waits for it
                    if mtime < cutoff:
                        plan.awaiting_archive["files"] += len(found)
                        plan.awaiting_archive["bytes"] += size
                    if self.hold.required:  # type: ignore[union-attr]
                        self._held_freed += freed
                        continue
                if mtime < cutoff and not held:
                    expired.append(Group("outputs", folder, stem, members, mtime, size, freed, has_video, "output",
                                         EXPIRED, "", days, rule))
                    deleted_here += len(found)
                    deleted_size += size
                    deleted_videos += has_video
                elif watermark:
                    self._candidates.append(Group("outputs", folder, stem, members, mtime, size, freed, has_video,
                                                  unarchived=held))
        if deleted_here:
            self._count_deleted("outputs", date, user, deleted_here)
        usage = plan.users.get(user)
        if usage is None:
            usage = plan.users[user] = [0, 0]
        usage[0] += total_size - deleted_size
        usage[1] += total_files - deleted_here
        plan.dates[date] = plan.dates.get(date, 0) + total_size - deleted_size
        plan.outputs_left += videos - deleted_videos
        return expired

    def _pin(self, found: list[tuple[str, os.stat_result]], size: int, user_path: str, stem: str,
             pins: set[str] | None, folder_pinned: bool) -> None:
        """Count a pinned output; name its marker unless the whole folder is pinned."""
        plan = self.plan
        plan.pinned["files"] += len(found)
        plan.pinned["bytes"] += size
        if self.collect_candidates:
            self._pinned_freed += sum(_freed(st) for _, st in found)
        if not folder_pinned and pins is not None:  # each marker by the name it was made with
            names = [stem] if stem in pins else []
            names += [name for name, _ in found if name in pins]
            plan.pinned["markers"] += [os.path.join(user_path, name + self.marker) for name in names]

    def _odd_entry(self, entry: os.DirEntry[str], path: str) -> None:
        """Anything in a user folder that is not a plain file: reported, never touched."""
        if entry.is_symlink():
            self.plan.refused.append({"path": path, "why": "symlink (never followed)"})
        elif entry.is_dir(follow_symlinks=False):
            self.plan.unmanaged.append(path)
        else:
            self.plan.refused.append({"path": path, "why": "not a regular file"})

    @staticmethod
    def _unmanaged_is_dir(entry: os.DirEntry[str]) -> bool:
        return not entry.is_symlink() and entry.is_dir(follow_symlinks=False)

    def _plan_tree(self, parent_fd: int, root: str, parts: tuple[str, ...], path: str) -> bool:
        """Plan the removal of parent/parts[-1] when it is an empty folder tree (was just listed as unmanaged:
        it is taken off that list). Bounded by EMPTY_FOLDERS_PER_PASS folders in all per pass."""
        if self._tree_budget <= 0:
            return False
        try:
            seen, empty = empty_tree(parent_fd, parts[-1], self._tree_budget, self.now - self.min_age)
        except OSError:
            return False
        self._tree_budget -= seen
        if not empty:
            return False
        if self.plan.unmanaged and self.plan.unmanaged[-1] == path:
            self.plan.unmanaged.pop()
        self.plan.folders.append(EmptyFolder(root, parts, seen))
        return True

    def _temp(self, date: str, user: str, name: str, st: os.stat_result) -> Group | None:
        """An abandoned temp file to delete, or None while it is in flight."""
        age = self.now - st.st_mtime
        if age < self.min_age or _temp_job_id(name) in self.spool_jobs:
            self.plan.in_flight += 1
            return None
        freed = _freed(st)
        self._count_deleted("outputs", date, user, 1)
        return Group("outputs", (date, user), name, [Member(name, st.st_size, freed, st.st_mtime_ns, st.st_ino)],
                     st.st_mtime, st.st_size, freed, kind="temp", reason=ABANDONED_TEMP,
                     detail=f"temp file {age / 3600:.0f} h old and its job is not in the spool")

    def _delete(self, group: Group) -> None:
        """Plan *group*'s deletion (a failed/ entry, or a watermark output already counted in the totals)."""
        self.plan.deletions.append(group)
        date, user = group.folder
        if group.root == "outputs":
            usage = self.plan.users[user]
            usage[0] -= group.size
            usage[1] -= len(group.members)
            self.plan.dates[date] -= group.size
            self.plan.outputs_left -= group.has_video
            self._count_deleted("outputs", date, user, len(group.members))
        else:
            self.plan.failed_entries -= 1
            self._count_deleted("failed", date, user, 1)

    def _count_deleted(self, root: str, date: str, user: str, n: int) -> None:
        key = (root, date, user)
        self._deleted_counts[key] = self._deleted_counts.get(key, 0) + n

    # -- failed/ ------------------------------------------------------------------------------------------

    def _scan_failed_folder(self, date_fd: int, date: str, user_entry: os.DirEntry[str], user_path: str, dev: int,
                            pinned_above: bool) -> Iterator[Step]:
        """One failed/<date>/<user>/ folder: each entry is deleted whole once it is older than failed_days."""
        user = user_entry.name
        marker = self.marker
        folder_st = user_entry.stat(follow_symlinks=False)
        if folder_st.st_dev != dev:  # (outputs/ checks this on the folder's fd, in _open_dir)
            self.plan.refused.append({"path": user_path, "why": MOUNT_WHY})
            return
        with os.scandir(user_path) as it:
            entries = list(it)
        names = {e.name for e in entries}
        folder_pinned = pinned_above or marker in names
        if marker in names and not pinned_above:
            self.plan.pinned["markers"].append(os.path.join(user_path, marker))
        self._folders.append(_Folder("failed", date, user, len(entries), folder_st.st_mtime))
        gone: list[Group] = []
        for entry in entries:
            if entry.name == marker or entry.name.endswith(marker):
                continue
            if entry.path in self.mounts:
                self.plan.refused.append({"path": entry.path, "why": MOUNT_WHY})
                continue
            if entry.is_symlink():
                self.plan.refused.append({"path": entry.path, "why": "symlink (never followed)"})
                continue
            measured = self._measure_entry(entry, dev)
            if measured is None:
                continue
            size, freed, files, newest, entry_pinned = measured
            st = entry.stat(follow_symlinks=False)
            self.plan.failed_entries += 1
            group = Group("failed", (date, user), entry.name,
                          [Member(entry.name, size, freed, st.st_mtime_ns, st.st_ino)], newest, size, freed,
                          kind="failed", files=files)
            if folder_pinned or entry_pinned or (entry.name + marker) in names:
                self.plan.pinned["files"] += files
                self.plan.pinned["bytes"] += size
                self._pinned_freed += freed
                if not folder_pinned:
                    self.plan.pinned["markers"].append(entry.path + ("/" + marker if entry_pinned else marker))
                continue
            age = self.now - newest
            if age > self.failed_age:
                group.reason = FAILED_EXPIRED
                group.detail = f"{age / DAY:.1f} days old; failed/ entries are kept {self.failed_days:g} days"
                self._delete(group)
                gone.append(group)
        if gone:  # opened again from the root when carried out (fd None): the entries were read by path
            yield from self._step("failed", date, user, len(entries), gone, None, None, date_fd)

    def _measure_entry(self, entry: os.DirEntry[str], dev: int) -> _Measured | None:
        """A failed entry's size, files, age and keep marker; None if refused."""
        st = entry.stat(follow_symlinks=False)
        if not entry.is_dir(follow_symlinks=False):
            if not stat.S_ISREG(st.st_mode):
                self.plan.refused.append({"path": entry.path, "why": "not a regular file"})
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
                        self.plan.refused.append({"path": child.path, "why": MOUNT_WHY})
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

    # -- watermark and folders ----------------------------------------------------------------------------

    def _apply_watermark(self) -> Iterator[Step]:
        """On a critical disk: the oldest remaining outputs, one step each, until the free-space target is met."""
        fs = self.outputs_fs
        if fs is None or "outputs" not in self.plan.devs or fs.percent < self.disk.critical_percent:
            return
        on_fs = {root for root, dev in self.plan.devs.items() if dev == fs.dev}
        avail = fs.avail + sum(g.freed for g in self.plan.deletions if g.root in on_fs)
        target = fs.size * self.disk.target_free_percent / 100.0
        taken = 0
        if avail < target:
            self._candidates.sort(key=lambda g: (g.unarchived, g.mtime))  # archived (or not archiving) first
            for group in self._candidates:
                if avail >= target:
                    break
                group.reason = WATERMARK
                group.detail = (f"disk {fs.percent:.1f}% used >= critical {self.disk.critical_percent:g}%: "
                                f"oldest first until {self.disk.target_free_percent:g}% is free")
                if group.unarchived:
                    group.detail += "; NOT ARCHIVED (janitor.archive.required is false)"
                self._delete(group)
                yield Step("outputs", group.folder, [group], stamp=self.plan.stamps.get(("outputs", *group.folder)))
                avail += group.freed
                taken += 1
        self.plan.watermark = {"percent": round(fs.percent, 2), "target_free_percent": self.disk.target_free_percent,
                               "outputs": taken, "avail_after_estimate": int(avail)}
        if avail < target:
            self.plan.shortfall = {"needed": int(target - avail), "pinned": self._pinned_freed,
                                   "young": self._young_freed, "unarchived": self._held_freed}

    def _plan_empty_folders(self) -> None:
        """User folders the pass empties (or empty ones older than min_age_hours, or of a date two days gone:
        a pass killed mid-way leaves emptied folders that look fresh), then their date folders."""
        counts = self._deleted_counts
        recent = self.now - self.min_age
        closed = datetime.date.fromtimestamp(self.now - 2 * DAY).isoformat()  # no job publishes into these
        removed_users: dict[tuple[str, str], int] = {}
        for f in self._folders:
            if not f.user:
                continue
            deleted = counts.get((f.root, f.date, f.user), 0) + self._trees.get((f.root, f.date, f.user), 0)
            if f.entries - deleted == 0 and (deleted or f.mtime < recent or f.date < closed):
                self.plan.folders.append(EmptyFolder(f.root, (f.date, f.user)))
                removed_users[(f.root, f.date)] = removed_users.get((f.root, f.date), 0) + 1
        for f in self._folders:
            if f.user:
                continue
            gone = removed_users.get((f.root, f.date), 0)
            if f.entries - gone == 0 and (gone or f.mtime < recent or f.date < closed):
                self.plan.folders.append(EmptyFolder(f.root, (f.date,)))
        self.plan.folders.sort(key=lambda item: (-len(item.parts), item))

