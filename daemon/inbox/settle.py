"""Settling: a dropped file counts only once it is complete.

Complete means its size, mtime and inode have not changed for settle_seconds. A file that was closed
after writing (close_write) or renamed into place (moved_to) needs only FAST_SECONDS of quiet, which is
how cp, mv and rsync finish; a writer that appends and closes again within that time keeps it unsettled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

FAST_SECONDS = 1.0


@dataclass
class Seen:
    size: int
    mtime_ns: int
    ino: int
    changed_at: float  # monotonic time of the last change we saw
    closed: bool  # the last event was close_write / moved_to and nothing changed since


class SettleTracker:
    def __init__(self, settle_seconds: float, fast_seconds: float = FAST_SECONDS) -> None:
        self.settle_seconds = float(settle_seconds)
        self.fast_seconds = min(float(fast_seconds), self.settle_seconds)
        self._seen: dict[str, Seen] = {}

    def observe(self, path: str, st: os.stat_result, now: float, *, closed: bool = False) -> None:
        """Record what lstat() says now; a change restarts the file's quiet time."""
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime_ns, seen.ino) != key:
            self._seen[path] = Seen(st.st_size, st.st_mtime_ns, st.st_ino, now, closed)
        elif closed:
            seen.closed = True

    def quiet_needed(self, path: str) -> float:
        seen = self._seen.get(path)
        return self.fast_seconds if seen is not None and seen.closed else self.settle_seconds

    def settled(self, path: str, now: float) -> bool:
        seen = self._seen.get(path)
        return seen is not None and now - seen.changed_at >= self.quiet_needed(path)

    def deadline(self, path: str) -> float | None:
        """Monotonic time at which *path* will count as settled if nothing changes."""
        seen = self._seen.get(path)
        return None if seen is None else seen.changed_at + self.quiet_needed(path)

    def forget(self, path: str) -> None:
        self._seen.pop(path, None)

    def paths(self) -> list[str]:
        return list(self._seen)

    def __contains__(self, path: str) -> bool:
        return path in self._seen
