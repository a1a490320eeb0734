"""`lipsyncd retry JOB-ID|FAILED-DIR`: put a failed job's inputs back into the inbox.

The inputs go back to inbox/<user>/ under their original names (temp name, then rename), so the
daemon takes them like a new drop; the failed folder is removed once they are safely back.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from daemon import names
from daemon.access import Access, Kind
from daemon.config import Config

SKIP = {names.ERROR_FILE, names.JOB_FILE}


def find(config: Config, target: str) -> Path | None:
    path = Path(target)
    failed = config.paths.failed.resolve()
    if path.is_dir():
        resolved = path.resolve()
        return resolved if failed in resolved.parents else None
    for record in failed.glob("*/*/*/job.json"):
        try:
            if json.loads(record.read_text(encoding="utf-8")).get("id") == target:
                return record.parent
        except (OSError, ValueError):
            continue
    return None


class RetryError(Exception):
    """Why a failed job cannot go back into the inbox, worded for the person retrying it."""


def requeue(config: Config, folder: Path) -> list[Path]:
    """Put the inputs of the failed job in *folder* back into its user's inbox; the inbox files made.

    Shared by `lipsyncd retry` and the web page's retry button."""
    try:
        record = json.loads((folder / names.JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    user = str(record.get("user") or folder.parent.name)
    if names.refusal(user):  # a hand-edited job.json: never a path out of the inbox
        user = names.printable(user)
    inbox = config.paths.inbox
    dest = inbox if user == config.ingest.default_user and not (inbox / user).is_dir() else inbox / user
    if dest == inbox:
        dest.mkdir(parents=True, exist_ok=True)
    else:
        Access.of(config).make_folder(inbox, dest, user, Kind.DROP_USER)  # private mode: the person's own
    files = [p for p in sorted(folder.iterdir()) if p.name not in SKIP and p.is_file() and not p.is_symlink()]
    if not files:
        raise RetryError(f"{folder} holds no input files to retry")
    for path in files:
        if names.refusal(path.name):
            raise RetryError(f"{path.name!r} cannot go back into the inbox: {names.refusal(path.name)}; "
                             "rename it first")
        if (dest / path.name).exists():
            raise RetryError(f"{dest / path.name} already exists in the inbox")
    made = []
    for path in files:
        temp = dest / f".{path.name}.lipsyncd-retry"
        shutil.copyfile(path, temp)
        os.rename(temp, dest / path.name)
        made.append(dest / path.name)
    shutil.rmtree(folder)
    return made


def main(config: Config, target: str) -> int:
    folder = find(config, target)
    if folder is None:
        print(f"lipsyncd retry: {target!r} is neither a job id found under {config.paths.failed} nor a folder "
              "inside it", file=sys.stderr)
        return 2
    try:
        made = requeue(config, folder)
    except RetryError as exc:
        print(f"lipsyncd retry: {exc}", file=sys.stderr)
        return 1
    for path in made:
        print(path)
    return 0
