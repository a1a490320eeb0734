"""A person's results on disk, reached only through their own folder, never through a symlink.

Every path the web page touches is built from checked parts (a real YYYY-MM-DD date, a user folder name,
a file name with no separator, no `..` and no leading dot) and opened one component at a time with
O_NOFOLLOW relative to the folder above (dir_fd), so a symlink planted anywhere in outputs/ is refused,
not followed, and no name can leave outputs/<date>/<user>/. Outputs are the janitor's groups:
<stem>.mp4 + <stem>.json + <stem>.jpg, pinned by <stem>.keep, <file>.keep or a .keep in a folder above.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from daemon import names
from daemon.config import Config
from daemon.files import exists_at
from daemon.names import is_date

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a result's name must not hang the request (it is then refused as no file).
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
SUFFIXES = ("mp4", "json", "jpg")
RECORD_MAX_BYTES = 4 << 20  # a record bigger than this is not read (it is not one the worker wrote)
DAY = 86400.0


class NotFound(Exception):
    """The file is not there for this caller: missing, not theirs, a symlink, not a regular file, a bad name."""


def is_name(name: str) -> bool:
    """A user folder, stem or file name that stays inside its folder."""
    return isinstance(name, str) and names.refusal(name) is None


def open_dir(parent_fd: int | None, name: str) -> int:
    """One folder below *parent_fd* (or the path *name* when None), never through a symlink."""
    try:
        return os.open(name, DIR_FLAGS if parent_fd is not None else DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
            raise NotFound(name) from None
        raise


def own_files(root: Path | str, user: str) -> list[str]:
    """The names of the plain files in <root>/<user>/ (inbox, avatars), reached without following symlinks;
    [] when there is no such folder."""
    try:
        root_fd = open_dir(None, str(root))
    except NotFound:
        return []
    try:
        folder = open_dir(root_fd, user)
    except NotFound:
        return []
    finally:
        os.close(root_fd)
    try:
        with os.scandir(folder) as it:
            return [e.name for e in it if e.is_file(follow_symlinks=False)]
    finally:
        os.close(folder)


@contextlib.contextmanager
def user_folder(root: Path, date: str, user: str) -> Iterator[int]:
    """The fd of <root>/<date>/<user>/ opened component by component without following symlinks."""
    if not is_date(date) or not is_name(user):
        raise NotFound(f"{date}/{user}")
    root_fd = open_dir(None, str(root))
    try:
        date_fd = open_dir(root_fd, date)
        try:
            user_fd = open_dir(date_fd, user)
        finally:
            os.close(date_fd)
    finally:
        os.close(root_fd)
    try:
        yield user_fd
    finally:
        os.close(user_fd)


def open_file(folder_fd: int, name: str) -> BinaryIO:
    """A regular file in the folder, opened without following a symlink; NotFound for anything else."""
    if not is_name(name):
        raise NotFound(name)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=folder_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.EACCES, errno.ENXIO, errno.EISDIR):
            raise NotFound(name) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotFound(name)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


@dataclass
class Output:
    """One result as listed: its files' suffixes, how it is pinned, and (once stat_date ran) their stats."""

    date: str
    user: str
    stem: str
    suffixes: list[str] = field(default_factory=list)
    pinned_by: str | None = None  # "file" (<stem>.keep or <file>.keep), "folder" (a .keep above), None
    files: dict[str, os.stat_result] = field(default_factory=dict)  # filled by stat_date()

    @property
    def mtime(self) -> float:
        return max((st.st_mtime for st in self.files.values()), default=0.0)

    @property
    def bytes(self) -> int:
        return sum(st.st_size for st in self.files.values())


def _dates(root_fd: int, date: str | None) -> list[str]:
    if date is not None:
        return [date] if is_date(date) else []
    with os.scandir(root_fd) as it:
        found = [e.name for e in it if is_date(e.name) and e.is_dir(follow_symlinks=False)]
    return sorted(found, reverse=True)


