"""The inbox folder deleted (or moved away) and made again while the daemon runs: its new folder is watched.

An inotify watch belongs to the old folder's inode; before 13.9 every later drop waited for the rescan.
Here the rescan is 5 minutes away, so a drop that is claimed within seconds was seen by the watcher.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import media
from tests.daemon_harness import Daemon, drop_pair, outputs, wait_for, write_config

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(("how", "poll"), [("rm", False), ("mv", False), ("rm", True)])
def test_recreated_inbox_is_watched_again(tmp_path: Path, how: str, poll: bool) -> None:
    root = tmp_path / "root"
    root.mkdir()
    audio = media.tone(tmp_path / "a.wav", seconds=1.0)
    video = media.color_clip(tmp_path / "v.mp4", seconds=1.0)
    config = write_config(root, ingest={"settle_seconds": 1, "rescan_seconds": 300, "poll": poll})
    inbox = root / "inbox"
    with Daemon(config) as daemon:
        if how == "rm":
            shutil.rmtree(inbox)
        else:
            inbox.rename(root / "inbox.old")
        inbox.mkdir()
        drop_pair(inbox / "after", "late", audio, video)
        wait_for(lambda: [p for p in outputs(root) if p.parent.name == "after"], 30,
                 "the drop in the new inbox to be claimed and rendered (the rescan is 300 s away)")
        if not poll:  # polling looks at the path, so a new folder needs no new watch (and may go unremarked)
            lines = [line for line in daemon.log().splitlines() if "re-created" in line]
            assert len(lines) == 1 and "watching it again" in lines[0]
