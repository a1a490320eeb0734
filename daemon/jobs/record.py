"""The record a finished job leaves beside its video: outputs/<date>/<user>/<stem>.json (+ the <stem>.jpg poster).

It says what was rendered from what (name, size and sha256 of each input), by which engine on which
device and worker, how well the mouth follows the audio (the engine-independent sync score), and
where the time went. Written last when publishing: a record means the output is complete.

The video and its record are published as soon as the video is made; the record then lists what is still
to come under "pending" (the sync score, the poster). Once they are there it is replaced in one rename by
the completed record (completed()): a record is never partial, only sometimes not yet scored.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.jobs.job import Job

if TYPE_CHECKING:
    from pipeline.engines import RenderResult

log = logging.getLogger("lipsyncd.worker")  # the logger name journald shows (LOGGER=) for these warnings

CHUNK_BYTES = 1 << 20  # read size when hashing inputs
POSTER_TIMEOUT_SECONDS = 60
PENDING = ("sync_score", "poster")  # what a record published with its video still waits for


def fingerprint(name: str, path: Path) -> dict[str, Any]:
    """One input as the record lists it: the name the person gave it, its size and its sha256."""
    return {"name": name, "size": _size_of(path), "sha256": sha256(path)}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sync_score(video: Path) -> dict[str, Any] | None:
    """The engine-independent sync score of an output; {"error": why} when it cannot be computed (no face,
    no sound): a missing score never fails a finished render."""
    from pipeline.engines import EngineError
    from pipeline.syncscore import sync_score as score

    try:
        return score(video).to_dict()
    except EngineError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001
        log.warning("no sync score for %s: %s", video.name, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


def poster(video: Path, poster: Path, duration: float) -> bool:
    """A JPEG still from a third of the way in (one ffmpeg run: seek, decode one frame)."""
    for at in (duration / 3, 0.0) if duration > 0 else (0.0,):
        try:
            done = subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", f"{at:.3f}", "-i", f"file:{video}",
                                   "-frames:v", "1", "-q:v", "3", f"file:{poster}"], capture_output=True,
                                  timeout=POSTER_TIMEOUT_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("no poster for %s: %s", video.name, exc)
            return False
        if done.returncode == 0 and poster.exists() and poster.stat().st_size > 0:
            return True
    log.warning("no poster for %s: %s", video.name, done.stderr.decode("utf-8", "replace").strip()[-200:])
    return False


def build(job: Job, *, inputs: dict[str, dict[str, Any]], engine: str, device: str, worker: str,
          result: RenderResult, started: float, timings: dict[str, float], output: Path) -> dict[str, Any]:
    """The record of one finished render (*inputs*: fingerprint() of the audio and the video), as published
    with the video: its sync score and poster pending."""
    return {
        "job_id": job.id, "user": job.user, "name": job.stem, "engine": engine, "device": device,
        "worker": worker, "attempts": job.attempts, "inputs": inputs,
        "frames": result.frames, "fps": result.fps, "details": result.details,
        "sync_score": None, "pending": list(PENDING), "created": job.created, "started": started,
        "finished": time.time(), "timings": {k: round(v, 4) for k, v in timings.items()},
        "output_bytes": output.stat().st_size,
    }


def completed(published: dict[str, Any], score: dict[str, Any] | None, timings: dict[str, float]) -> dict[str, Any]:
    """*published* with its sync score and the time the score and the poster took; nothing pending."""
    done = {key: value for key, value in published.items() if key != "pending"}
    done["sync_score"] = score
    done["timings"] = {**published.get("timings", {}), **{k: round(v, 4) for k, v in timings.items()}}
    return done


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
