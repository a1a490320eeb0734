"""access.mode private with real accounts: each person reaches only their own folders; admins reach all.

The daemon runs for real (the command engine muxing audio onto a tiny clip), people act through setpriv with
their own uid and groups, and every check is a real open/list/unlink that the kernel allows or refuses.
"""

from __future__ import annotations

import grp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.access_support import People, as_user, lay_out, lipsyncd_as, readable_copy, run, system_python_fits
from tests.daemon_harness import ROOT, Daemon, failures, outputs, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_each_person_reaches_only_their_own_results(people: People, shared_root: Path, short_wav: Path,
                                                    small_mp4: Path) -> None:
    root = shared_root
    config = lay_out(root, people, access={"mode": "private", "admin_group": people.admin},
                     metrics={"textfile": str(root / "state" / "lipsyncd.prom")})
    media = root / "media"
    wav, mp4 = readable_copy(short_wav, media), readable_copy(small_mp4, media)
    bad = media / "noise.wav"
    bad.write_bytes(b"this is not audio\n" * 50)
    bad.chmod(0o644)
    for person in (people.alice, people.bob):
        added = cli(config, "users", "add", person)
        assert added.returncode == 0, added.stderr
    assert {people.alice, people.bob} <= set(grp.getgrnam(people.drop).gr_mem), "users add joins the drop group"
    inbox = root / "inbox"
    (inbox / "ghost").mkdir()  # a folder no account owns (an admin made it by hand)

    with Daemon(config) as daemon:
        dropped = as_user(people.alice, "sh", "-c", f"cp {mp4} {inbox}/{people.alice}/talk.mp4 && "
                                                    f"cp {wav} {inbox}/{people.alice}/talk.wav && "
                                                    f"cp {mp4} {inbox}/{people.alice}/keepme.mp4 && "
                                                    f"cp {wav} {inbox}/{people.alice}/keepme.wav")
        assert dropped.returncode == 0, dropped.stderr
        dropped = as_user(people.bob, "sh", "-c", f"cp {mp4} {inbox}/{people.bob}/oops.mp4 && "
                                                  f"cp {bad} {inbox}/{people.bob}/oops.wav")
        assert dropped.returncode == 0, dropped.stderr
        # bob cannot drop into alice's folder, nor see who has one
        assert as_user(people.bob, "cp", str(mp4), f"{inbox}/{people.alice}/sneak.mp4").returncode != 0
        assert as_user(people.bob, "ls", str(inbox)).returncode != 0
        run("cp", str(mp4), str(inbox / "ghost" / "lost.mp4")).check_returncode()
        run("cp", str(wav), str(inbox / "ghost" / "lost.wav")).check_returncode()
        date = time.strftime("%Y-%m-%d")
        bobs_error = root / "failed" / date / people.bob / "oops" / "error.txt"
        ghost_error = root / "failed" / date / "ghost" / "lost" / "error.txt"
        wait_for(lambda: len(outputs(root)) == 2 and bobs_error.exists() and ghost_error.exists(), 90,
                 "alice's result, bob's failure and the ghost folder's", interval=0.2)
        log = daemon.log()
    assert "Traceback" not in log, log

    mine = root / "outputs" / date / people.alice
    video = mine / "talk.mp4"
    kept = mine / "keepme.mp4"
    assert outputs(root) == [kept, video]
    assert {p.parent.name for p in failures(root)} == {people.bob, "ghost"}

    # The owner lists and reads her result.
    listed = as_user(people.alice, "ls", str(mine))
    assert listed.returncode == 0 and "talk.mp4" in listed.stdout.split(), listed.stderr
    assert as_user(people.alice, "cmp", str(video), str(video)).returncode == 0
    assert as_user(people.alice, "cat", str(video.with_suffix(".json"))).returncode == 0

    # bob: the date folder does not list who has results; alice's folder, video and record are closed to him.
    assert as_user(people.bob, "ls", str(root / "outputs" / date)).returncode != 0
    assert as_user(people.bob, "ls", str(mine)).returncode != 0
    assert as_user(people.bob, "cat", str(video)).returncode != 0
    assert as_user(people.bob, "cat", str(video.with_suffix(".json"))).returncode != 0
    assert as_user(people.bob, "rm", "-f", str(video)).returncode != 0
    assert as_user(people.bob, "touch", f"{video}.keep").returncode != 0
    assert video.exists() and not Path(f"{video}.keep").exists()
    # bob reads his own error.txt; alice cannot read it, nor list his failures.
    own = as_user(people.bob, "cat", str(bobs_error))
    assert own.returncode == 0 and "lipsyncd could not make a video" in own.stdout, own.stderr
    assert as_user(people.alice, "cat", str(bobs_error)).returncode != 0
    assert as_user(people.alice, "ls", str(bobs_error.parent.parent)).returncode != 0
    # mallory (in no lipsyncd group) reaches nothing.
    assert as_user(people.mallory, "ls", str(root / "outputs")).returncode != 0
    assert as_user(people.mallory, "cat", str(video)).returncode != 0

    # The folder that is no account's: failed with a plain reason; only admins read it.
    ghost = ghost_error.read_text(encoding="utf-8")
    assert "belongs to nobody" in ghost and "lipsyncd users add ghost" in ghost, ghost
    assert as_user(people.alice, "cat", str(ghost_error)).returncode != 0

    # carol (admin group) lists the date folder and reads everyone's results and failures.
    names = as_user(people.carol, "ls", str(root / "outputs" / date))
    assert names.returncode == 0 and people.alice in names.stdout.split(), names.stderr
    assert as_user(people.carol, "cmp", str(video), str(video)).returncode == 0
    assert as_user(people.carol, "cat", str(bobs_error)).returncode == 0
    assert "belongs to nobody" in as_user(people.carol, "cat", str(ghost_error)).stdout

    # The owner pins, unpins and deletes her own result.
    assert as_user(people.alice, "touch", f"{video}.keep").returncode == 0
    assert as_user(people.alice, "rm", f"{video}.keep").returncode == 0
    assert as_user(people.alice, "rm", str(video)).returncode == 0
    assert not video.exists() and video.with_suffix(".json").exists()
    assert as_user(people.alice, "touch", f"{kept}.keep").returncode == 0

    # One person's status: her results (the deleted video shown as such), none of bob's failures; and his.
    hers = json.loads(cli(config, "status", "--user", people.alice, "--json").stdout)
    states = {(r["name"], r["state"], r["pinned"]) for r in hers["results"]}
    assert states == {("talk", "deleted", False), ("keepme", "ready", True)}, hers["results"]
    assert hers["recent_failures"] == []
    his = cli(config, "status", "--user", people.bob)
    assert his.returncode == 0 and "oops" in his.stdout and people.alice not in his.stdout, his.stdout
    if system_python_fits():  # each person asks for themselves: the spool is closed to them, their folders not
        own = lipsyncd_as(people.alice, config, "status", "--user", people.alice)
        assert own.returncode == 0, own.stderr
        assert "talk  video deleted" in own.stdout and "keepme" in own.stdout, own.stdout
        assert "spool" in own.stdout and "cannot be read by this account" in own.stdout, own.stdout
        own = lipsyncd_as(people.bob, config, "status", "--user", people.bob)
        assert "oops" in own.stdout and people.alice not in own.stdout, own.stdout + own.stderr
    listed = {p["user"]: p for p in json.loads(cli(config, "users", "list", "--json").stdout)["users"]}
    assert listed[people.alice]["results"] == 1 and listed[people.alice]["pins"] == 1, listed
    assert listed["ghost"]["account"] == "(no account)" and listed[people.bob]["failures"] == 1, listed

    # bob deletes his own failure report folder.
    assert as_user(people.bob, "rm", "-rf", str(bobs_error.parent)).returncode == 0
    assert not bobs_error.parent.exists()

    # A month later the janitor prunes the half-deleted group and keeps the pinned one; a link alice planted
    # in her folder (she may write there now) is never followed: its target is untouched.
    victim = root / "victim.txt"
    victim.write_text("not lipsyncd's")
    assert as_user(people.alice, "ln", "-s", str(victim), str(mine / "trap.mp4")).returncode == 0
    month_ago = time.time() - 30 * 86400
    for path in [*(root / "outputs").rglob("*"), *(root / "failed").rglob("*")]:
        os.utime(path, (month_ago, month_ago), follow_symlinks=False)
    janitor = cli(config, "janitor")
    assert janitor.returncode == 0, janitor.stdout + janitor.stderr
    assert "Traceback" not in janitor.stderr
    assert not video.with_suffix(".json").exists() and not video.with_suffix(".jpg").exists()
    assert kept.exists() and kept.with_suffix(".json").exists()
    assert victim.read_text() == "not lipsyncd's" and (mine / "trap.mp4").is_symlink()
    metrics = (root / "state" / "lipsyncd.prom").read_text(encoding="utf-8")
    assert f'lipsyncd_outputs_files{{user="{people.alice}"}}' in metrics, metrics
    assert as_user(people.alice, "cmp", str(kept), str(kept)).returncode == 0, "pruning left her access alone"


    # What the daemon made is already right: fix-permissions has nothing to change on folders, twice.
    first = cli(config, "users", "fix-permissions")
    second = cli(config, "users", "fix-permissions")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "changed " + str(mine) not in first.stdout, first.stdout
    assert " 0 changed," in second.stdout, second.stdout


