"""Watching the inbox: watchdog's inotify observer, or polling for NFS/SMB mounts.

The watcher only reports which paths changed and how (a Change on a thread-safe queue); the ingest
loop decides what the change means. When the kernel runs out of inotify watches or instances, the
watcher says so with the sysctl to raise and falls back to polling, so drops are still seen.
The queue is a SimpleQueue, whose put() is reentrant: the daemon's signal handlers put None on it to
wake its main loop, where a queue.Queue (a plain lock) could deadlock.
An inotify watch belongs to the folder's inode, not its name: when the inbox is deleted (IN_DELETE_SELF,
then IN_IGNORED) or moved away and a new one made, the old watch sees nothing more. check(), called by
the main loop, compares the inbox's inode with the watched one and watches the new folder when it changed.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)

log = logging.getLogger("lipsyncd.watcher")

POLL_INTERVAL_SECONDS = 1.0
# While the inbox is gone, the main loop looks for a new one this often (a stat, nothing more).
LOST_CHECK_SECONDS = 0.5
_IGNORED = (FileOpenedEvent, FileClosedNoWriteEvent)


@dataclass(frozen=True)
class Change:
    path: str
    closed: bool = False  # close_write or moved_to: the writer says it is done
    is_dir: bool = False


class _Handler(FileSystemEventHandler):
    def __init__(self, changes: queue.SimpleQueue[Change | None], root: str, on_lost: Callable[[], None]) -> None:
        self.changes = changes
        self.root = root
        self.on_lost = on_lost

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, _IGNORED):
            return
        src = _text(event.src_path)
        if src == self.root and isinstance(event, DirDeletedEvent | FileSystemMovedEvent):
            self.on_lost()  # the watched inbox itself went away: its watch is dead
            self.changes.put(None)
            return
        if isinstance(event, FileSystemMovedEvent):
            dest = _text(event.dest_path)
            self.changes.put(Change(src, is_dir=isinstance(event, DirMovedEvent)))
            self.changes.put(Change(dest, closed=True, is_dir=isinstance(event, DirMovedEvent)))
            return
        closed = isinstance(event, FileClosedEvent)
        self.changes.put(Change(src, closed=closed, is_dir=isinstance(event, DirCreatedEvent) or event.is_directory))


def _text(path: str | bytes) -> str:
    return path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path


class Watcher:
    """Starts an observer on the inbox; Change objects arrive on .changes."""

    def __init__(self, inbox: Path, *, poll: bool) -> None:
        self.inbox = inbox
        self.changes: queue.SimpleQueue[Change | None] = queue.SimpleQueue()  # None: wake up, nothing changed
        self.poll = poll
        self._observer = None
        self.mode = ""
        self.lost = False  # the inbox we watched was deleted or moved away; a new one is not watched yet
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder being watched
        self._gone_said = False  # the log already says the inbox is gone

    def start(self) -> None:
        if not self.poll:
            try:
                self._start(polling=False)
                self.mode = "inotify"
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise
                log.warning("%s; watching %s by polling every %g s instead. To use inotify, raise the limit, e.g. "
                            "sysctl -w fs.inotify.max_user_%s=%s (and add it to /etc/sysctl.d/)", exc.strerror,
                            self.inbox, POLL_INTERVAL_SECONDS,
                            "watches" if exc.errno == errno.ENOSPC else "instances",
                            "524288" if exc.errno == errno.ENOSPC else "1024")
                self._stop_observer()
        self._start(polling=True)
        self.mode = "polling"

    def _start(self, *, polling: bool) -> None:
        if polling:
            from watchdog.observers.polling import PollingObserver

            observer = PollingObserver(timeout=POLL_INTERVAL_SECONDS)
        else:
            from watchdog.observers.inotify import InotifyObserver

            observer = InotifyObserver()
        self._observer = observer
        self._identity = _identity(self.inbox)
        observer.schedule(_Handler(self.changes, str(self.inbox), self._on_lost), str(self.inbox), recursive=True)
        observer.start()

    def _on_lost(self) -> None:
        self.lost = True

    def check(self) -> bool:
        """Watch the inbox again if it was deleted/moved and re-created. True when it did (the caller rescans)."""
        now = _identity(self.inbox)
        if now is None:
            if not self._gone_said:
                log.warning("the inbox %s was deleted or moved away; drops are not seen until it is back",
                            self.inbox)
                self._gone_said = True
            self.lost = True
            return False
        if now == self._identity and not self.lost:
            return False
        # The flag, not only the inode: a file system may give the new folder the old one's inode number.
        log.warning("the inbox %s was deleted or moved away and re-created (a new folder the old watch does not "
                    "see); watching it again", self.inbox)
        self._stop_observer()
        self.lost = self._gone_said = False
        self.start()
        return True

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        try:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=5)
        except (OSError, RuntimeError):
            pass

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        self._stop_observer()


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino
