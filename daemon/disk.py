"""Filesystem usage of the data folders, and its history: how fast the disk fills and when it will be full.

Each filesystem is counted once however many folders (outputs, failed, spool, ...) live on it, and is
named by its mount point, which (unlike st_dev) stays the same across reboots.
Percentages are computed the way df(1) does: used / (used + available to unprivileged users).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FOLDER_KEYS = ("outputs", "failed", "spool", "inbox", "state", "avatars")
# History: keep a sample at most this often and for this long.
SAMPLE_EVERY_SECONDS = 600
HISTORY_SECONDS = 7 * 86400
HISTORY_MAX_SAMPLES = 1100
# Growth needs at least this much history to mean anything.
MIN_GROWTH_SPAN_SECONDS = 3600


@dataclass
class FsUsage:
    """One filesystem holding some of the configured folders."""

    mount: str
    dev: int
    folders: list[str] = field(default_factory=list)  # config keys, e.g. ["outputs", "failed"]
    used: int = 0
    avail: int = 0

    @property
    def size(self) -> int:
        return self.used + self.avail

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.size if self.size else 0.0

    @property
    def free_percent(self) -> float:
        return 100.0 - self.percent

    def to_dict(self) -> dict[str, Any]:
        return {"mount": self.mount, "folders": self.folders, "size": self.size, "used": self.used,
                "avail": self.avail, "percent": round(self.percent, 2)}


def existing_ancestor(path: str) -> str:
    """*path*, or its nearest parent that exists (a folder the daemon has not created yet lives there)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def mount_point(path: str) -> str:
    """The mount point of the filesystem holding *path* (walk up until the device changes)."""
    path = os.path.realpath(path)
    dev = os.stat(path).st_dev
    while True:
        parent = os.path.dirname(path)
        if parent == path or os.stat(parent).st_dev != dev:
            return path
        path = parent


def measure(path: str) -> tuple[int, int]:
    """(used bytes, bytes available to unprivileged users) of the filesystem holding *path*."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return used, st.f_bavail * st.f_frsize


def filesystems(paths: Mapping[str, str | os.PathLike[str]], keys: tuple[str, ...] = FOLDER_KEYS) -> list[FsUsage]:
    """The filesystems holding paths[key] for each key, deduplicated by st_dev, in the order of *keys*."""
    found: dict[int, FsUsage] = {}
    for key in keys:
        if key not in paths:
            continue
        where = existing_ancestor(paths[key])
        dev = os.stat(where).st_dev
        fs = found.get(dev)
        if fs is None:
            fs = found[dev] = FsUsage(mount=mount_point(where), dev=dev)
            fs.used, fs.avail = measure(where)
        fs.folders.append(key)
    return list(found.values())


@dataclass
class Growth:
    """How the filesystem's usage moved over the recorded runs."""

    runs: int
    span_days: float
    net_per_day: float  # change of used bytes per day, after the janitor's pruning
    written_per_day: float  # new data per day (net change plus what the janitor freed)

    def days_until_full(self, avail: int) -> float | None:
        """At the net rate; None when usage is not growing."""
        if self.net_per_day <= 0:
            return None
        return avail / self.net_per_day

    def to_dict(self, avail: int) -> dict[str, Any]:
        full = self.days_until_full(avail)
        return {"runs": self.runs, "span_days": round(self.span_days, 3), "net_bytes_per_day": round(self.net_per_day),
                "written_bytes_per_day": round(self.written_per_day),
                "days_until_full": None if full is None else round(full, 2)}


def record_sample(samples: list[list[float]], now: float, used: int, freed_total: int) -> list[list[float]]:
    """Append [time, used, janitor's cumulative freed bytes] unless the last sample is recent; drop old ones."""
    out = [s for s in samples if isinstance(s, list) and len(s) == 3 and now - s[0] <= HISTORY_SECONDS]
    if not out or now - out[-1][0] >= SAMPLE_EVERY_SECONDS:
        out.append([now, used, freed_total])
    return out[-HISTORY_MAX_SAMPLES:]


def growth(samples: list[list[float]], now: float, used: int, freed_total: int) -> Growth | None:
    """Growth from the oldest recorded sample to now; None until there is MIN_GROWTH_SPAN_SECONDS of history.

    freed_total counts what the janitor deleted, so written_per_day is the rate new results arrive at
    even when pruning keeps the net change near zero.
    """
    usable = [s for s in samples if now - s[0] >= 0]
    if not usable:
        return None
    first = usable[0]
    span = now - first[0]
    if span < MIN_GROWTH_SPAN_SECONDS:
        return None
    days = span / 86400
    net = used - first[1]
    written = net + max(0, freed_total - first[2])
    runs = len(usable) + (0 if usable[-1][0] == now else 1)
    return Growth(runs=runs, span_days=days, net_per_day=net / days, written_per_day=written / days)
