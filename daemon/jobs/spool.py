"""The spool: claimed jobs as folders (spool/<job-id>/), claims that survive a kill -9, and leases.

A claim moves the dropped files out of the inbox with rename(2) into spool/.claim-<id>/, writes
job.json, then renames the folder to spool/<id>/: a job folder either exists whole or not at all.
A kill mid-claim leaves a .claim-<id>/ folder that recover_claims() finishes or undoes at start-up,
so nothing a person dropped is lost.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon import names
from daemon.inbox.pairing import Claim
from daemon.jobs.job import InputFile, Job, load, save, write_json_atomic
from daemon.names import CLAIM_PLAN, CLAIM_PREFIX, DONE_PREFIX, JOB_FILE, LEASE_FILE, TAKEOVER_LOCK, WORKERS_DIR

log = logging.getLogger("lipsyncd.spool")



class UnsafeFile(Exception):
    """A file changed into something we must not touch (symlink, hard link) between scan and claim."""


def move(src: Path, dst: Path) -> None:
    """rename(2), or copy + fsync + unlink across filesystems. Never follows a symlink."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        if src.is_symlink() or not src.is_file():
            raise
        shutil.copyfile(src, dst, follow_symlinks=False)
        with open(dst, "rb") as handle:
            os.fsync(handle.fileno())
        os.unlink(src)


