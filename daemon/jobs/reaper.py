"""The lease reaper: at-least-once execution on top of Huey's at-most-once delivery.

Every pass looks at the spool: a running job whose lease went stale (its worker died) and a queued job
that is not on the queue (Redis was down, or the daemon died between claim and enqueue) are put back
on the queue; so is, every little while, a rendered job waiting for the server to let it be published
(spool.WAITING_FILE: outputs/ read-only, missing, full...). It also counts each user's jobs in flight,
which the fairness priorities use, and removes job folders that hold nothing but a stale lease (a
heartbeat that raced the removal of a finished job).

It also decides which deaths count against a job: a worker that died while this daemon kept running
(the engine crashed it, or the OOM killer) used up an attempt; a worker whose last heartbeat came before
this daemon started died with the whole service (killed, restarted, a reboot), so its attempt is given back.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import Config
from daemon.jobs import spool
from daemon.jobs.job import JobState, load, save
from daemon.jobs.lease import read_lease
from daemon.jobs.queue import REQUEUE_PRIORITY, JobQueue, QueueUnavailable
from daemon.log import fields
from daemon.names import JOB_FILE, LEASE_FILE, TAKEOVER_LOCK

log = logging.getLogger("lipsyncd.reaper")

STARTED = time.time()  # when this process (the daemon that reaps) started; earlier heartbeats are an earlier service's
PUBLISH_RETRY_MAX = 30.0  # seconds; a job waiting to be published is tried again after 2 leases, at most this

@dataclass
class SpoolSummary:
    queued: int = 0
    running: list[dict[str, Any]] = field(default_factory=list)  # lease data of running jobs
    per_user: dict[str, int] = field(default_factory=dict)
    requeued: list[str] = field(default_factory=list)


def reap(config: Config, queue: JobQueue, *, grace_seconds: float | None = None,
         service_started: float | None = None) -> SpoolSummary:
    """One pass over the spool; re-queues what was lost. Returns what the spool holds.
    *service_started*: when the running service started (default: this process's start, STARTED)."""
    lease_seconds = config.queue.lease_seconds
    grace = lease_seconds if grace_seconds is None else grace_seconds
    summary = SpoolSummary()
    try:
        pending = set(queue.pending())
    except QueueUnavailable as exc:
        # A Redis queue logs the start and end of an outage itself; every pass repeating it is noise.
        log.log(logging.DEBUG if queue.redis else logging.WARNING, "%s; lost jobs are re-queued when it is back", exc)
        pending = None
    now = time.time()
    started = STARTED if service_started is None else service_started
    for entry in spool.jobs(config.paths.spool):
        job = entry.job
        if job is None:
            _remove_if_only_a_stale_lease(entry, lease_seconds)
            continue
        summary.per_user[job.user] = summary.per_user.get(job.user, 0) + 1
        if entry.lease is not None and entry.lease_age is not None and entry.lease_age < lease_seconds:
            summary.running.append({**entry.lease, "job": job.id, "user": job.user, "stem": job.stem})
            continue
        summary.queued += 1
        if pending is None or job.id in pending:
            continue
        if entry.lease is not None:
            # The stale lease stays: the worker that takes the job replaces it only if it is still stale
            # then (lease.take_lease), so a worker that was merely slow (NFS stall) keeps its job.
            why = (f"its worker {entry.lease.get('worker', '?')} (pid {entry.lease.get('pid', '?')} on "
                   f"{entry.lease.get('host', '?')}) stopped heartbeating {entry.lease_age:.0f} s ago: the worker "
                   "or its host died")
            if job.state is JobState.RUNNING and now - entry.lease_age < started:
                _give_back_attempt(entry.folder, lease_seconds, started)
        elif entry.waiting is not None:
            # Rendered, but the server could not take the output (the worker said why, once): try again later.
            if now - _mtime(entry.folder / spool.WAITING_FILE) < min(PUBLISH_RETRY_MAX, 2 * lease_seconds):
                continue
            why = ""
        else:
            # A job that just left the queue has no lease for a moment: wait a grace period.
            changed = _mtime(entry.folder / JOB_FILE)
            if now - changed < grace:
                continue
            why = ("it was not on the queue (claimed while the queue was unreachable, lost by a Redis restart, "
                   "or the daemon stopped between claim and queue)")
        try:
            queue.put(job.id, priority=REQUEUE_PRIORITY)
        except QueueUnavailable as exc:
            log.warning("%s; job %s stays in the spool", exc, job.id, extra=fields(job_id=job.id, user=job.user))
            break
        _touch(entry.folder / JOB_FILE)
        summary.requeued.append(job.id)
        if not why:
            log.debug("job %s is tried again: %s", job.id, entry.waiting.get("reason") if entry.waiting else "",
                      extra=fields(job_id=job.id, user=job.user, stage="reap"))
            continue
        log.warning("re-queued job %s (%s) because %s", job.id, job.stem, why,
                    extra=fields(job_id=job.id, user=job.user, stage="reap"))
    return summary


def _give_back_attempt(folder: Path, lease_seconds: float, started: float) -> None:
    """The job's worker died with the whole service (its last heartbeat predates this daemon): the attempt it
    had counted is not the job's fault. Under the take-over lock, so a worker taking the job over meanwhile
    (which then counts its own attempt) is never undone."""
    try:
        lock = os.open(folder / TAKEOVER_LOCK, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError:
        return
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a worker is taking it over right now: let its count stand
        lease_data, age = read_lease(folder)
        if lease_data is None or age is None or age < lease_seconds or time.time() - age >= started:
            return  # taken over or released meanwhile
        try:
            job = load(folder)
        except (OSError, ValueError, TypeError, KeyError):
            return
        if job.state is not JobState.RUNNING or job.attempts <= 0:
            return
        job.attempts -= 1
        job.state = JobState.QUEUED
        save(folder, job)
        log.info("job %s: its attempt %d does not count, the whole service stopped while it ran (its worker's "
                 "last heartbeat came before this daemon started)", job.id, job.attempts + 1,
                 extra=fields(job_id=job.id, user=job.user, stage="reap"))
    finally:
        os.close(lock)


def _remove_if_only_a_stale_lease(entry: spool.SpoolEntry, lease_seconds: float) -> None:
    """A folder left with a lease and nothing else: its job finished (or failed) while a worker's heartbeat
    rewrote the lease. Nothing a person dropped is in it; without this it would stay forever."""
    if entry.lease_age is None or entry.lease_age < lease_seconds:
        return
    try:
        names = set(os.listdir(entry.folder))
    except OSError:
        return
    if names and all(n == LEASE_FILE or n.startswith(f".{LEASE_FILE}.") for n in names):
        shutil.rmtree(entry.folder, ignore_errors=True)
        log.info("removed %s, which held only the stale lease of a finished job", entry.folder,
                 extra=fields(job_id=entry.id, stage="reap"))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.touch()
