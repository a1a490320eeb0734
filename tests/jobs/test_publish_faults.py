"""Real server faults at publish time (a read-only bind mount, an immutable folder, a missing outputs/):
the rendered job waits, with one log line and a `lipsyncd status` entry, is not rendered again, and is
published once the fault is cleared; nothing is failed and nothing is blamed on the input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from daemon import config as configmod
from daemon.commands import status
from tests import media
from tests.daemon_harness import MUX_ARGV, Daemon, drop_pair, failures, finished, outputs, wait_for, write_config

pytestmark = pytest.mark.timeout(240)

WAIT_LINE = "is rendered but cannot be published"


def _run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), capture_output=True)


def _read_only(root: Path) -> Callable[[], None]:
    """outputs/ remounted read-only (a bind mount onto itself); returns what clears the fault."""
    out = root / "outputs"
    done = _run("mount", "--bind", str(out), str(out))
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({done.stderr.decode().strip()}); needs root")
    if _run("mount", "-o", "remount,ro,bind", str(out)).returncode != 0:
        _run("umount", str(out))
        pytest.skip("cannot remount a bind mount read-only here")
    return lambda: _run("umount", str(out)).check_returncode()


def _immutable(root: Path) -> Callable[[], None]:
    """The user's folder of today under outputs/ made immutable (chattr +i)."""
    folder = root / "outputs" / time.strftime("%Y-%m-%d") / "ann"
    folder.mkdir(parents=True)
    done = _run("chattr", "+i", str(folder))
    if done.returncode != 0:
        pytest.skip(f"chattr +i does not work here ({done.stderr.decode().strip()})")
    return lambda: _run("chattr", "-i", str(folder)).check_returncode()


def _missing(root: Path) -> Callable[[], None]:
    """outputs/ gone (an unmounted share): it must not be created anew, the job waits until it is back."""
    out, away = root / "outputs", root / "outputs.away"
    out.rename(away)
    return lambda: away.rename(out)


@pytest.mark.parametrize("fault", [_read_only, _immutable, _missing], ids=["read-only", "immutable", "missing"])
def test_publish_fault_waits_without_rendering_again(tmp_path: Path, fault: Callable[[Path], Callable[[], None]]) \
        -> None:
    root = tmp_path / "srv"
    root.mkdir()
    renders = tmp_path / "renders"  # one line per engine run
    argv = ["sh", "-c", f'echo render >> {renders} && exec "$0" "$@"', *MUX_ARGV]
    config = write_config(root, queue={"lease_seconds": 2}, pipeline={"command": {"argv": argv}})
    audio = media.tone(tmp_path / "a.wav", seconds=1.0)
    video = media.color_clip(tmp_path / "v.mp4", seconds=1.0)
    clear: Callable[[], None] = lambda: None  # noqa: E731
    try:
        with Daemon(config) as daemon:
            clear = fault(root)  # while the service runs (it refuses to start with outputs/ unwritable)
            drop_pair(root / "inbox" / "ann", "talk", audio, video)
            wait_for(lambda: WAIT_LINE in daemon.log(), 60, "the job to wait for the fault")
            time.sleep(10)  # a few retries (every 2 leases)
            assert renders.read_text().count("render") == 1, "the job was rendered again while it waited"
            assert not failures(root)
            assert daemon.proc is not None and daemon.proc.poll() is None

            seen = wait_for(lambda: _one_waiting(config), 10, "the waiting job in the status")
            [entry] = seen["queued"]
            assert entry["waiting"]["reason"], entry
            assert "cannot be published" in status.render_text(seen)
            clear()
            clear = lambda: None  # noqa: E731
            [out] = wait_for(lambda: outputs(root), 60, "the job to be published once the fault is cleared")
            log = daemon.log()
    finally:
        clear()
        _run("chattr", "-R", "-i", str(root / "outputs"))
    assert out.name == "talk.mp4" and out.with_suffix(".jpg").exists()
    assert renders.read_text().count("render") == 1
    assert not failures(root)
    said = [line for line in log.splitlines() if WAIT_LINE in line and " DEBUG " not in line]
    assert len(said) == 1 and " WARNING " in said[0], "one log line for the fault, not one per retry"
    assert "Traceback" not in log and "exited with status" not in log
    assert "is fixed" in log
    assert not list((root / "spool").glob("2*")), "the job folder is gone once published"
    shutil.rmtree(root / "outputs.away", ignore_errors=True)


