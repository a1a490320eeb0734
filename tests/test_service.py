"""Crashes, stops, reloads and fairness of the real daemon: kill -9 of a worker and of the daemon mid-claim,
SIGTERM with a running job, SIGHUP, one user's flood against another user's single drop, pair timeouts,
running out of inotify instances."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests import media
from tests.daemon_harness import (
    Daemon,
    drop_pair,
    failures,
    outputs,
    records,
    slow_mux_argv,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    return media.tone(folder / "a.wav", seconds=1.0), media.color_clip(folder / "v.mp4", seconds=1.0)


def running_lease(root: Path) -> dict:
    """The lease of a job that is running: leased, and its attempt recorded in job.json (a worker takes the
    lease first and records the attempt just after; killing it in between is not "mid-job")."""
    for lease in (root / "spool").glob("*/lease"):
        try:
            job = json.loads((lease.parent / "job.json").read_text())
            if job.get("state") == "running":
                return json.loads(lease.read_text())
        except (OSError, ValueError):
            continue
    return {}


def processes_in(root: Path) -> list[int]:
    """Processes whose working folder is under *root* (the command engine runs its tool in the job's work folder)."""
    found = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            if cwd.readlink().is_relative_to(root):
                found.append(int(cwd.parent.name))
        except OSError:
            continue
    return found


def no_partial_outputs(root: Path) -> bool:
    return not [p for p in (root / "outputs").rglob(".*") if p.is_file()]


def test_worker_killed_mid_job_is_requeued_and_finishes_once(tmp_path: Path, pair) -> None:
    config = write_config(tmp_path, pipeline={"command": {"argv": slow_mux_argv(2)}})
    with Daemon(config) as daemon:
        drop_pair(tmp_path / "inbox" / "alice", "crash", *pair)
        lease = wait_for(lambda: running_lease(tmp_path), 20, "the job to start")
        os.kill(lease["pid"], signal.SIGKILL)
        [out] = wait_for(lambda: outputs(tmp_path), 60, "the re-queued job to finish")
        time.sleep(1.5)  # a duplicate would have time to show up
        assert outputs(tmp_path) == [out]
        assert json.loads(out.with_suffix(".json").read_text())["attempts"] == 2
        assert no_partial_outputs(tmp_path)
        assert not failures(tmp_path)
        assert "re-queued job" in daemon.log() and "exited with status -9" in daemon.log()


def test_sigterm_lets_the_running_job_finish(tmp_path: Path, pair) -> None:
    config = write_config(tmp_path, pipeline={"command": {"argv": slow_mux_argv(2)}},
                          queue={"stop_timeout_seconds": 30})
    daemon = Daemon(config).start()
    drop_pair(tmp_path / "inbox" / "bob", "term", *pair)
    wait_for(lambda: running_lease(tmp_path), 20, "the job to start")
    assert daemon.stop(timeout=60) == 0
    assert [p.name for p in outputs(tmp_path)] == ["term.mp4"]
    assert not list((tmp_path / "spool").glob("2*"))


def test_sigterm_requeues_a_job_that_cannot_finish_in_time(tmp_path: Path, pair) -> None:
    config = write_config(tmp_path, pipeline={"command": {"argv": slow_mux_argv(30)}},
                          queue={"stop_timeout_seconds": 1})
    daemon = Daemon(config).start()
    drop_pair(tmp_path / "inbox" / "carol", "long", *pair)
    wait_for(lambda: running_lease(tmp_path), 20, "the job to start")
    started = time.monotonic()
    assert daemon.stop(timeout=60) == 0
    assert time.monotonic() - started < 15, "the stop waited for the whole job"
    [job_dir] = list((tmp_path / "spool").glob("2*"))
    job = json.loads((job_dir / "job.json").read_text())
    assert job["state"] == "queued" and job["attempts"] == 0 and not (job_dir / "lease").exists()
    assert not outputs(tmp_path) and no_partial_outputs(tmp_path)
    assert "the worker was stopped before the job finished; job" in daemon.log()
    wait_for(lambda: not processes_in(tmp_path), 5, "the engine's command to be gone with its worker")
    # Next start, with a fast command, finishes it exactly once.
    data = yaml.safe_load(config.read_text())
    data["pipeline"]["command"]["argv"] = slow_mux_argv(0)
    config.write_text(yaml.safe_dump(data))
    with Daemon(config):
        [out] = wait_for(lambda: outputs(tmp_path), 30, "the re-queued job after restart")
    assert out.name == "long.mp4"
    assert json.loads(out.with_suffix(".json").read_text())["job_id"] == job["id"]
    assert json.loads(out.with_suffix(".json").read_text())["attempts"] == 1, "a stop is not the job's fault"


def test_kill_9_of_the_daemon_mid_claim_loses_nothing(tmp_path: Path, pair) -> None:
    config = write_config(tmp_path, ingest={"settle_seconds": 0.3})
    daemon = Daemon(config).start()
    stems = [f"k{i:02d}" for i in range(30)]
    for stem in stems:
        drop_pair(tmp_path / "inbox" / "dave", stem, *pair)
    wait_for(lambda: list((tmp_path / "spool").glob("2*")) or list((tmp_path / "spool").glob(".claim-*")), 20,
             "the first claim")
    daemon.kill_all()
    with Daemon(config):
        wait_for(lambda: len(outputs(tmp_path)) >= len(stems), 120, "every job after the restart")
        time.sleep(1.5)
    names = sorted(p.stem for p in outputs(tmp_path))
    assert names == stems, "each drop exactly once, none lost, none twice"
    assert not failures(tmp_path)
    assert not list((tmp_path / "inbox" / "dave").iterdir())
    assert not list((tmp_path / "spool").glob("2*")) and not list((tmp_path / "spool").glob(".claim-*"))


def test_one_users_flood_does_not_starve_anothers_single_drop(tmp_path: Path, pair) -> None:
    config = write_config(tmp_path, pipeline={"command": {"argv": slow_mux_argv(0.4)}},
                          ingest={"settle_seconds": 0.3})
    with Daemon(config):
        for i in range(12):
            drop_pair(tmp_path / "inbox" / "flood", f"f{i:02d}", *pair)
        wait_for(lambda: len(outputs(tmp_path)) >= 2, 60, "the flood to be under way")
        drop_pair(tmp_path / "inbox" / "lone", "single", *pair)
        wait_for(lambda: any(p.name == "single.mp4" for p in outputs(tmp_path)), 60, "the lone drop")
        wait_for(lambda: len(outputs(tmp_path)) >= 13, 60, "everything")
    all_records = records(tmp_path)
    lone = next(r for r in all_records if r["name"] == "single")
    spent = sum(v for k, v in lone["timings"].items() if k != "queued" and not k.startswith("engine."))
    lone_start = lone["finished"] - spent
    ahead = [r for r in all_records if r["user"] == "flood" and lone["created"] < r["finished"] <= lone_start + 0.05]
    assert len(ahead) <= 1, f"the lone job waited for {len(ahead)} flood jobs after it was claimed"
    assert sum(r["user"] == "flood" for r in all_records) == 12


def test_partner_that_never_arrives_ends_in_failed(tmp_path: Path, pair) -> None:
    config = write_config(tmp_path, ingest={"pair_timeout_minutes": 0.05, "rescan_seconds": 1})
    with Daemon(config):
        folder = tmp_path / "inbox" / "erin"
        folder.mkdir()
        (folder / "alone.mp4").write_bytes(pair[1].read_bytes())
        [failed] = wait_for(lambda: failures(tmp_path), 30, "the timeout")
    text = (failed / "error.txt").read_text()
    assert "no audio file named 'alone' arrived within 0.05 minutes" in text
    assert (failed / "alone.mp4").read_bytes() == pair[1].read_bytes()


def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(tmp_path: Path, pair) -> None:
    config = write_config(tmp_path)
    with Daemon(config) as daemon:
        good = config.read_text()
        config.write_text(good + "\nbogus_section: 1\n")
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "configuration not reloaded" in daemon.log(), 20, "the rejected reload")
        assert "bogus_section" in daemon.log()
        config.write_text(good)
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in daemon.log(), 20, "the reload")
        drop_pair(tmp_path / "inbox" / "frank", "after-reload", *pair)
        wait_for(lambda: outputs(tmp_path), 30, "a job after the reload")


