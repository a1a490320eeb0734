"""A job: what was dropped, by whom, how to render it, and where it stands. Stored as spool/<id>/job.json."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from daemon.files import write_atomic
from daemon.names import JOB_FILE


class JobState(str, Enum):
    """Where a job in the spool stands; job.json stores the value ("queued", "running")."""

    QUEUED = "queued"  # on the queue, or waiting to be put back on it
    RUNNING = "running"  # a worker took it and counted an attempt


@dataclass
class InputFile:
    name: str  # the name the person gave it (restored when the job fails)
    file: str  # the name inside the spool folder, or an absolute path for a shared avatar
    size: int = 0
    sha256: str = ""
    consumed: bool = True  # False for avatars: never moved, never deleted


@dataclass
class Job:
    id: str
    user: str
    stem: str
    audio: InputFile
    video: InputFile
    engine: str | None = None  # None: pipeline.engine
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the inbox folder it came from, relative to the inbox
    state: JobState = JobState.QUEUED
    created: float = field(default_factory=time.time)
    attempts: int = 0
    publish_dir: str | None = None  # outputs/YYYY-MM-DD/<user>, fixed on the first publish attempt
    published: str | None = None  # the final MP4 once it is in outputs/
    extra: list[InputFile] = field(default_factory=list)  # other files of the drop (the manifest)

    @staticmethod
    def new_id() -> str:
        return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        data = dict(data)
        data["audio"] = InputFile(**data["audio"])
        data["video"] = InputFile(**data["video"])
        data["extra"] = [InputFile(**item) for item in data.get("extra", [])]
        data["state"] = JobState(data.get("state", JobState.QUEUED))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def inputs(self) -> list[InputFile]:
        return [self.audio, self.video, *self.extra]


def write_json_atomic(path: Path, data: Any, *, durable: bool = True) -> None:
    """Replace *path* with *data* as JSON in one rename (daemon.files): never seen half written."""
    write_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n", durable=durable)


def load(folder: Path) -> Job:
    with open(folder / JOB_FILE, encoding="utf-8") as handle:
        return Job.from_dict(json.load(handle))


def save(folder: Path, job: Job) -> None:
    write_json_atomic(folder / JOB_FILE, job.to_dict())