def check_plain_file(path: Path) -> os.stat_result:
    """lstat *path* and refuse anything but a regular file with one link."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFile(f"{path.name!r} is a symbolic link; lipsyncd never follows links. Copy the real file in.")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{path.name!r} is not a regular file (a folder, pipe or device). Copy a real file in.")
    if st.st_nlink > 1:
        raise UnsafeFile(f"{path.name!r} is a hard link to another file; lipsyncd only takes files of their own. "
                         "Copy the file (cp, not ln) and drop it again.")
    return st


def claim(spool: Path, inbox_dir: Path, user: str, source: str, decision: Claim) -> Job:
    """Move a pair out of the inbox into a new spool folder and return its Job (state queued)."""
    job_id = Job.new_id()
    staging = spool / f"{CLAIM_PREFIX}{job_id}"
    staging.mkdir(parents=True)
    moves: list[tuple[str, str]] = []
    audio_ext = names.parse(decision.audio).ext
    moves.append((decision.audio, f"audio.{audio_ext}"))
    if decision.video:
        moves.append((decision.video, f"video.{names.parse(decision.video).ext}"))
    if decision.manifest:
        moves.append((decision.manifest, "job.yaml"))
    write_json_atomic(staging / CLAIM_PLAN, {"inbox_dir": str(inbox_dir), "moves": moves})

    inputs: dict[str, InputFile] = {}
    try:
        for src_name, dst_name in moves:
            st = check_plain_file(inbox_dir / src_name)
            move(inbox_dir / src_name, staging / dst_name)
            inputs[src_name] = InputFile(name=src_name, file=dst_name, size=st.st_size)
    except BaseException:
        _undo_claim(staging)
        raise
    if decision.avatar is not None:
        st = decision.avatar.lstat()
        video = InputFile(name=decision.avatar.name, file=str(decision.avatar), size=st.st_size, consumed=False)
    else:
        assert decision.video is not None
        video = inputs[decision.video]
    job = Job(id=job_id, user=user, stem=decision.stem, audio=inputs[decision.audio], video=video,
              engine=decision.engine, options=dict(decision.options), source=source,
              extra=[inputs[decision.manifest]] if decision.manifest else [])
    save(staging, job)
    (staging / CLAIM_PLAN).unlink()
    os.rename(staging, spool / job_id)
    return job


def _undo_claim(staging: Path) -> None:
    """Put every file of an unfinished claim back where it came from, then remove the staging folder."""
    try:
        plan = json.loads((staging / CLAIM_PLAN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        plan = None
    if plan is not None:
        inbox_dir = Path(plan["inbox_dir"])
        for src_name, dst_name in plan["moves"]:
            held = staging / dst_name
            if not held.exists() and not held.is_symlink():
                continue
            target = inbox_dir / src_name
            if target.exists() or target.is_symlink():
                target = inbox_dir / f"{Path(src_name).stem} (recovered){Path(src_name).suffix}"
            inbox_dir.mkdir(parents=True, exist_ok=True)
            move(held, target)
            log.warning("returned %s to the inbox after an interrupted claim", target)
    # What an interrupted claim may leave of its own: the plan, job.json, or their half-written temp files.
    leftovers = [p for p in staging.iterdir()
                 if p.name not in (CLAIM_PLAN, JOB_FILE) and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    if leftovers:
        log.error("interrupted claim %s still holds %s; left in place for a person to look at",
                  staging, [p.name for p in leftovers])
        return
    shutil.rmtree(staging, ignore_errors=True)


def recover_claims(spool: Path) -> list[str]:
    """Finish or undo claims interrupted by a crash. Returns the ids of jobs that were completed."""
    finished = []
    for staging in sorted(spool.glob(f"{CLAIM_PREFIX}*")):
        job_id = staging.name[len(CLAIM_PREFIX):]
        if (staging / JOB_FILE).exists():
            (staging / CLAIM_PLAN).unlink(missing_ok=True)
            os.rename(staging, spool / job_id)
            finished.append(job_id)
            log.info("completed claim %s interrupted by a restart", job_id, extra={"job_id": job_id})
        else:
            _undo_claim(staging)
    return finished


@dataclass
class SpoolEntry:
    id: str
    folder: Path
    job: Job | None  # None when job.json is unreadable
    lease: dict[str, Any] | None
    lease_age: float | None  # seconds since the lease was last touched


def jobs(spool: Path) -> Iterator[SpoolEntry]:
    """Every job folder in the spool (not claims in progress, not the workers folder)."""
    try:
        children = sorted(os.scandir(spool), key=lambda e: e.name)
    except FileNotFoundError:
        return
    now = time.time()
    for child in children:
        if child.name.startswith(".") or not child.is_dir(follow_symlinks=False):
            continue
        folder = Path(child.path)
        try:
            job = load(folder)
        except (OSError, ValueError, TypeError, KeyError):
            job = None
        lease, age = read_lease(folder, now)
        yield SpoolEntry(child.name, folder, job, lease, age)


def read_lease(folder: Path, now: float | None = None) -> tuple[dict[str, Any] | None, float | None]:
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


def remove_job_folder(folder: Path) -> None:
    """Remove a finished job's folder: first renamed to a dot-name, so no worker or scan takes it for a job."""
    gone = folder.with_name(f"{DONE_PREFIX}{folder.name}")
    try:
        os.rename(folder, gone)
    except FileNotFoundError:
        return
    shutil.rmtree(gone, ignore_errors=True)


def drop_lease(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (folder / LEASE_FILE).unlink()


def worker_id(device: str) -> str:
    return f"{socket.gethostname()}-{device.replace(':', '')}-{os.getpid()}"


def write_heartbeat(spool: Path, name: str, data: dict[str, Any]) -> None:
    folder = spool / WORKERS_DIR
    folder.mkdir(exist_ok=True)
    write_json_atomic(folder / f"{name}.json", {**data, "updated": time.time()})


def remove_heartbeat(spool: Path, host: str, pid: int) -> None:
    """Forget the heartbeat of a worker process that has exited (named <host>-<device>-<pid>)."""
    for path in (spool / WORKERS_DIR).glob(f"{host}-*-{pid}.json"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def heartbeats(spool: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((spool / WORKERS_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        data["name"] = path.stem
        out.append(data)
    return out


def set_state(folder: Path, state: str, **changes: Any) -> Job:
    job = load(folder)
    job.state = state
    for key, value in changes.items():
        setattr(job, key, value)
    save(folder, job)
    return job