def _one_waiting(config: Path) -> dict | None:
    """One look at the status, taken while the job waits between tries (every 2 leases a retry takes it a moment)."""
    seen = status.collect(configmod.load(config))
    return seen if len(seen["queued"]) == 1 else None


def test_a_restarted_worker_does_not_create_a_missing_outputs_folder(tmp_path: Path) -> None:
    """outputs/ gone (a share unmounted) and the worker restarted meanwhile: it starts, the job keeps waiting,
    and outputs/ is not made anew on the disk below."""
    root = tmp_path / "srv"
    root.mkdir()
    config = write_config(root, queue={"lease_seconds": 2})
    audio = media.tone(tmp_path / "a.wav", seconds=1.0)
    video = media.color_clip(tmp_path / "v.mp4", seconds=1.0)
    with Daemon(config) as daemon:
        clear = _missing(root)
        drop_pair(root / "inbox" / "ann", "talk", audio, video)
        wait_for(lambda: WAIT_LINE in daemon.log(), 60, "the job to wait for outputs/")
        [beat] = (root / "spool" / ".workers").glob("*.json")
        os.kill(int(beat.stem.rsplit("-", 1)[1]), signal.SIGTERM)
        wait_for(lambda: daemon.log().count("ready on") >= 2, 60, "the worker to be restarted")
        time.sleep(6)
        assert not (root / "outputs").exists(), "a worker created outputs/ anew"
        assert not failures(root) and not outputs(root)
        clear()
        [out] = wait_for(lambda: outputs(root), 60, "the job to be published once outputs/ is back")
    assert out.name == "talk.mp4"


