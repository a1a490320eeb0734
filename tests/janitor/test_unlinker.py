"""The janitor's deleting helper process (daemon/janitor/unlinker.py): it deletes through the folder descriptor the
planner handed over (never by path), checks a changed folder file by file, and when it dies or cannot be
started the pass says so or deletes by itself: nothing is lost and nothing else is touched."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from daemon import janitor
from daemon.janitor import delete as safedelete
from daemon.janitor import plan as prune
from daemon.janitor.unlinker import Unlinker
from tests.janitor_support import make_config, output, put

REPO = Path(__file__).resolve().parents[2]

DATE = "2026-09-01"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _members(folder: Path, stem: str) -> list[prune.Member]:
    members = []
    for path in sorted(folder.glob(f"{stem}.*")):
        st = os.lstat(path)
        members.append((path.name, st.st_size, st.st_blocks * 512, st.st_mtime_ns, st.st_ino))
    return members


def test_the_helper_deletes_through_the_handed_descriptor_not_the_path(tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / DATE / "ann"
    output(tmp_path / "outputs", DATE, "ann", "talk", 30)
    fd = os.open(folder, _DIR)
    payload = (os.fstat(fd).st_mtime_ns, [_members(folder, "talk")], None)
    # After the hand-over was prepared the folder moves away and a symlink to a decoy takes its name:
    # deleting by path would hit the decoy.
    moved = tmp_path / "moved"
    folder.rename(moved)
    decoy = tmp_path / "decoy"
    output(decoy, DATE, "x", "talk", 30)
    folder.symlink_to(decoy / DATE / "x", target_is_directory=True)
    helper = Unlinker(safedelete.delete_outputs)
    assert helper.start()
    try:
        assert helper.submit([fd], payload)
    finally:
        os.close(fd)
    assert helper.finish() == [([], None)]
    assert helper.failure == ""
    assert list(moved.iterdir()) == []  # the real folder, reached through its descriptor, is empty
    assert sorted(p.name for p in (decoy / DATE / "x").iterdir()) == ["talk.jpg", "talk.json", "talk.mp4"]


def test_a_folder_changed_since_planning_is_checked_file_by_file_in_the_helper(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    folder = out / DATE / "bo"
    kept = output(out, DATE, "bo", "kept", 30)
    output(out, DATE, "bo", "gone", 30)
    fd = os.open(folder, _DIR)
    payload = (os.fstat(fd).st_mtime_ns, [_members(folder, "kept"), _members(folder, "gone")], "bo")
    date_fd = os.open(out / DATE, _DIR)
    time.sleep(0.01)
    put(tmp_path / "new.json", 0)
    os.replace(tmp_path / "new.json", kept[1])  # a new record renamed over kept.json after planning
    helper = Unlinker(safedelete.delete_outputs)
    assert helper.start()
    try:
        helper.submit([fd, date_fd], payload)
    finally:
        os.close(fd)
        os.close(date_fd)
    results = helper.finish()
    assert results is not None and len(results) == 1
    problems, removal = results[0]
    assert removal is None  # not emptied after all: its removal is not even tried
    (problem,) = problems
    index, done, kind, _errno, text = problem
    assert (index, done, kind) == (0, 0, safedelete.REFUSED) and "kept.json changed" in text
    assert all(p.exists() for p in kept)  # the changed output stays whole
    assert sorted(p.name for p in folder.iterdir()) == ["kept.jpg", "kept.json", "kept.mp4"]


def test_an_emptied_folder_is_removed_through_its_parent_descriptor(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    output(out, DATE, "cy", "talk", 30)
    output(out, DATE, "di", "talk", 30)
    handed = []
    for user in ("cy", "di"):
        fd = os.open(out / DATE / user, _DIR)
        handed.append((fd, (os.fstat(fd).st_mtime_ns, [_members(out / DATE / user, "talk")], user)))
    date_fd = os.open(out / DATE, _DIR)
    put(out / DATE / "di" / "arrived-late.txt", 0)  # di is no longer emptied by the pass
    helper = Unlinker(safedelete.delete_outputs)
    assert helper.start()
    try:
        for fd, payload in handed:
            assert helper.submit([fd, date_fd], payload)
    finally:
        for fd, _ in handed:
            os.close(fd)
        os.close(date_fd)
    results = helper.finish()
    assert results is not None
    (cy_problems, cy_removal), (di_problems, di_removal) = results
    assert cy_problems == [] and cy_removal == (0, "")
    assert not (out / DATE / "cy").exists()
    # di's outputs are checked one by one (its folder changed) and deleted; the late file keeps the folder.
    assert di_problems == [] and di_removal is not None and di_removal[0] == errno.ENOTEMPTY
    assert sorted(p.name for p in (out / DATE / "di").iterdir()) == ["arrived-late.txt"]


def test_a_helper_that_fails_is_reported_not_hidden() -> None:
    def broken(fds: list[int], payload: object) -> object:
        raise RuntimeError("boom")

    helper = Unlinker(broken)
    assert helper.start()
    fd = os.open("/", _DIR)
    try:
        helper.submit([fd], None)
    finally:
        os.close(fd)
    assert helper.finish() is None
    assert "exit status 1" in helper.failure


def test_a_helper_killed_mid_pass_is_an_error_and_the_next_pass_finishes(tmp_path: Path) -> None:
    if not Unlinker.worthwhile():
        pytest.skip("one CPU: the janitor starts no helper process here")
    cfg = make_config(tmp_path)
    out = Path(cfg["paths"]["outputs"])
    users = [f"u{i:02d}" for i in range(40)]
    for user in users:
        output(out, DATE, user, "old", 30)
        output(out, DATE, user, "new", 1)
    planner = prune.Planner(dict(cfg), time.time(), None)
    executor = safedelete.Executor(planner.plan)
    killed: list[int] = []

    def submit_then_kill(*args: object) -> None:
        executor.submit_folder(*args)  # type: ignore[arg-type]
        if not killed:
            pid = executor._helper.pid  # noqa: SLF001 - the helper this pass started
            assert pid > 0
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            while Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":  # dead, not yet reaped
                time.sleep(0.005)

    planner.on_delete = executor.submit
    planner.on_folder = submit_then_kill
    plan = planner.build()
    outcome = executor.finish()
    assert killed and len(plan.deletions) == 40
    assert outcome.errors, "a helper killed mid-pass must make the pass fail"
    assert all("killed by signal 9" in e["error"] or "gone" in e["error"] for e in outcome.errors)
    assert outcome.files == 3 * (40 - len(outcome.errors))  # the folders it could not hand over: done here
    for user in users:  # nothing kept was touched
        assert sorted(p.name for p in (out / DATE / user).iterdir()
                      if p.name.startswith("new")) == ["new.jpg", "new.json", "new.mp4"]
    second = janitor.run_pass(cfg)
    assert second.ok, second.problems
    for user in users:
        assert sorted(p.name for p in (out / DATE / user).iterdir()) == ["new.jpg", "new.json", "new.mp4"]


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path sits in a root-only folder)."""
    path = Path(tempfile.mkdtemp(prefix="lipsyncd-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_without_a_helper_process_the_pass_deletes_by_itself(open_tmp: Path) -> None:
    """fork refused for real: the pass runs as an unprivileged user whose process limit is already reached."""
    if os.geteuid() != 0:
        pytest.skip("running the pass as another user with a process limit needs root")
    base = open_tmp / "tree"
    cfg = make_config(base, logging={"file": str(base / "state" / "janitor.log"), "level": "INFO"})
    out = Path(cfg["paths"]["outputs"])
    for user in ("ann", "张三"):
        output(out, DATE, user, "old", 30)
        output(out, DATE, user, "new", 1)
    config_file = base / "lipsyncd.yaml"
    config_file.write_text(yaml.safe_dump(json.loads(json.dumps(cfg)), allow_unicode=True), encoding="utf-8")
    subprocess.run(["chown", "-R", "65534:65534", str(base)], check=True)
    argv = ["prlimit", "--nproc=1:1", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            sys.executable, "-m", "daemon.cli", "--config", str(config_file), "janitor", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", cwd=REPO)
    if done.returncode != 0 and "failed to execute" in done.stderr:
        pytest.skip(f"the unprivileged user cannot run this checkout's python: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["done"]["files"] == 6 and report["done"]["errors"] == []
    for user in ("ann", "张三"):
        assert sorted(p.name for p in (out / DATE / user).iterdir()) == ["new.jpg", "new.json", "new.mp4"]
    log = (base / "state" / "janitor.log").read_text(encoding="utf-8")
    assert "deleting in the janitor's own process: cannot start the helper process" in log


def _forks(tmp_path: Path, cpus: str) -> tuple[int, dict]:
    """(process creations seen by strace, the --json report) of a real pass pinned to *cpus*."""
    cfg = make_config(tmp_path)
    out = Path(cfg["paths"]["outputs"])
    for user in ("ann", "bo"):
        output(out, DATE, user, "old", 30)
    config_file = tmp_path / "lipsyncd.yaml"
    config_file.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))), encoding="utf-8")
    trace = tmp_path / "trace.txt"
    done = subprocess.run(["taskset", "-c", cpus, "strace", "-f", "-qq", "-e", "trace=fork,vfork,clone,clone3",
                           "-o", str(trace), sys.executable, "-m", "daemon.cli", "--config", str(config_file),
                           "janitor", "--json"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    creations = [line for line in trace.read_text().splitlines() if "clone" in line or "fork(" in line]
    return len(creations), json.loads(done.stdout)


@pytest.mark.skipif(shutil.which("strace") is None or shutil.which("taskset") is None,
                    reason="needs strace and taskset")
def test_one_cpu_no_helper_two_cpus_one_helper(tmp_path: Path) -> None:
    forks, report = _forks(tmp_path / "one", "0")
    assert forks == 0 and report["done"]["files"] == 6 and report["done"]["errors"] == []
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this machine has one CPU: the two-CPU half cannot run")
    forks, report = _forks(tmp_path / "two", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:2]))
    assert forks == 1 and report["done"]["files"] == 6 and report["done"]["errors"] == []


