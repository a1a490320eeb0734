"""The real daemon logs jobs to the real systemd-journald, and journalctl finds them by JOB_ID.

Where no journald runs (a container, CI), the test starts /lib/systemd/systemd-journald itself, as root,
inside a private mount namespace: a tmpfs over /run (and /var/log/journal) holds its socket and journal
files, and the daemon and journalctl join that namespace with nsenter. So the journal this test creates
is seen by nothing else on the machine and disappears with it; the machine's /run is never touched.
On a machine where journald already runs, the test uses that one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import MUX_ARGV, drop_pair, failures, records, terminate, wait_for, write_config

REPO = Path(__file__).resolve().parent.parent
JOURNALD = Path("/lib/systemd/systemd-journald")
SOCKET = Path("/run/systemd/journal/socket")
# Audio under 2 s is refused by this engine command, so one job fails inside the worker with a reason.
PICKY_ARGV = ["sh", "-c",
              'd=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$1"); '
              'case "$d" in 0.*|1.*) echo "the audio is only $d s long, too short to lip-sync" >&2; exit 3;; esac; '
              'shift; exec "$@"', "sh", "{audio}", *MUX_ARGV]


def _journald_running() -> bool:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "systemd-journal":
                return True
        except OSError:
            continue
    return False


class Journal:
    """Where the test's journald listens: `prefix` runs a command beside it (nsenter into its namespace)."""

    def __init__(self, prefix: list[str]) -> None:
        self.prefix = prefix

    def run(self, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *argv], capture_output=True, text=True, timeout=60, **kwargs)

    def entries(self, *matches: str, priority: str | None = None) -> list[dict[str, str]]:
        argv = ["journalctl", "--no-pager", "-o", "json", "--output-fields=" + ",".join(
            ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "JOB_ID", "LIPSYNC_USER", "STAGE", "_PID", "_TRANSPORT"))]
        if priority:
            argv += ["-p", priority]
        result = self.run(*argv, *matches)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def journal() -> Iterator[Journal]:
    if SOCKET.is_socket() and _journald_running():
        yield Journal([])  # the machine's own journald
        return
    if os.geteuid() != 0:
        pytest.skip("no journald here, and starting one needs root")
    if not JOURNALD.exists() or not shutil.which("journalctl") or not shutil.which("nsenter"):
        pytest.skip("systemd-journald, journalctl or nsenter (util-linux) is not installed")
    mounts = "mount -t tmpfs -o mode=0755 tmpfs /run"
    if Path("/var/log/journal").is_dir():
        mounts += " && mount -t tmpfs -o mode=0755 tmpfs /var/log/journal"
    # unshare and sh exec into journald, so this pid is journald's and its namespace is the one to join.
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mounts} && exec {JOURNALD}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = Journal(["nsenter", "-t", str(proc.pid), "-m", "--"])
    try:
        wait_for(lambda: proc.poll() is not None or journal.run("test", "-S", str(SOCKET)).returncode == 0, 30,
                 "systemd-journald to create its socket")
        if proc.poll() is not None:
            pytest.fail(f"systemd-journald exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        yield journal
    finally:
        terminate(proc, 20, group=False)
        proc.stderr.close()  # type: ignore[union-attr]


def test_the_journal_socket_is_private_to_the_test(journal: Journal) -> None:
    if not journal.prefix:
        pytest.skip("using the machine's own journald")
    # Logging from outside the namespace must not find a socket the test started.
    assert not SOCKET.exists() or _journald_running()


def test_a_jobs_lines_are_found_by_job_id_with_user_stage_and_priority(
        journal: Journal, tmp_path: Path, speech_wav: Path, short_wav: Path, small_mp4: Path) -> None:
    user = f"alice{uuid.uuid4().hex[:6]}"
    config = write_config(tmp_path, pipeline={"command": {"argv": PICKY_ARGV, "timeout_seconds": 120}},
                          logging={"level": "INFO"})
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    stderr_path = tmp_path / "daemon.stderr"
    stderr = stderr_path.open("wb")
    daemon = subprocess.Popen([*journal.prefix, sys.executable, "-m", "daemon.cli", "--config", str(config), "run"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)

    def ready() -> bool:
        # A record the journal handler could not send is reported on stderr by logging itself.
        assert "--- Logging error ---" not in stderr_path.read_text(errors="replace"), \
            f"the daemon could not log to journald:\n{stderr_path.read_text(errors='replace')[-3000:]}"
        return daemon.poll() is not None or any(
            "ready: taking work" in e["MESSAGE"]
            for e in journal.entries("SYSLOG_IDENTIFIER=lipsyncd", f"_PID={daemon.pid}"))

    try:
        # The daemon logs to the journal only (stderr is no terminal), so readiness is read from there too.
        wait_for(ready, 60, "the daemon's 'ready' line in the journal", interval=0.3)
        assert daemon.poll() is None, stderr_path.read_text(errors="replace")
        drop_pair(tmp_path / "inbox" / user, "good", speech_wav, small_mp4)
        drop_pair(tmp_path / "inbox" / user, "tooshort", short_wav, small_mp4)
        wait_for(lambda: records(tmp_path) and failures(tmp_path), 120, "one output and one failure", interval=0.3)
    finally:
        terminate(daemon)
        stderr.close()
    assert daemon.returncode == 0

    good_id = records(tmp_path)[0]["job_id"]
    bad_id = json.loads((failures(tmp_path)[0] / "job.json").read_text())["id"]

    good = journal.entries("SYSLOG_IDENTIFIER=lipsyncd", f"JOB_ID={good_id}")
    assert len(good) >= 2, good
    assert {e["JOB_ID"] for e in good} == {good_id}
    assert {e["LIPSYNC_USER"] for e in good} == {user}
    stages = {e.get("STAGE") for e in good}
    assert {"render", "done"} <= stages, stages
    assert all(e["_TRANSPORT"] == "journal" for e in good)
    assert all(int(e["PRIORITY"]) >= 4 for e in good), "a good job logs nothing at error level"
    messages = " | ".join(e["MESSAGE"] for e in good)
    assert "rendering good" in messages and "done good" in messages, messages
    assert journal.entries("SYSLOG_IDENTIFIER=lipsyncd", f"JOB_ID={good_id}", priority="err") == []

    errors = journal.entries("SYSLOG_IDENTIFIER=lipsyncd", f"JOB_ID={bad_id}", priority="err")
    assert errors, journal.entries("SYSLOG_IDENTIFIER=lipsyncd", f"JOB_ID={bad_id}")
    failed = [e for e in errors if e.get("STAGE") == "failed"]
    assert failed, errors
    assert failed[0]["PRIORITY"] == "3" and failed[0]["LIPSYNC_USER"] == user
    assert "failed tooshort" in failed[0]["MESSAGE"] and "status 3" in failed[0]["MESSAGE"], failed[0]
    # The full reason, with the tool's own words, is in error.txt, which the journal line points at.
    assert "too short to lip-sync" in (failures(tmp_path)[0] / "error.txt").read_text()
    assert str(failures(tmp_path)[0]) in failed[0]["MESSAGE"]
    # The two jobs' lines do not mix.
    assert not {e["MESSAGE"] for e in errors} & {e["MESSAGE"] for e in good}
