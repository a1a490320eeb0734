"""`lipsyncd submit AUDIO VIDEO`: copy a pair into the inbox so the daemon never sees half a file.

Each file is copied under a temp name the watcher ignores (.name.lipsyncd-submit), fsynced, then
renamed into place; the video goes first so the pair completes with the audio's rename.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from daemon import names
from daemon.access import Access, Kind
from daemon.config import Config


def main(config: Config, audio: Path, video: Path, *, user: str | None = None, name: str | None = None) -> int:
    for path, kind in ((audio, "audio"), (video, "video")):
        if not path.is_file():
            print(f"lipsyncd submit: {path} is not a file", file=sys.stderr)
            return 2
        if names.parse(path.name).kind != kind:
            wanted = names.AUDIO_EXTENSIONS if kind == "audio" else names.VIDEO_EXTENSIONS
            print(f"lipsyncd submit: {path.name} does not look like {kind} (expected .{', .'.join(wanted)})",
                  file=sys.stderr)
            return 2
    stem = name or names.parse(video.name).stem
    user = user or config.ingest.default_user
    for label, value in (("--name", stem), ("--user", user)):
        why = names.refusal(value)
        if why:
            print(f"lipsyncd submit: {label} {value!r} cannot be used: {why}", file=sys.stderr)
            return 2
    inbox = config.paths.inbox
    folder = inbox if user == config.ingest.default_user and not (inbox / user).is_dir() else inbox / user
    if folder == inbox:
        folder.mkdir(parents=True, exist_ok=True)
    else:
        try:
            Access.of(config).make_folder(inbox, folder, user, Kind.DROP_USER)  # private mode: the person's own
        except OSError as exc:
            print(f"lipsyncd submit: cannot make the inbox folder {folder} ({exc}); ask an administrator to run "
                  f"`lipsyncd users add {user}`", file=sys.stderr)
            return 1
    targets = []
    for src in (video, audio):
        target = folder / f"{stem}.{names.parse(src.name).ext}"
        if target.exists():
            print(f"lipsyncd submit: {target} is already in the inbox; wait for it to be processed or use --name",
                  file=sys.stderr)
            return 1
        targets.append((src, target))
    for src, target in targets:
        temp = folder / f".{target.name}.lipsyncd-submit"
        shutil.copyfile(src, temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.rename(temp, target)
        print(target)
    return 0
