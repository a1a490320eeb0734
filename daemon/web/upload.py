"""An upload from the page lands in inbox/<user>/ the way a careful copy does: temp name, fsync, then rename.

Werkzeug's multipart parser hands each file part to UploadRequest._get_file_stream, which opens a dot-named
temp file (the watcher ignores those) straight in the person's inbox folder, so the parts stream to disk
in blocks and are never held whole in memory or copied twice; Flask's MAX_CONTENT_LENGTH (web.upload_max_mb)
stops a bigger body with 413. The person chooses only the job's name, never a path: the files become
<name>.<video ext> then <name>.<audio ext> (or <name>@<avatar>.<audio ext> with a saved avatar), the video
renamed first so the pair completes with the audio's rename, as `lipsyncd submit` does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import IO, Any

from flask import Request

from daemon import names
from daemon.web import files

TEMP_PREFIX = ".web-upload-"


class UploadError(Exception):
    """An upload the person must change (wrong kind of file, a bad or taken name), worded for them."""


class UploadRequest(Request):
    """A Flask request whose uploaded files are written into *upload_fd* (set by the view) under temp names."""

    upload_fd: int | None = None
    upload_temps: dict[int, str]  # the fd of each part's temp file -> its name in the inbox folder

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        if self.upload_fd is None:
            raise UploadError("files can only be sent to /api/upload")
        if not hasattr(self, "upload_temps"):
            self.upload_temps = {}
        name = f"{TEMP_PREFIX}{secrets.token_hex(8)}.part"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                     dir_fd=self.upload_fd)
        self.upload_temps[fd] = name
        return os.fdopen(fd, "w+b")


def inbox_folder(inbox: str, user: str) -> int:
    """The fd of inbox/<user>/ (made when missing), opened without following symlinks."""
    root = files.open_dir(None, inbox)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(user, 0o2770, dir_fd=root)
        return files.open_dir(root, user)
    finally:
        os.close(root)


def place(request: UploadRequest, avatars: list[str]) -> list[str]:
    """Check the parsed upload and rename its parts into place; the inbox names made, video first."""
    form, parts = request.form, request.files
    stem = (form.get("name") or "").strip()
    audio, video = parts.get("audio"), parts.get("video")
    avatar = (form.get("avatar") or "").strip()
    if audio is None or not audio.filename:
        raise UploadError("choose an audio file")
    if video is None or not video.filename:
        video = None
        if not avatar:
            raise UploadError("choose a video file or a saved avatar")
        if avatar not in avatars:
            raise UploadError(f"there is no saved avatar named {avatar!r}")
    if not stem:
        stem = names.parse(video.filename if video else audio.filename).stem
    why = names.refusal(stem) or ("the name contains @ (it names a saved avatar)" if "@" in stem else None)
    if why:
        raise UploadError(f"the name {stem!r} cannot be used: {why}")
    audio_kind = names.parse(audio.filename)
    if audio_kind.kind != "audio":
        raise UploadError(f"{audio.filename} does not look like audio (expected .{', .'.join(names.AUDIO_EXTENSIONS)})")
    targets: list[tuple[Any, str]] = []
    if video is not None:
        video_kind = names.parse(video.filename)
        if video_kind.kind != "video":
            raise UploadError(f"{video.filename} does not look like video "
                              f"(expected .{', .'.join(names.VIDEO_EXTENSIONS)})")
        targets.append((video, f"{stem}.{video_kind.ext}"))
        targets.append((audio, f"{stem}.{audio_kind.ext}"))
    else:
        targets.append((audio, f"{stem}{names.AVATAR_SEPARATOR}{avatar}.{audio_kind.ext}"))
    fd = request.upload_fd
    for _, target in targets:
        if names.refusal(target) or _exists(fd, target):
            raise UploadError(f"{target} is already waiting in your inbox; wait for it to finish or choose "
                              "another name")
    made = []
    for part, target in targets:
        part.stream.flush()
        os.fsync(part.stream.fileno())
        temp = request.upload_temps.pop(part.stream.fileno())
        os.rename(temp, target, src_dir_fd=fd, dst_dir_fd=fd)
        made.append(target)
    return made


def _exists(fd: int | None, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def clean_up(request: UploadRequest) -> None:
    """Remove the temp files of an upload that was refused or cut short."""
    fd = request.upload_fd
    for name in getattr(request, "upload_temps", {}).values():
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=fd)