def test_inotify_instance_limit_falls_back_to_polling(tmp_path: Path, pair) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    held: list[int] = []
    try:
        while len(held) < 100_000:
            fd = libc.inotify_init1(os.O_CLOEXEC)
            if fd < 0:
                break
            held.append(fd)
        if ctypes.get_errno() != 24:  # EMFILE: the per-user instance limit
            pytest.skip("could not exhaust inotify instances here")
        config = write_config(tmp_path)
        with Daemon(config) as daemon:
            assert "inotify instance limit reached" in daemon.log()
            assert "max_user_instances" in daemon.log() and "(polling)" in daemon.log()
            drop_pair(tmp_path / "inbox" / "gina", "polled", *pair)
            wait_for(lambda: outputs(tmp_path), 30, "a job seen by polling")
    finally:
        for fd in held:
            os.close(fd)


@pytest.mark.parametrize("layout", ["outputs inside the inbox", "failed: /", "a symlinked outputs"])
def test_run_exits_2_on_a_layout_the_janitor_refuses_and_creates_nothing(tmp_path: Path, layout: str) -> None:
    # Before, `lipsyncd run` took these layouts and worked on them; only the janitor refused them.
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    if layout == "outputs inside the inbox":
        data["paths"]["outputs"] = str(tmp_path / "inbox" / "outputs")
        words = "paths.inbox: " + str(tmp_path / "inbox") + " overlaps paths.outputs"
    elif layout == "failed: /":
        data["paths"]["failed"] = "/"
        words = "paths.failed: / overlaps paths.outputs"
    else:
        (tmp_path / "outputs").rmdir()
        (tmp_path / "outputs").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        words = "paths.outputs: " + str(tmp_path / "outputs") + " is a symlink"
    config.write_text(yaml.safe_dump(data))
    daemon = Daemon(config).start(wait_ready=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=60) == 2, daemon.log()
    daemon.stop()
    log = daemon.log()
    assert f"lipsyncd: configuration error: {config}:" in log and words in log, log
    assert not (tmp_path / "inbox" / "outputs").exists() and not (tmp_path / "elsewhere").exists()
    assert not (tmp_path / "state" / "queue.db").exists() and not list((tmp_path / "state").iterdir())


def test_sighup_refuses_a_layout_the_janitor_refuses(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with Daemon(config) as daemon:
        data = yaml.safe_load(config.read_text())
        data["paths"]["outputs"] = str(tmp_path / "inbox" / "outputs")
        config.write_text(yaml.safe_dump(data))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "configuration not reloaded" in daemon.log(), 20, "the rejected reload")
        assert "overlaps paths.outputs" in daemon.log() and "configuration reloaded" not in daemon.log()
        assert not (tmp_path / "inbox" / "outputs").exists()
