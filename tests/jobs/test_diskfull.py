"""A full disk (a real size-limited tmpfs): jobs wait instead of failing, nothing is lost, work resumes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from daemon import config as configmod
from daemon.commands import status
from tests import media
from tests.daemon_harness import Daemon, drop_pair, failures, outputs, wait_for, write_config

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def small_fs(tmp_path: Path):
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, leave_bytes: int) -> None:
    """Fill the filesystem of *path* until about *leave_bytes* are free (real blocks, not a sparse file)."""
    free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
    with open(path, "wb") as handle:
        remaining = max(0, free - leave_bytes)
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            handle.write(chunk[: min(len(chunk), remaining)])
            remaining -= len(chunk)


def test_full_disk_makes_jobs_wait_then_resume(small_fs: Path, tmp_path: Path) -> None:
    audio = media.tone(tmp_path / "a.wav", seconds=1.0)
    video = media.color_clip(tmp_path / "v.mp4", seconds=1.0)
    config = write_config(small_fs, queue={"lease_seconds": 2})
    with Daemon(config) as daemon:
        filler = small_fs / "filler.bin"
        fill(filler, leave_bytes=2 * 1024 * 1024)
        drop_pair(small_fs / "inbox" / "ann", "full", audio, video)
        wait_for(lambda: "is full" in daemon.log(), 30, "the worker to notice the full disk")
        time.sleep(9)  # a few turns of waiting (every 2 leases)
        assert not outputs(small_fs) and not failures(small_fs)
        said = [line for line in daemon.log().splitlines() if "is full" in line and " DEBUG " not in line]
        assert len(said) == 1, f"one log line for the full disk, not one per retry: {said}"
        [entry] = status.collect(configmod.load(config))["queued"]
        assert "is full" in entry["waiting"]["reason"], entry
        [job] = list((small_fs / "spool").glob("2*"))
        assert sorted(p.name for p in job.iterdir() if p.name.startswith(("audio", "video"))) == \
            ["audio.wav", "video.mp4"], "the inputs are kept while the job waits"
        filler.unlink()
        [out] = wait_for(lambda: outputs(small_fs), 60, "the job to finish once there is room")
    assert out.name == "full.mp4"
    assert not failures(small_fs)
    assert "what kept it waiting" in daemon.log()
