"""Every worker of the farm as `lipsyncd status` shows it, read from the heartbeat files on shared storage.

Each worker process (on any host) rewrites spool/.workers/<host>-<device>-<pid>.json every few seconds
and removes it when it stops cleanly. A worker whose file has not been rewritten for STALE_AFTER_BEATS
of its own heartbeat intervals is flagged: its process or its whole host stopped, and its job (if any)
is re-queued once the lease expires. A dead worker's file is left behind; once a newer worker on the
same host and device heartbeats (systemd restarted it), the dead one is listed no more.
Never imports the pipeline: status must start fast on a host without a GPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from daemon.jobs import lease

STALE_AFTER_BEATS = 3  # missed heartbeats before a worker is flagged
DEFAULT_INTERVAL = 2.0  # seconds, for heartbeat files that do not say
STOPPED_STATES = ("stopped", "error")  # a clean stop or a failed start: silence is expected


def worker_table(spool_dir: Path, now: float | None = None, *, include_replaced: bool = False) -> list[dict[str, Any]]:
    """One row per worker heartbeat file, sorted by host and device.

    Row keys: name, host, device, pid, state, job, user, stage, progress, heartbeat_age_seconds (since the
    last heartbeat), interval, stale (True when a running worker stopped heartbeating), error.
    Stale rows of a host and device that has a live worker again are left out unless include_replaced.
    """
    now = time.time() if now is None else now
    rows = []
    for beat in lease.heartbeats(spool_dir):
        interval = _number(beat.get("interval")) or DEFAULT_INTERVAL
        age = max(0.0, now - (_number(beat.get("updated")) or 0.0))  # no time at all: as old as can be
        state = str(beat.get("state") or "unknown")
        stale = state not in STOPPED_STATES and age > STALE_AFTER_BEATS * interval
        rows.append({
            "name": beat.get("name"), "host": beat.get("host"), "device": beat.get("device"), "pid": beat.get("pid"),
            "state": state, "job": beat.get("job"), "user": beat.get("user"), "stage": beat.get("stage"),
            "progress": _number(beat.get("progress")), "heartbeat_age_seconds": round(age, 1),
            "interval": interval, "stale": stale, "error": beat.get("error"),
        })
    if not include_replaced:
        live = {(row["host"], row["device"]) for row in rows if not row["stale"]}
        rows = [row for row in rows if not (row["stale"] and (row["host"], row["device"]) in live)]
    rows.sort(key=lambda row: (str(row["host"]), str(row["device"]), str(row["name"])))
    return rows


def describe(row: dict[str, Any]) -> str:
    """One line a person reads: "gpu2 cuda:0 pid 812: busy, job <id> (alice) render 40%, heartbeat 1 s ago"."""
    head = f"{row['host']} {row['device']} pid {row['pid']}"
    if row["stale"]:
        what = f"NOT HEARTBEATING (last {_duration(row['heartbeat_age_seconds'])} ago): the worker or its host stopped"
        if row["job"]:
            what += f"; its job {row['job']} is re-queued when the lease expires"
        return f"{head}: {what}"
    what = row["state"]
    if row["job"]:
        progress = f" {100 * row['progress']:.0f}%" if row["progress"] is not None else ""
        what += f", job {row['job']} ({row['user']}) {row['stage']}{progress}"
    if row["error"]:
        what += f": {row['error']}"
    what += f", heartbeat {_duration(row['heartbeat_age_seconds'])} ago"
    return f"{head}: {what}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
