"""The spool's folders: one spool/<job-id>/ per claimed job (inputs, job.json, lease), listed and removed here.

Claims that put folders here are daemon.inbox.claim's; leases and heartbeats are daemon.jobs.lease's.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.jobs.job import Job, load
from daemon.jobs.lease import read_lease
from daemon.names import DONE_PREFIX

RENDERED_DIR = "rendered"  # spool/<id>/rendered/: a finished render (output.mp4, poster.jpg, record.json) to publish
POSTER_FILE = "poster.jpg"  # in RENDERED_DIR: the poster, made after the video is published
RECORD_FILE = "record.json"  # in RENDERED_DIR, written last: the render is complete
WAITING_FILE = "waiting.json"  # spool/<id>/waiting.json: why a rendered job cannot be published now, and since when


@dataclass
class SpoolEntry:
    id: str
    folder: Path
    job: Job | None  # None when job.json is unreadable
    lease: dict[str, Any] | None
    lease_age: float | None  # seconds since the lease was last touched
    waiting: dict[str, Any] | None = None  # WAITING_FILE: the server fault that keeps it from being published


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
        yield SpoolEntry(child.name, folder, job, lease, age, read_waiting(folder))


def read_waiting(folder: Path) -> dict[str, Any] | None:
    """Why the rendered job in *folder* waits to be published ({"reason", "since"}), or None."""
    try:
        data = json.loads((folder / WAITING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_job_folder(folder: Path) -> None:
    """Remove a finished job's folder: first renamed to a dot-name, so no worker or scan takes it for a job."""
    gone = retire_job_folder(folder)
    if gone is not None:
        shutil.rmtree(gone, ignore_errors=True)


def retire_job_folder(folder: Path) -> Path | None:
    """Rename a finished job's folder to a dot-name: from then on no worker or scan takes it for a job, and it
    can be removed at leisure (Sweeper). None when it is gone already."""
    gone = folder.with_name(f"{DONE_PREFIX}{folder.name}")
    try:
        os.rename(folder, gone)
    except FileNotFoundError:
        return None
    return gone


class Sweeper:
    """Removes retired job folders (retire_job_folder) in a thread of their own, so a worker takes its next
    job without waiting for a folder of inputs and work files to be unlinked (20 ms a job on an ext4 mounted
    with discard). It first removes those a stopped worker left behind; close() finishes the ones handed in."""

    def __init__(self, spool: Path) -> None:
        self._todo: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(spool,), name="sweeper", daemon=True)
        self._thread.start()

    def put(self, folder: Path) -> None:
        self._todo.put(folder)

    def close(self, timeout: float = 30.0) -> None:
        self._todo.put(None)
        self._thread.join(timeout)

    def _run(self, spool: Path) -> None:
        try:
            left = [Path(e.path) for e in os.scandir(spool) if e.name.startswith(DONE_PREFIX)]
        except OSError:
            left = []
        for folder in left:
            shutil.rmtree(folder, ignore_errors=True)
        while (folder := self._todo.get()) is not None:
            shutil.rmtree(folder, ignore_errors=True)
