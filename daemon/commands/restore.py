"""`lipsyncd restore DATE/USER/STEM` (or the output's .json path): bring an archived video back into outputs/.

The output's .json says where its verified copy went ("archived": url, sha256, bytes). The copy is fetched from
that target (with janitor.archive's credentials) to a temp name beside the record, checked against the recorded
size and SHA-256, and only then linked into place as <stem>.mp4, never over an existing file. Its mtime is now,
so the janitor leaves it for after_days before removing the local copy again (it is not uploaded twice).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from daemon.access import Access
from daemon.config import Config
from daemon.janitor import archive
from daemon.names import DATE_NAME, Exit

TEMP_SUFFIX = ".restore.part"


class RestoreError(Exception):
    """Why a restore cannot be done, in words that say what to do."""


def locate(config: Config, target: str) -> tuple[str, str, str]:
    """(date, user, stem) from DATE/USER/STEM[.mp4|.json] or from the path of the output's .json."""
    outputs = os.path.realpath(config.paths.outputs)
    given = target
    if target.endswith(".json") and (os.path.isabs(target) or os.path.exists(target)):
        real = os.path.realpath(target)
        if not real.startswith(outputs + os.sep):
            raise RestoreError(f"{target} is not inside paths.outputs ({outputs})")
        given = os.path.relpath(real, outputs)
    parts = given.strip("/").split("/")
    if len(parts) != 3:
        raise RestoreError(f"{target!r}: write DATE/USER/STEM (e.g. 2026-11-20/alice/promo) or the output's .json path")
    date, user, stem = parts
    for suffix in (".mp4", ".json"):
        stem = stem.removesuffix(suffix)
    if not DATE_NAME.match(date):
        raise RestoreError(f"{date!r} is not a date folder (YYYY-MM-DD)")
    for part in (user, stem):
        if not part or part.startswith(".") or part in ("..",) or "\0" in part:
            raise RestoreError(f"{part!r} is not a user or output name")
    return date, user, stem


class _Hashing:
    """A file that hashes what is written to it (the restore's copy is checked as it arrives)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.sha, self.size = handle, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.handle.write(data)


def restore(config: Config, date: str, user: str, stem: str) -> dict[str, Any]:
    folder = Path(config.paths.outputs) / date / user
    record_path = folder / f"{stem}.json"
    video = folder / f"{stem}.mp4"
    record = None
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            record = archive.read_record(fd, record_path.name)
        finally:
            os.close(fd)
    if not record:
        raise RestoreError(f"{record_path} does not exist or is not an output record")
    done = record.get(archive.ARCHIVED)
    if not isinstance(done, dict) or not isinstance(done.get("url"), str):
        raise RestoreError(f"{record_path} records no archived copy: this output was never archived")
    if video.exists() or video.is_symlink():
        return {"video": str(video), "already": True, "url": done["url"]}
    key = f"{date}/{user}/{stem}.mp4"
    url = done["url"]
    if not url.endswith("/" + key):
        raise RestoreError(f"{record_path}: the archived URL {url} does not end in {key}")
    target = archive.make_target(config.janitor.archive, url[: -len(key) - 1])
    temp = folder / f".{stem}.mp4{TEMP_SUFFIX}"
    try:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as handle:
            sink = _Hashing(handle)
            target.get(key, sink)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        if sink.size != done.get("bytes") or sink.sha.hexdigest() != done.get("sha256"):
            raise RestoreError(f"the archived copy at {url} differs from what was archived ({sink.size} bytes, "
                               f"sha256 {sink.sha.hexdigest()}; recorded {done.get('bytes')}, {done.get('sha256')}); "
                               f"nothing was restored")
        Access.of(config).secure_file(Path(config.paths.outputs), temp, user)  # private mode: the owner's ACL
        os.link(temp, video)  # never over a file that appeared meanwhile
    finally:
        target.close()
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return {"video": str(video), "already": False, "url": url, "bytes": done["bytes"], "sha256": done["sha256"]}


def main(config: Config, target: str) -> int:
    try:
        date, user, stem = locate(config, target)
        done = restore(config, date, user, stem)
    except RestoreError as exc:
        print(f"lipsyncd restore: {exc}", file=sys.stderr)
        return Exit.USAGE if "write DATE/USER/STEM" in str(exc) else Exit.FAILED
    except archive.ArchiveError as exc:
        print(f"lipsyncd restore: could not fetch the archived copy: {exc}", file=sys.stderr)
        return Exit.FAILED
    except OSError as exc:
        print(f"lipsyncd restore: cannot write into {config.paths.outputs}: {exc.strerror or exc}", file=sys.stderr)
        return Exit.FAILED
    if done["already"]:
        print(f"{done['video']} is already there (archived at {done['url']})")
    else:
        days = config.janitor.archive.after_days
        print(f"restored {done['video']} from {done['url']} ({done['bytes']} bytes, sha256 checked); the janitor "
              f"removes the local copy again once it is {days:g} days old")
    return Exit.OK