def test_the_helper_ends_when_the_pass_is_killed_and_the_next_pass_finishes(tmp_path: Path) -> None:
    """kill -9 of the janitor mid-pass (a timer-started pass cut short): its helper does not linger."""
    if not Unlinker.worthwhile():
        pytest.skip("one CPU: the janitor starts no helper process here")
    cfg = make_config(tmp_path)
    out = Path(cfg["paths"]["outputs"])
    old = time.time() - 30 * 86400
    for day in range(1, 29):
        for u in range(60):
            folder = out / f"2026-02-{day:02d}" / f"u{u:02d}"
            folder.mkdir(parents=True)
            for suffix in (".mp4", ".json", ".jpg"):
                (folder / f"talk{suffix}").write_bytes(b"x")
                os.utime(folder / f"talk{suffix}", (old, old))
    kept = output(out, DATE, "keeper", "fresh", 0.5)
    config_file = tmp_path / "lipsyncd.yaml"
    config_file.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "--config", str(config_file), "janitor"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    helper = 0
    deadline = time.monotonic() + 30
    while not helper and proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            helper = int((children.read_text().split() or ["0"])[0])
    assert helper, "the pass ended before its helper could be seen (tree too small for this machine?)"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-pass, not finished before the signal
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{helper}/stat").read_text().split()[2] == "Z":
                break
        except OSError:
            break  # gone
        time.sleep(0.01)
    else:
        pytest.fail(f"the helper {helper} still runs 10 s after its pass was killed")
    second = janitor.run_pass(cfg)
    assert second.ok, second.problems
    assert sorted(p.name for p in out.iterdir()) == [DATE]  # every expired output and emptied folder gone
    assert all(p.exists() for p in kept)