def test_a_publish_stopped_half_way_finishes_with_its_poster(tmp_path: Path) -> None:
    """A fault after the video is published (a folder squats the poster's name): the video and its record are
    out, the job waits (not failed) and gets its poster and sync score once the name is free."""
    root = tmp_path / "srv"
    root.mkdir()
    config = write_config(root, queue={"lease_seconds": 2})
    audio = media.tone(tmp_path / "a.wav", seconds=1.0)
    video = media.color_clip(tmp_path / "v.mp4", seconds=1.0)
    squat = root / "outputs" / time.strftime("%Y-%m-%d") / "ann" / "talk.jpg"
    squat.mkdir(parents=True)
    with Daemon(config) as daemon:
        drop_pair(root / "inbox" / "ann", "talk", audio, video)
        wait_for(lambda: "poster and sync score cannot be added" in daemon.log(), 60,
                 "the job to wait for the poster's name")
        [out] = outputs(root)  # published first: the video and a complete record are out while it waits
        assert json.loads(out.with_suffix(".json").read_text())["pending"] == ["sync_score", "poster"]
        seen = wait_for(lambda: _one_waiting(config), 10, "the waiting job in the status")
        said = status.render_text(seen)
        assert "published, its poster and sync score cannot be added" in said and "cannot be published" not in said
        squat.rmdir()
        assert wait_for(lambda: finished(root), 60, "the poster and the score once the name is free") == [out]
    assert out.name == "talk.mp4" and out.with_suffix(".jpg").is_file()
    assert json.loads(out.with_suffix(".json").read_text())["sync_score"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no temp left behind"
    assert not failures(root)


def test_a_failure_that_failed_cannot_take_waits_and_is_filed_later(tmp_path: Path) -> None:
    """failed/ read-only when the engine fails a job: the verdict waits in the spool (not rendered again, no
    loop of errors) and is filed with its error.txt once failed/ is writable."""
    root = tmp_path / "srv"
    root.mkdir()
    renders = tmp_path / "renders"
    argv = ["sh", "-c", f"echo render >> {renders}; echo 'no face here' >&2; exit 3", "{audio}", "{video}", "{output}"]
    config = write_config(root, queue={"lease_seconds": 2}, pipeline={"command": {"argv": argv}})
    audio = media.tone(tmp_path / "a.wav", seconds=1.0)
    video = media.color_clip(tmp_path / "v.mp4", seconds=1.0)
    failed = root / "failed"
    with Daemon(config) as daemon:
        assert _run("mount", "--bind", str(failed), str(failed)).returncode == 0
        assert _run("mount", "-o", "remount,ro,bind", str(failed)).returncode == 0
        try:
            drop_pair(root / "inbox" / "ann", "talk", audio, video)
            wait_for(lambda: "cannot be filed under failed/" in daemon.log(), 60, "the failure to wait for failed/")
            time.sleep(9)
            assert "failed, cannot be filed" in status.render_text(status.collect(configmod.load(config)))
        finally:
            _run("umount", str(failed))
        [folder] = wait_for(lambda: failures(root), 60, "the failure to be filed once failed/ is writable")
        log = daemon.log()
    assert renders.read_text().count("render") == 1, "the job was rendered again while its failure waited"
    assert sorted(p.name for p in folder.iterdir()) == ["error.txt", "job.json", "talk.mp4", "talk.wav"]
    said = [line for line in log.splitlines() if "cannot be filed under" in line and " DEBUG " not in line]
    assert len(said) == 1, said
    assert "Traceback" not in log and not outputs(root)


def test_a_service_started_while_outputs_is_read_only_runs_and_publishes_once_fixed(tmp_path: Path) -> None:
    """outputs/ read-only when lipsyncd starts (a share mounted read-only at boot): it starts, says so once,
    renders, waits to publish, and publishes when the share is writable again; it does not exit 2."""
    root = tmp_path / "srv"
    root.mkdir()
    config = write_config(root, queue={"lease_seconds": 2})
    audio = media.tone(tmp_path / "a.wav", seconds=1.0)
    video = media.color_clip(tmp_path / "v.mp4", seconds=1.0)
    (root / "outputs").mkdir(exist_ok=True)  # write_config makes the folders
    clear = _read_only(root)
    try:
        with Daemon(config) as daemon:
            assert "cannot be written" in daemon.log() or "not writable" in daemon.log()
            drop_pair(root / "inbox" / "ann", "talk", audio, video)
            wait_for(lambda: WAIT_LINE in daemon.log(), 60, "the job to wait for outputs/")
            assert daemon.proc is not None and daemon.proc.poll() is None
            clear()
            clear = lambda: None  # noqa: E731
            [out] = wait_for(lambda: outputs(root), 60, "the job to be published once outputs/ is writable")
    finally:
        clear()
    assert out.name == "talk.mp4" and not failures(root)


def test_publishing_again_after_an_attempt_that_finished_finds_its_video_by_the_record(tmp_path: Path) -> None:
    """A worker killed after filing.publish had done everything (the video renamed out of the job folder, its
    temp link removed, the record written) but before job.json said so: the next attempt's publish finds the
    video by the record's job_id. It used to wait for ever on a 'missing' video, blamed on the server."""
    from daemon.jobs import filing
    from daemon.jobs.job import InputFile, Job

    outputs_root = tmp_path / "outputs"
    outputs_root.mkdir()
    kept = tmp_path / "rendered"
    kept.mkdir()
    (kept / "output.mp4").write_bytes(b"video")
    job = Job(id="20261201-000000-abcdef", user="ann", stem="talk", audio=InputFile("talk.wav", "talk.wav"),
              video=InputFile("talk.mp4", "talk.mp4"))
    other = tmp_path / "other.mp4"
    other.write_bytes(b"someone else's")
    first = filing.publish(outputs_root, job, kept / "output.mp4", sidecars={".json": {"job_id": job.id}})
    # Another job of the same name got the next free name since; its record names its own job.
    second = filing.publish(outputs_root, replace(job, id="20261201-000001-fedcba"), other,
                            sidecars={".json": {"job_id": "20261201-000001-fedcba"}})
    assert not (kept / "output.mp4").exists() and (first.name, second.name) == ("talk.mp4", "talk-2.mp4")
    again = filing.publish(outputs_root, job, kept / "output.mp4", sidecars={".json": {"job_id": job.id}})
    assert again == first and first.read_bytes() == b"video"
    assert sorted(p.name for p in first.parent.iterdir()) == ["talk-2.json", "talk-2.mp4", "talk.json", "talk.mp4"]
