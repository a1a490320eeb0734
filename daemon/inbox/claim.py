"""The claim, the inbox's last step: a settled pair leaves the inbox for spool/<job-id>/, whole or not at all.

A claim moves the dropped files out of the inbox with rename(2) into spool/.claim-<id>/, writes
job.json, then renames the folder to spool/<id>/. A kill mid-claim leaves a .claim-<id>/ folder that
recover_claims() finishes or undoes at start-up, so nothing a person dropped is lost. What may be
claimed at all (a regular file of its own, not a link) is decided once, by plain_file_problem().
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

from daemon import names
from daemon.files import move
from daemon.inbox.pairing import Claim
from daemon.jobs.job import InputFile, Job, save, write_json_atomic
from daemon.names import CLAIM_PLAN, CLAIM_PREFIX, JOB_FILE

log = logging.getLogger("lipsyncd.spool")  # the logger name journald shows (LOGGER=) since claims were spool.py's


class UnsafeFile(Exception):
    """A file changed into something we must not touch (symlink, hard link) between scan and claim."""


def plain_file_problem(name: str, st: os.stat_result) -> str | None:
    """Why a dropped file (lstat *st*) must be refused without being opened, or None for a plain file of its own."""
    if stat.S_ISLNK(st.st_mode):
        return (f"{names.quoted(name)} is a symbolic link; lipsyncd never follows links (they could point anywhere "
                "on the server). Copy the real file into the inbox instead.")
    if not stat.S_ISREG(st.st_mode):
        return (f"{names.quoted(name)} is not a regular file (a folder, pipe, socket or device); copy a real file "
                "into the inbox.")
    if st.st_nlink > 1:
        return (f"{names.quoted(name)} is a hard link to a file elsewhere; lipsyncd only takes files of their own. "
                "Copy the file (cp, not ln) and drop it again.")
    return None


def check_plain_file(path: Path) -> os.stat_result:
    """lstat *path*; UnsafeFile unless it is a plain file of its own (it may have changed since the scan)."""
    st = path.lstat()
    problem = plain_file_problem(path.name, st)
    if problem:
        raise UnsafeFile(problem)
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
            log.warning("returned %s to the inbox after an interrupted claim", names.escape(str(target)))
    # What an interrupted claim may leave of its own: the plan, job.json, or their half-written temp files.
    leftovers = [p for p in staging.iterdir()
                 if p.name not in (CLAIM_PLAN, JOB_FILE) and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    if leftovers:
        log.error("interrupted claim %s still holds %s; left in place for a person to look at",
                  staging, ", ".join(names.quoted(p.name) for p in leftovers))
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
