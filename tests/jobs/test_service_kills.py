"""Killing the whole service (daemon and workers) while a job renders is not the job's fault: after quick
restarts the job ends done, its attempts within queue.max_attempts, and nothing blames the input."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests import media
from tests.daemon_harness import Daemon, drop_pair, failures, outputs, slow_mux_argv, wait_for, write_config

pytestmark = pytest.mark.timeout(300)

KILLS = 4  # more than max_attempts below: each one counted would fail the job


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def rendering(root: Path) -> dict:
    """The lease of the job while a live worker renders it (its attempt counted)."""
    for lease in (root / "spool").glob("*/lease"):
        with contextlib.suppress(OSError, ValueError):
            job = json.loads((lease.parent / "job.json").read_text())
            data = json.loads(lease.read_text())
            if job.get("state") == "running" and _alive(int(data["pid"])):
                return data
    return {}


def test_killing_the_whole_service_does_not_count_against_the_job(tmp_path: Path) -> None:
    config = write_config(tmp_path, pipeline={"command": {"argv": slow_mux_argv(3)}},
                          queue={"lease_seconds": 2, "max_attempts": 2})
    audio = media.tone(tmp_path / "a.wav", seconds=1.0)
    video = media.color_clip(tmp_path / "v.mp4", seconds=1.0)
    logs = []
    daemon = Daemon(config).start()
    drop_pair(tmp_path / "inbox" / "ann", "talk", audio, video)
    for n in range(KILLS):
        wait_for(lambda: rendering(tmp_path), 60, f"the job to render (round {n + 1})")
        assert daemon.proc is not None
        if n % 2:  # a restart that does not wait: SIGTERM, then SIGKILL of every process at once
            os.killpg(daemon.proc.pid, signal.SIGTERM)
            time.sleep(0.2)
        daemon.kill_all()
        logs.append(daemon.log())
        daemon = Daemon(config).start()
    try:
        wait_for(lambda: outputs(tmp_path) or failures(tmp_path), 90, "the job to end after the restarts")
    finally:
        daemon.stop()
        logs.append(daemon.log())
    log = "\n".join(logs)
    assert not failures(tmp_path), (failures(tmp_path)[0] / "error.txt").read_text()
    [out] = outputs(tmp_path)
    assert "may make the engine crash" not in log
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["attempts"] <= 2
    assert "does not count" in log