@dataclass
class Folder:
    """One outputs/<date>/<user>/ folder as its names tell it: each stem with its suffixes, and its pins."""

    date: str
    user: str
    stems: dict[str, tuple[str, ...]]  # shared with the cache: read-only
    pins: frozenset[str]  # the names before the keep marker (<stem> or <stem>.<suffix>)
    pinned: bool  # a keep marker in this folder or one above

    def matching(self, query: str) -> list[str]:
        """The stems whose name contains *query* (lower case; all of them for "")."""
        return [stem for stem in self.stems if query in stem.lower()] if query else list(self.stems)

    def output(self, stem: str) -> Output:
        suffixes = self.stems[stem]
        pinned_by = "folder" if self.pinned else None
        if not pinned_by and self.pins and (stem in self.pins or any(f"{stem}.{s}" in self.pins for s in suffixes)):
            pinned_by = "file"
        return Output(self.date, self.user, stem, list(suffixes), pinned_by)


# Names of user folders already read, by (device, inode): reused while the folder's mtime is unchanged, which
# it is for every past date. A folder changed within RACY_SECONDS is read again each time (an mtime tick can
# hide a change made just after it was read).
_NAMES: dict[tuple[int, int], tuple[int, dict[str, tuple[str, ...]], frozenset[str], bool]] = {}
NAMES_CACHED_MAX = 50_000
RACY_SECONDS = 2.0


def scan(root: Path, user: str, marker: str, date: str | None = None) -> list[Folder]:
    """*user*'s output folders (optionally of one date), newest date first, from the folders' names alone (no
    stat of a result, no record): cheap enough for 10,000 results. stat_date() then orders one date's outputs."""
    if not is_name(user):
        return []
    try:
        root_fd = open_dir(None, str(root))
    except NotFound:
        return []
    found: list[Folder] = []
    now = time.time()
    try:
        root_pinned = exists_at(root_fd, marker)
        for day in _dates(root_fd, date):
            try:
                date_fd = open_dir(root_fd, day)
            except NotFound:
                continue
            try:
                date_pinned = root_pinned or exists_at(date_fd, marker)
                try:
                    user_fd = open_dir(date_fd, user)
                except NotFound:
                    continue
                try:
                    stems, pins, here = _names(user_fd, marker, now)
                finally:
                    os.close(user_fd)
                if stems:
                    found.append(Folder(day, user, stems, pins, date_pinned or here))
            finally:
                os.close(date_fd)
    finally:
        os.close(root_fd)
    return found


def _names(user_fd: int, marker: str, now: float) -> tuple[dict[str, tuple[str, ...]], frozenset[str], bool]:
    st = os.fstat(user_fd)
    key = (st.st_dev, st.st_ino)
    cached = _NAMES.get(key)
    if cached is not None and cached[0] == st.st_mtime_ns:
        return cached[1], cached[2], cached[3]
    stems, pins, here = _read_names(user_fd, marker)
    if now - st.st_mtime > RACY_SECONDS:
        if len(_NAMES) >= NAMES_CACHED_MAX:
            _NAMES.clear()
        _NAMES[key] = (st.st_mtime_ns, stems, pins, here)
    return stems, pins, here


def _read_names(user_fd: int, marker: str) -> tuple[dict[str, tuple[str, ...]], frozenset[str], bool]:
    groups: dict[str, list[str]] = {}
    pins: set[str] = set()
    here = False
    with os.scandir(user_fd) as it:
        for entry in it:
            name = entry.name
            if name == marker:
                here = True
                continue
            if name[0] == "." or not entry.is_file(follow_symlinks=False):
                continue  # temps of a job publishing, symlinks and folders are no results
            if name.endswith(marker):
                pins.add(name[:-len(marker)])
                continue
            stem, _, suffix = name.rpartition(".")
            if suffix not in SUFFIXES or not stem:
                continue
            found = groups.get(stem)
            if found is None:
                groups[stem] = [suffix]
            else:
                found.append(suffix)
    return {stem: tuple(suffixes) for stem, suffixes in groups.items()}, frozenset(pins), here


def stat_date(folder_fd: int, outputs: list[Output]) -> list[Output]:
    """One date's outputs with their files' stats, newest first (an output gone meanwhile is dropped)."""
    for output in outputs:
        for suffix in output.suffixes:
            with contextlib.suppress(OSError):
                output.files[suffix] = os.stat(f"{output.stem}.{suffix}", dir_fd=folder_fd, follow_symlinks=False)
    return sorted((o for o in outputs if o.files), key=lambda o: o.mtime, reverse=True)


