"""Ingest: from inbox files to claimed, queued jobs (or plain-words failures).

Reads top to bottom: scan/changes -> settle -> pair (daemon.inbox.pairing) -> claim (daemon.inbox.claim) ->
enqueue (daemon.jobs.queue). Runs in the daemon's main thread; never imports torch or the pipeline.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from daemon import names
from daemon.access import Access
from daemon.config import Config
from daemon.inbox import claim
from daemon.inbox.manifest import MAX_BYTES, Manifest, ManifestError
from daemon.inbox.manifest import parse as parse_manifest
from daemon.inbox.pairing import Claim, Entry, Fail, decide, find_avatar_in
from daemon.inbox.settle import SettleTracker
from daemon.inbox.watcher import Change
from daemon.jobs import filing
from daemon.jobs.queue import JobQueue, QueueUnavailable
from daemon.log import fields

log = logging.getLogger("lipsyncd.ingest")

OnFailure = Callable[[str, str, str, str], None]  # (user, stem, where, reason)


class Ingest:
    def __init__(self, config: Config, queue: JobQueue, *, on_failure: OnFailure | None = None) -> None:
        self.queue = queue
        self.on_failure = on_failure
        self.in_flight: dict[str, int] = {}  # user -> jobs in the spool (refreshed by the reaper)
        self.claimed = 0
        self._last_tick = 0.0
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        self.config = config
        paths, ingest = config.paths, config.ingest
        self.inbox, self.spool, self.failed, self.avatars = paths.inbox, paths.spool, paths.failed, paths.avatars
        old = getattr(self, "settle", None)
        self.settle = SettleTracker(ingest.settle_seconds)
        if old is not None:
            self.settle._seen = old._seen  # keep what we know about files being copied
        self.pair_timeout = ingest.pair_timeout_minutes * 60
        self.users_from = ingest.users_from
        self.default_user = ingest.default_user
        self.allowed_engines = config.pipeline.allowed_engines
        self.access = Access.of(config)
        self._dirty: set[str] = set()

    # --- what is in the inbox -------------------------------------------------------------------

    def user_of(self, folder: Path) -> str | None:
        """The user a folder's files belong to, or None for folders we do not take files from."""
        if folder == self.inbox:
            return self.default_user
        if folder.parent != self.inbox:
            return None  # deeper folders are not watched for drops
        return folder.name if self.users_from == "folder" else self.default_user

    def scan(self) -> None:
        """Look at every drop folder (start-up and every rescan_seconds)."""
        now = time.monotonic()
        present: set[str] = set()
        folders = [self.inbox]
        try:
            folders += [Path(e.path) for e in os.scandir(self.inbox)
                        if e.is_dir(follow_symlinks=False) and not names.is_temp_name(e.name)]
        except FileNotFoundError:
            self.inbox.mkdir(parents=True, exist_ok=True)
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if names.is_temp_name(entry.name) or entry.is_dir(follow_symlinks=False):
                    continue
                present.add(entry.path)
                self._observe(entry.path, now, closed=False)
            self._dirty.add(str(folder))
        for path in self.settle.paths():
            if path not in present:
                self.settle.forget(path)

    def change(self, change: Change) -> None:
        """Take one watcher event into account."""
        path = Path(change.path)
        if change.is_dir:
            if path.parent == self.inbox and path.is_dir() and not path.is_symlink():
                self._scan_folder(path)
            return
        if names.is_temp_name(path.name) or self.user_of(path.parent) is None:
            return
        self._observe(change.path, time.monotonic(), closed=change.closed)
        self._dirty.add(str(path.parent))

    def _scan_folder(self, folder: Path) -> None:
        now = time.monotonic()
        try:
            for entry in os.scandir(folder):
                if not names.is_temp_name(entry.name) and not entry.is_dir(follow_symlinks=False):
                    self._observe(entry.path, now, closed=False)
        except OSError:
            return
        self._dirty.add(str(folder))

    def _observe(self, path: str, now: float, *, closed: bool) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.settle.forget(path)
            return
        self.settle.observe(path, st, now, closed=closed)

    def next_deadline(self) -> float | None:
        """The next monotonic time a tracked file may become settled (for the main loop's sleep)."""
        now = time.monotonic()
        future = [d for p in self.settle.paths() if (d := self.settle.deadline(p)) is not None and d > now]
        return min(future) if future else None

    # --- deciding and acting ----------------------------------------------------------------------

    def tick(self, *, all_folders: bool = False) -> int:
        """Pair what has settled in dirty folders (or all); returns the number of jobs claimed."""
        now_mono, now_wall = time.monotonic(), time.time()
        by_folder: dict[str, list[str]] = {}
        for path in self.settle.paths():
            by_folder.setdefault(os.path.dirname(path), []).append(path)
        due = set(self._dirty)
        for folder, paths in by_folder.items():
            if all_folders or any(self._settled_since(p, self._last_tick, now_mono) for p in paths):
                due.add(folder)
        self._dirty.clear()
        self._last_tick = now_mono
        claimed = 0
        for folder in due:
            paths = by_folder.get(folder)
            if not paths:
                continue
            try:
                claimed += self._decide_folder(Path(folder), paths, now_mono, now_wall)
            except Exception as exc:  # noqa: BLE001 - one folder's trouble must not hold up the others
                log.error("could not handle the drops in %s (%s: %s); they stay there and are tried again at the "
                          "next rescan. This is a bug in lipsyncd, please report it.", names.escape(folder),
                          type(exc).__name__,
                          exc, extra=fields(stage="pair"))
                log.debug("traceback of the error above", exc_info=True)
        return claimed

    def _settled_since(self, path: str, since: float, now: float) -> bool:
        deadline = self.settle.deadline(path)
        return deadline is not None and since < deadline <= now

    def _decide_folder(self, folder: Path, paths: list[str], now_mono: float, now_wall: float) -> int:
        user = self.user_of(folder)
        if user is None:
            return 0
        entries: dict[str, Entry] = {}
        folder_problem = names.refusal(folder.name) if folder != self.inbox else None
        if folder_problem:
            folder_problem = f"the folder this was dropped in cannot be used as a user name: {folder_problem}. " \
                "Rename the folder."
        else:
            folder_problem = self.access.no_account_reason(user)  # private mode: a folder is an account's
        for path in paths:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self.settle.forget(path)
                continue
            self.settle.observe(path, st, now_mono)
            name = os.path.basename(path)
            entries[name] = Entry(name=name, settled=self.settle.settled(path, now_mono), size=st.st_size,
                                  arrived=max(st.st_mtime, st.st_ctime),
                                  problem=_problem(name, st, folder_problem))
        if not entries:
            return 0
        source = "" if folder == self.inbox else folder.name
        decisions = decide(entries, now=now_wall, pair_timeout=self.pair_timeout,
                           find_avatar=find_avatar_in(self.avatars, user),
                           read_manifest=lambda name: _read_manifest(folder / name, self.allowed_engines))
        claimed = 0
        for decision in decisions:
            if isinstance(decision, Claim):
                claimed += self._claim(folder, user, source, decision)
            elif isinstance(decision, Fail):
                self._fail(folder, user, decision)
        return claimed

    def _claim(self, folder: Path, user: str, source: str, decision: Claim) -> int:
        try:
            job = claim.claim(self.spool, folder, user, source, decision)
        except claim.UnsafeFile as exc:
            self._fail(folder, user, Fail(names.printable(decision.stem), decision.files, str(exc)))
            return 0
        except FileNotFoundError:
            log.info("files of %s vanished while being claimed; waiting for them to come back",
                     names.quoted(decision.stem))
            return 0
        except OSError as exc:
            # ENOSPC (no room for a folder in the spool), EACCES...: the files stay in the inbox untouched.
            log.error("cannot claim %s into %s: %s; the files stay in the inbox and are tried again",
                      names.quoted(decision.stem), self.spool, exc, extra=fields(user=user, stage="claim"))
            self._dirty.add(str(folder))
            return 0
        for name in decision.files:
            self.settle.forget(str(folder / name))
        priority = -self.in_flight.get(user, 0)
        self.in_flight[user] = self.in_flight.get(user, 0) + 1
        self.claimed += 1
        inputs = ", ".join(map(names.quoted, decision.files))
        log.info("claimed %s for %s (%s)", names.escape(decision.stem), names.escape(user), inputs,
                 extra=fields(job_id=job.id, user=user, stage="claim"))
        try:
            self.queue.put(job.id, priority=priority)
        except QueueUnavailable as exc:
            log.warning("%s; the job waits in the spool and is queued when the queue is back", exc,
                        extra=fields(job_id=job.id, user=user, stage="queue"))
        return 1

    def _fail(self, folder: Path, user: str, decision: Fail) -> None:
        files = [(folder / name, name) for name in decision.files]
        # A refused folder name may hold anything (bytes that are not UTF-8, a newline): job.json, error.txt,
        # status and alerts get the escaped form, the same one failed/<date>/<user>/ is named with.
        user, reason = names.escape(user), names.escape(decision.reason)  # the reason may quote a name
        try:
            where = filing.file_failure(self.failed, user, decision.stem, files, reason, access=self.access)
        except OSError as exc:
            log.error("could not move %s to failed/ (%s); leaving them in the inbox. Reason they failed: %s",
                      ", ".join(map(names.quoted, decision.files)), exc, reason,
                      extra=fields(user=user, stage="pair"))
            return
        for name in decision.files:
            self.settle.forget(str(folder / name))
        log.error("%s: %s -> %s", names.escape(decision.stem), reason, names.escape(str(where)),
                  extra=fields(user=user, stage="pair"))
        if self.on_failure is not None:
            self.on_failure(user, decision.stem, str(where), reason)


