"""Leases and heartbeats: which worker holds a job (spool/<id>/lease) and what every worker is doing.

A running job's lease names its worker; the worker rewrites it every few seconds (its mtime is the
heartbeat) and a lease not rewritten for queue.lease_seconds is stale: its worker died, and the reaper
puts the job back on the queue. Each worker process also keeps spool/.workers/<host>-<device>-<pid>.json
for `lipsyncd status` and the farm's worker table.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from daemon.jobs.job import write_json_atomic
from daemon.names import LEASE_FILE, TAKEOVER_LOCK, WORKERS_DIR

log = logging.getLogger("lipsyncd.spool")  # the logger name journald shows (LOGGER=) since leases were spool.py's


def read_lease(folder: Path, now: float | None = None) -> tuple[dict[str, Any] | None, float | None]:
    """The job's lease and its age in seconds (since the last heartbeat); (None, None) when it has none."""
    path = folder / LEASE_FILE
    try:
        st = path.stat()
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return None, None
    return data, (now or time.time()) - st.st_mtime


def take_lease(folder: Path, worker: dict[str, Any], stale_after: float) -> bool:
    """Create the job's lease for this worker; False when another live worker holds it (or takes it over now).

    A fresh lease is created with O_EXCL, so of two workers only one gets it. Taking over a stale one is
    remove-then-create, so it happens under an exclusive flock of the folder's TAKEOVER_LOCK, with the
    staleness checked again inside: without it two workers could both see the lease stale, and the second
    would remove the lease the first had just made, each believing the job its own."""
    path = folder / LEASE_FILE
    data = {**worker, "started": time.time(), "updated": time.time(), "stage": "starting", "progress": 0.0}
    if _create_lease(path, data):
        return True
    try:
        lock = os.open(folder / TAKEOVER_LOCK, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except FileNotFoundError:
        return False  # the job folder is gone: done or failed meanwhile
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another worker is taking it over right now
        except OSError as exc:  # storage without locks (ENOLCK): take over unlocked, lease fencing still holds
            log.warning("cannot lock %s (%s): taking over its stale lease without the lock",
                        folder / TAKEOVER_LOCK, exc.strerror or exc, extra={"job_id": folder.name})
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            age = None  # released meanwhile (finished, or re-queued)
        if age is not None:
            if age < stale_after:
                return False
            log.warning("taking over stale lease of %s (%.0f s old)", folder.name, age, extra={"job_id": folder.name})
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return _create_lease(path, data)
    finally:
        os.close(lock)


def _create_lease(path: Path, data: dict[str, Any]) -> bool:
    """Write *data* as a new lease; False when a lease exists or the job folder is gone."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except (FileExistsError, FileNotFoundError):
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    return True


def owns_lease(folder: Path, worker: str) -> bool:
    """True while the job's lease is still *worker*'s (another worker takes over a lease gone stale)."""
    try:
        return json.loads((folder / LEASE_FILE).read_text(encoding="utf-8")).get("worker") == worker
    except (OSError, ValueError, AttributeError):
        return False


def touch_lease(folder: Path, data: dict[str, Any]) -> bool:
    """Refresh our lease (its mtime is the heartbeat) with the current stage and progress.

    False, and nothing written, when the lease now belongs to another worker: this one was frozen for
    longer than the lease and must not overwrite the new owner's (lease fencing).
    """
    if not owns_lease(folder, data["worker"]):
        return False
    data = {**data, "updated": time.time()}
    tmp = folder / f".{LEASE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, folder / LEASE_FILE)
    return True


def drop_lease(folder: Path) -> None:
    """Release the job: the next worker to take it off the queue gets a fresh lease."""
    with contextlib.suppress(FileNotFoundError):
        (folder / LEASE_FILE).unlink()


def write_heartbeat(spool: Path, name: str, data: dict[str, Any]) -> None:
    """Rewrite this worker's heartbeat file, spool/.workers/<name>.json, stamped with the time."""
    folder = spool / WORKERS_DIR
    folder.mkdir(exist_ok=True)
    write_json_atomic(folder / f"{name}.json", {**data, "updated": time.time()}, durable=False)  # status only


def remove_heartbeat(spool: Path, host: str, pid: int) -> None:
    """Forget the heartbeat of a worker process that has exited (named <host>-<device>-<pid>)."""
    for path in (spool / WORKERS_DIR).glob(f"{host}-*-{pid}.json"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def heartbeats(spool: Path) -> list[dict[str, Any]]:
    """Every worker's last heartbeat, with "name" (its file's stem) added; unreadable files are skipped."""
    out = []
    for path in sorted((spool / WORKERS_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        data["name"] = path.stem
        out.append(data)
    return out