def read_record(folder_fd: int, stem: str) -> dict[str, Any]:
    """The <stem>.json record, or {} when it is missing or unreadable."""
    try:
        with open_file(folder_fd, f"{stem}.json") as handle:
            data = json.loads(handle.read(RECORD_MAX_BYTES))
    except (NotFound, OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Retention:
    """When an output expires under janitor.retention (the first matching rule, else default_days)."""

    def __init__(self, config: Config) -> None:
        janitor = config.janitor
        self.rules = [(re.compile(fnmatch.translate(r.match)).match, r.days) for r in janitor.retention.rules]
        self.default_days = janitor.retention.default_days
        self.min_age = janitor.min_age_hours * 3600

    def expires(self, output: Output) -> float | None:
        """The time the janitor may first delete it; None while it is pinned."""
        if output.pinned_by:
            return None
        rel = [output.date, f"{output.date}/{output.user}",
               *(f"{output.date}/{output.user}/{output.stem}.{s}" for s in output.files)]
        days = next((d for match, d in self.rules if any(match(r) for r in rel)), self.default_days)
        return output.mtime + max(days * DAY, self.min_age)


def describe(output: Output, record: dict[str, Any], retention: Retention, base: str) -> dict[str, Any]:
    """One output as /api/outputs lists it (*base*: the /files/outputs/<date>/<user>/ URL prefix)."""
    frames, fps = record.get("frames"), record.get("fps")
    duration = frames / fps if isinstance(frames, (int, float)) and isinstance(fps, (int, float)) and fps else None
    score = record.get("sync_score") if isinstance(record.get("sync_score"), dict) else None
    archived = record.get("archived") if isinstance(record.get("archived"), dict) else None
    return {
        "date": output.date, "user": output.user, "name": output.stem,
        "video": f"{base}{output.stem}.mp4" if "mp4" in output.files else None,
        "poster": f"{base}{output.stem}.jpg" if "jpg" in output.files else None,
        "record": f"{base}{output.stem}.json" if "json" in output.files else None,
        "bytes": output.bytes, "pinned": output.pinned_by is not None, "pinned_by": output.pinned_by,
        "archived": archived is not None, "archived_url": archived.get("url") if archived else None,
        "mtime": output.mtime, "expires": retention.expires(output),
        "duration": round(duration, 2) if duration else None, "engine": record.get("engine"),
        "sync": {k: score.get(k) for k in ("correlation", "verdict", "offset_ms")} if score and "verdict" in score
        else None,
    }


def group_names(folder_fd: int, stem: str) -> list[str]:
    """The files of one output present in the folder (video, record, poster)."""
    return [f"{stem}.{s}" for s in SUFFIXES if _is_file(folder_fd, f"{stem}.{s}")]


def _is_file(fd: int, name: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def delete(folder_fd: int, stem: str, marker: str) -> list[str]:
    """Remove one output as a whole (.mp4, .json, .jpg and its pins); the names removed."""
    removed = []
    for name in [*group_names(folder_fd, stem), *_pin_names(stem, marker)]:
        try:
            os.unlink(name, dir_fd=folder_fd)  # unlink never follows a symlink
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed


def _pin_names(stem: str, marker: str) -> list[str]:
    return [f"{stem}{marker}", *(f"{stem}.{s}{marker}" for s in SUFFIXES)]


def pin(folder_fd: int, stem: str, marker: str) -> None:
    """Create <stem>.keep (the janitor's pin); already pinned is fine."""
    try:
        fd = os.open(f"{stem}{marker}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=folder_fd)
    except FileExistsError:
        return
    os.close(fd)


def unpin(folder_fd: int, stem: str, marker: str) -> None:
    """Remove the output's own pins (<stem>.keep, <file>.keep); a folder's .keep is left as it is."""
    for name in _pin_names(stem, marker):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder_fd)


def user_bytes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes per user and per date under outputs/ (admins' disk view), symlinks not followed."""
    per_user: dict[str, int] = {}
    per_date: dict[str, int] = {}
    try:
        days = [e for e in os.scandir(root) if is_date(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return per_user, per_date
    for day in days:
        try:
            users = [e for e in os.scandir(day.path) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for user in users:
            total = 0
            with contextlib.suppress(OSError), os.scandir(user.path) as it:
                for entry in it:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
            key = names.escape(user.name)
            per_user[key] = per_user.get(key, 0) + total
            per_date[day.name] = per_date.get(day.name, 0) + total
    return per_user, per_date