def _problem(name: str, st: os.stat_result, folder_problem: str | None) -> str | None:
    """Why a file must be refused without being opened, or None."""
    if folder_problem:
        return folder_problem
    unsafe = claim.plain_file_problem(name, st)
    if unsafe:
        return unsafe
    why = names.refusal(name)
    if why:
        return f"the file name {names.printable(name)!r} cannot be used: {why}. Rename it and drop it again."
    return None


def _read_manifest(path: Path, allowed_engines: list[str]) -> Manifest:
    """The manifest *path*, read only if it is a plain file of its own and not over MAX_BYTES."""
    try:
        claim.check_plain_file(path)
        # Checked again on what was opened: swapped for a FIFO after the lstat, a blocking open would hang
        # the main loop until someone writes to it; O_NONBLOCK returns at once and fstat tells what it is.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb", buffering=0) as handle:
            problem = claim.plain_file_problem(path.name, os.fstat(fd))
            if problem:
                raise claim.UnsafeFile(problem)
            data = handle.read(MAX_BYTES + 1)
    except (OSError, claim.UnsafeFile) as exc:
        raise ManifestError(f"it cannot be read ({exc})") from None
    try:
        return parse_manifest(data, names.parse(path.name).stem, allowed_engines)
    except ManifestError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:
        # Whatever the YAML library does with a hostile file is that file's failure, never the main loop's.
        raise ManifestError(f"it could not be read as a manifest ({type(exc).__name__}); keep it short and "
                            "simple") from None
