"""What the janitor sees in spool/: jobs by state, folders that look abandoned, dead workers' heartbeats.

Reads only, but for dead_workers' removal of heartbeat files. The janitor never deletes a job in the
spool (a job there still holds a person's inputs); it reports a folder whose lease has been stale for a
long time while its job is not queued (no daemon reaped it), a job folder without a readable job.json,
and a claim (.claim-<id>) left half done, so a person can look.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from daemon.names import CLAIM_PREFIX, JOB_FILE, LEASE_FILE, WORKERS_DIR

# "Long stale": this many lease periods, and at least an hour.
STALE_LEASE_PERIODS = 10
STALE_MIN_SECONDS = 3600


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class SpoolReport:
    states: Counter[str] = field(default_factory=Counter)  # job.json "state" -> count
    stale: list[dict[str, Any]] = field(default_factory=list)
    dead_workers: list[dict[str, Any]] = field(default_factory=list)  # heartbeat files removed (or, dry run, to be)

    def to_dict(self) -> dict[str, Any]:
        return {"states": dict(self.states), "stale": self.stale, "dead_workers": self.dead_workers}


def stale_after(lease_seconds: float) -> float:
    return max(STALE_LEASE_PERIODS * float(lease_seconds), STALE_MIN_SECONDS)


def scan(spool: str, now: float, lease_seconds: float) -> SpoolReport:
    report = SpoolReport()
    limit = stale_after(lease_seconds)
    try:
        entries = list(os.scandir(spool))
    except OSError:
        return report
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.name == WORKERS_DIR or not entry.is_dir(follow_symlinks=False):
            continue
        age = now - entry.stat(follow_symlinks=False).st_mtime
        if entry.name.startswith(CLAIM_PREFIX):
            if age > limit:
                report.stale.append({"path": entry.path, "why": f"claim left unfinished {age / 3600:.1f} h ago"})
            continue
        if entry.name.startswith("."):
            continue
        try:
            with open(os.path.join(entry.path, JOB_FILE), encoding="utf-8") as handle:
                job = json.load(handle)
            state = str(job.get("state", "unknown"))
        except (OSError, ValueError, AttributeError):
            report.states["unreadable"] += 1
            if age > limit:
                report.stale.append({"path": entry.path, "why": "no readable job.json"})
            continue
        report.states[state] += 1
        try:
            lease_age = now - os.stat(os.path.join(entry.path, LEASE_FILE)).st_mtime
        except OSError:
            lease_age = None
        if state != "queued" and lease_age is not None and lease_age > limit:
            report.stale.append({"path": entry.path, "job_id": entry.name, "user": job.get("user"),
                                 "state": state,
                                 "why": f"lease not renewed for {lease_age / 3600:.1f} h and the job is not queued"})
        elif state == "running" and lease_age is None and age > limit:
            report.stale.append({"path": entry.path, "job_id": entry.name, "user": job.get("user"),
                                 "state": state, "why": "marked running but has no lease"})
    return report


def dead_workers(spool: str, now: float, lease_seconds: float, remove: bool) -> list[dict[str, Any]]:
    """Heartbeat files (spool/.workers/<name>.json) of workers silent for longer than stale_after(): their
    process or host is gone (a live worker rewrites its file every few seconds, and its job's lease was
    stale long before, so the reaper has re-queued it). Removed when *remove*; a worker that was only
    paused simply writes its file again. Until then `lipsyncd status` shows such a worker as not heartbeating."""
    limit = stale_after(lease_seconds)
    folder = os.path.join(spool, WORKERS_DIR)
    try:
        fd = os.open(folder, _DIR_FLAGS)
    except OSError:
        return []
    dead: list[dict[str, Any]] = []
    try:
        with os.scandir(fd) as it:
            names = sorted(e.name for e in it if e.name.endswith(".json") and not e.name.startswith("."))
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    continue
                updated = st.st_mtime
                with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
                    with open(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd),
                              encoding="utf-8") as handle:
                        when = json.load(handle).get("updated")
                    if isinstance(when, (int, float)) and not isinstance(when, bool):
                        updated = max(updated, float(when))
                age = now - updated
                if age <= limit:
                    continue
                if remove:
                    os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                continue
            dead.append({"path": os.path.join(folder, name), "silent_hours": round(age / 3600, 1)})
    finally:
        os.close(fd)
    return dead
