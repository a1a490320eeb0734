"""A person's queue as the page shows it: jobs waiting and running (with progress) and their failures.

Read from the same files `lipsyncd status` reads (spool/<id>/job.json and lease, failed/<date>/<user>/<stem>/
with error.txt), filtered to one user; a failure folder is reached like an output, without following symlinks.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from daemon import names
from daemon.config import Config
from daemon.jobs import spool
from daemon.web import files

ERROR_MAX_BYTES = 16 << 10  # error.txt as shown on the page: the first 16 KB
FAILURES_SHOWN = 200


def queue(config: Config, user: str | None) -> dict[str, list[dict[str, Any]]]:
    """{"queued": [...], "running": [...]} for *user* (None: everyone's, for admins)."""
    now = time.time()
    queued, running = [], []
    for entry in spool.jobs(config.paths.spool):
        job = entry.job
        if job is None or (user is not None and job.user != user):
            continue
        item: dict[str, Any] = {"job": entry.id, "user": names.escape(job.user), "name": names.escape(job.stem),
                                "attempts": job.attempts, "age_seconds": round(now - job.created, 1)}
        if entry.lease is not None and entry.lease_age is not None and entry.lease_age < config.queue.lease_seconds:
            item.update({k: entry.lease.get(k) for k in ("stage", "progress", "device")})
            running.append(item)
        else:
            if entry.waiting is not None:
                item["waiting"] = entry.waiting.get("reason")
            queued.append(item)
    return {"queued": queued, "running": running}


def inbox(config: Config, user: str) -> list[str]:
    """The files waiting in inbox/<user>/ to be paired and taken (an upload shows here first); temps left out."""
    if not files.is_name(user):
        return []
    return sorted(names.escape(name) for name in files.own_files(config.paths.inbox, user)
                  if not names.is_temp_name(name))


def failures(config: Config, user: str) -> list[dict[str, Any]]:
    """*user*'s failed jobs, newest first, each with its error.txt."""
    if not files.is_name(user):
        return []
    root = config.paths.failed
    try:
        with os.scandir(root) as it:
            days = sorted((e.name for e in it if files.is_date(e.name) and e.is_dir(follow_symlinks=False)),
                          reverse=True)
    except OSError:
        return []
    found: list[dict[str, Any]] = []
    for day in days:
        try:
            with files.user_folder(root, day, user) as user_fd, os.scandir(user_fd) as it:
                stems = [e.name for e in it if files.is_name(e.name) and e.is_dir(follow_symlinks=False)]
                found += [failure for stem in stems if (failure := _failure(user_fd, day, user, stem))]
        except files.NotFound:
            continue
        if len(found) >= FAILURES_SHOWN:
            break
    found.sort(key=lambda f: f["time"], reverse=True)
    return found[:FAILURES_SHOWN]


def _failure(user_fd: int, day: str, user: str, stem: str) -> dict[str, Any] | None:
    try:
        folder_fd = files.open_dir(user_fd, stem)
    except files.NotFound:
        return None
    try:
        try:
            with files.open_file(folder_fd, names.ERROR_FILE) as handle:
                error = handle.read(ERROR_MAX_BYTES).decode("utf-8", "replace")
                mtime = os.fstat(handle.fileno()).st_mtime
        except files.NotFound:
            return None
        job: dict[str, Any] = {}
        try:
            with files.open_file(folder_fd, names.JOB_FILE) as handle:
                job = json.loads(handle.read(files.RECORD_MAX_BYTES))
        except (files.NotFound, ValueError):
            pass
        return {"date": day, "user": user, "name": stem, "error": error, "time": mtime,
                "job": job.get("id") if isinstance(job, dict) else None}
    finally:
        os.close(folder_fd)
