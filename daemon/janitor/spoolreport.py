"""What the janitor sees in spool/: jobs by state, and folders that look abandoned. Reads only.

The janitor never deletes in the spool (a job there still holds a person's inputs); it reports a folder
whose lease has been stale for a long time while its job is not queued (no daemon reaped it), a job
folder without a readable job.json, and a claim (.claim-<id>) left half done, so a person can look.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from daemon.names import CLAIM_PREFIX, JOB_FILE, LEASE_FILE, WORKERS_DIR

# "Long stale": this many lease periods, and at least an hour.
STALE_LEASE_PERIODS = 10
STALE_MIN_SECONDS = 3600


@dataclass
class SpoolReport:
    states: Counter[str] = field(default_factory=Counter)  # job.json "state" -> count
    stale: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"states": dict(self.states), "stale": self.stale}


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
