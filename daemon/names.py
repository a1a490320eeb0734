"""Shared words: what an inbox file name means, the spool's layout names, and the exit statuses.

User and stem names may be any Unicode (Chinese names are normal); names with path separators, `..`,
control characters or a leading dot are refused, because they end up as folder names under outputs/.

A name that came from a user is shown one way everywhere (logs, journald fields, job.json, error.txt, status,
alerts, and the folder names under failed/ and outputs/): escape() writes each control or format character
and each byte that is not UTF-8 (a surrogateescape'd byte from the file system) as %XX, e.g. "caf%E9" for
the Latin-1 bytes b"caf\xe9" and "a%0Ab" for "a<newline>b". So no name can forge a log line or crash a
UTF-8 writer.
"""

from __future__ import annotations

import datetime
import fnmatch
import re
import unicodedata
from dataclasses import dataclass
from enum import IntEnum

AUDIO_EXTENSIONS = ("wav", "mp3", "m4a", "aac", "flac", "ogg", "opus")
VIDEO_EXTENSIONS = ("mp4", "mov", "mkv", "webm", "avi")
MANIFEST_SUFFIX = ".job.yaml"
AVATAR_SEPARATOR = "@"
# Names that copy tools use while a file is still being written; never treated as a drop.
TEMP_PATTERNS = (".*", "*.part", "*.partial", "*.tmp", "*.crdownload", "*.download", "~*", "*~", "*.swp")
MAX_NAME_BYTES = 255

# The spool's layout (spool, reaper, worker, the janitor's spool report and status all read it):
# spool/<job-id>/{job.json, lease, work/<worker>/}, claims in progress as .claim-<id>/, finished job
# folders renamed to .done-<id>/ before removal, and every worker's heartbeat in .workers/.
JOB_FILE = "job.json"
LEASE_FILE = "lease"
WORK_DIR = "work"
CLAIM_PREFIX = ".claim-"
CLAIM_PLAN = "claim.json"  # inside a .claim-<id>/: which inbox files it is moving, for undo
DONE_PREFIX = ".done-"
WORKERS_DIR = ".workers"
TAKEOVER_LOCK = ".lease.lock"  # flocked while a stale lease is taken over
ERROR_FILE = "error.txt"  # in failed/<date>/<user>/<stem>/, beside the inputs and job.json
DATE_NAME = re.compile(r"\d{4}-\d{2}-\d{2}\Z")  # outputs/<date>/ and failed/<date>/


def is_date(name: str) -> bool:
    """A date folder's name: YYYY-MM-DD and a real day (2026-13-45 and 2026-02-30 are not in the layout)."""
    if DATE_NAME.match(name) is None:
        return False
    try:
        datetime.date(int(name[:4]), int(name[5:7]), int(name[8:10]))
    except ValueError:
        return False
    return True


class Exit(IntEnum):
    """Exit statuses of every lipsyncd command."""

    OK = 0  # done
    FAILED = 1  # the work failed
    USAGE = 2  # bad usage or configuration (for a worker: its engine cannot run)


@dataclass(frozen=True)
class DropName:
    """A parsed inbox file name."""

    name: str
    stem: str
    kind: str  # "audio" | "video" | "manifest" | "other"
    ext: str  # lower-case, no dot ("" for manifests)

    @property
    def avatar(self) -> tuple[str, str] | None:
        """(title, avatar) for an audio named <title>@<avatar>.<ext>, else None."""
        if self.kind != "audio" or AVATAR_SEPARATOR not in self.stem:
            return None
        title, _, avatar = self.stem.rpartition(AVATAR_SEPARATOR)
        if not title or not avatar:
            return None
        return title, avatar


def is_temp_name(name: str) -> bool:
    """True for names a copy is still being written under (rsync's .name.XXXXXX, *.part, ...)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TEMP_PATTERNS)


def parse(name: str) -> DropName:
    lower = name.lower()
    if lower.endswith(MANIFEST_SUFFIX):
        return DropName(name, name[: -len(MANIFEST_SUFFIX)], "manifest", "")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return DropName(name, name, "other", "")
    ext = ext.lower()
    if ext in AUDIO_EXTENSIONS:
        kind = "audio"
    elif ext in VIDEO_EXTENSIONS:
        kind = "video"
    else:
        kind = "other"
    return DropName(name, stem, kind, ext)


def refusal(name: str) -> str | None:
    """Why *name* cannot be used as a user or job name, or None when it is fine."""
    if not name:
        return "the name is empty"
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return "the name contains a path separator or '..'"
    if name.startswith("."):
        return "the name starts with a dot (hidden and temporary files are ignored)"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        return "the name contains a control character (such as a newline or tab)"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"the name is longer than {MAX_NAME_BYTES} bytes"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    return None


def escape(name: str, also: str = "") -> str:
    """*name* as it is shown anywhere (see the module's docstring): control/format characters, lone surrogates
    and undecodable bytes as %XX, so the text is one printable line that encodes as UTF-8; *also*: more to escape."""
    out = []
    for ch in name:
        if "\udc80" <= ch <= "\udcff":  # undecodable byte kept by surrogateescape
            out.append(f"%{ord(ch) - 0xDC00:02X}")
        elif ch in also or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            out.append(f"%{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)


def quoted(name: str) -> str:
    """escape(*name*) in single quotes, for a name inside a sentence (error.txt, a log line)."""
    return f"'{escape(name)}'"


def printable(name: str) -> str:
    """A form of *name* that is safe to use as a folder name and to print: escape() plus path separators."""
    text = escape(name, also="/\\\0").lstrip(".") or "unnamed"
    return text[:120]


def media_kind(name: str) -> str:
    return parse(name).kind