def test_switching_modes_is_a_config_change_and_fix_permissions(people: People, shared_root: Path) -> None:
    """Results made in shared mode are opened to their owner only by fix-permissions, and back again."""
    root = shared_root
    config = lay_out(root, people)
    date = "2026-11-30"
    made = []
    for person in (people.alice, people.bob):
        folder = root / "outputs" / date / person
        folder.mkdir(parents=True)
        folder.chmod(0o2750)
        video = folder / "clip.mp4"
        video.write_bytes(b"mp4")
        video.chmod(0o640)
        made.append(video)
        run("gpasswd", "-a", person, people.drop).check_returncode()
    alices, bobs = made
    assert as_user(people.bob, "cat", str(alices)).returncode == 0, "shared: the drop group reads every result"
    assert cli(config, "users", "add", people.alice).returncode == 0  # shared: install.sh's layout
    assert as_user(people.bob, "touch", str(root / "inbox" / people.alice / "x.wav")).returncode == 0
    (root / "inbox" / people.alice / "x.wav").unlink()

    text = config.read_text(encoding="utf-8")
    config.write_text(text + f"access: {{mode: private, admin_group: {people.admin}}}\n", encoding="utf-8")
    first = cli(config, "users", "fix-permissions")
    assert first.returncode == 0, first.stderr
    assert f"changed {alices}" in first.stdout and f"changed {alices.parent}" in first.stdout, first.stdout
    assert as_user(people.bob, "cat", str(alices)).returncode != 0
    assert as_user(people.bob, "ls", str(root / "outputs" / date)).returncode != 0
    assert as_user(people.alice, "cat", str(alices)).stdout == "mp4"
    assert as_user(people.bob, "cat", str(bobs)).stdout == "mp4"
    assert as_user(people.carol, "cat", str(alices)).stdout == "mp4"
    again = cli(config, "users", "fix-permissions")
    assert " 0 changed," in again.stdout, again.stdout

    # users remove takes alice's access away and keeps her files.
    removed = cli(config, "users", "remove", people.alice)
    assert removed.returncode == 0, removed.stderr
    assert alices.exists() and as_user(people.alice, "cat", str(alices)).returncode != 0
    listed = cli(config, "users", "list", "--json")
    assert '"account": "(removed)"' in listed.stdout, listed.stdout
    assert cli(config, "users", "add", people.alice).returncode == 0
    assert cli(config, "users", "fix-permissions", people.alice).returncode == 0
    assert as_user(people.alice, "cat", str(alices)).stdout == "mp4"

    config.write_text(text, encoding="utf-8")  # back to shared
    back = cli(config, "users", "fix-permissions")
    assert back.returncode == 0 and f"changed {alices}" in back.stdout, back.stdout
    assert as_user(people.bob, "cat", str(alices)).stdout == "mp4"
    assert " 0 changed," in cli(config, "users", "fix-permissions").stdout


def test_private_mode_refuses_a_filesystem_without_acls(people: People, shared_root: Path) -> None:
    """ramfs keeps no extended attributes, so no ACLs: run refuses to start (exit 2), doctor fails the check."""
    data = shared_root / "ramfs"
    data.mkdir()
    if run("mount", "-t", "ramfs", "ramfs", str(data)).returncode != 0:
        pytest.skip("cannot mount a ramfs here")
    try:
        config = lay_out(data, people, access={"mode": "private", "admin_group": people.admin})
        started = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config), "run"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=60)
        assert started.returncode == 2, started.stdout + started.stderr
        assert "access.mode" in started.stderr and "does not support POSIX ACLs" in started.stderr, started.stderr
        doctor = cli(config, "doctor")
        assert "FAIL" in doctor.stdout and "private mode cannot work here" in doctor.stdout, doctor.stdout
    finally:
        run("umount", str(data))
