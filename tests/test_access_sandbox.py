"""The service as the unprivileged account it runs as, with its unit's limits, still makes private folders.

systemd cannot be PID 1 here, so the unit cannot be started. Instead the real daemon runs as its own account
(not root) the way lipsyncd.service starts it: no capabilities at all (an empty bounding set, as
CapabilityBoundingSet= gives), no new privileges, UMask=0027, under strace; a person's drop is rendered and
filed, and every system call it and its children (setfacl, getfacl, ffmpeg) made is checked against the unit's
SystemCallFilter=. Setting ACLs on what the service owns needs no capability, so nothing is added to the unit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.access_support import (
    SYSTEM_PYTHON,
    People,
    as_user,
    lay_out,
    readable_copy,
    run,
    system_python_env,
    system_python_fits,
)
from tests.daemon_harness import ROOT, failures, outputs, wait_for
from tests.test_units import DEVICES_CLOSED, check_against_unit, read_trace, stop_traced

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]


def test_the_unprivileged_service_sets_private_acls_inside_its_sandbox(people: People, shared_root: Path,
                                                                        short_wav: Path, small_mp4: Path) -> None:
    if not shutil.which("strace") or not system_python_fits():
        pytest.skip("needs strace, and /usr/bin/python3 of the venv's Python version (to run as an account)")
    root = shared_root
    service = f"lss{os.getpid() % 100000}"
    run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--groups", people.drop,
        service).check_returncode()
    proc = None
    trace_dir = root / "trace"
    trace_file, log_file = trace_dir / "strace.txt", trace_dir / "daemon.log"
    try:
        config = lay_out(root, people, access={"mode": "private", "admin_group": people.admin},
                         logging={"level": "INFO"})
        for name in ("inbox", "avatars", "outputs", "failed", "spool", "state"):  # as install.sh lays them out
            folder = root / name
            mode = folder.stat().st_mode & 0o7777
            shutil.chown(folder, user=service, group=service if name == "state" else people.drop)
            folder.chmod(mode)
        added = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config), "users", "add",
                                people.alice], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr  # the admin, as root
        media = root / "media"
        wav, mp4 = readable_copy(short_wav, media), readable_copy(small_mp4, media)
        trace_dir.mkdir()
        shutil.chown(trace_dir, user=service)
        env = system_python_env(root / "state")
        argv = ["setpriv", f"--reuid={service}", f"--regid={service}", "--init-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--", "sh", "-c",
                f"umask 0027; exec \"$@\" > {log_file} 2>&1", "sh",
                "strace", "-f", "-qq", "-s", "256", "-e", "signal=none", "-o", str(trace_file),
                str(SYSTEM_PYTHON), "-m", "daemon.cli", "--config", str(config), "run"]
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, start_new_session=True)
        wait_for(lambda: log_file.exists() and "ready: taking work" in log_file.read_text()
                 or proc.poll() is not None, 120, "the service to be ready", interval=0.3)
        assert proc.poll() is None, log_file.read_text()[-3000:]
        dropped = as_user(people.alice, "sh", "-c", f"cp {mp4} {root}/inbox/{people.alice}/talk.mp4 && "
                                                    f"cp {wav} {root}/inbox/{people.alice}/talk.wav")
        assert dropped.returncode == 0, dropped.stderr
        wait_for(lambda: outputs(root) or failures(root), 120, "the job to finish", interval=0.3)
    finally:
        if proc is not None:
            stop_traced(proc, trace_file, 90)
        run("userdel", service)
    log = log_file.read_text(errors="replace")
    date = time.strftime("%Y-%m-%d")
    video = root / "outputs" / date / people.alice / "talk.mp4"
    assert outputs(root) == [video], log[-3000:]
    # The service (not root) gave the folder its ACL: alice reads her result, bob cannot list or read it.
    acl = subprocess.run(["getfacl", "-cp", str(video.parent)], capture_output=True, text=True).stdout
    assert f"user:{people.alice}:rwx" in acl and f"group:{people.admin}:rwx" in acl, acl
    assert os.stat(video.parent).st_uid != 0, "made by the service account"
    assert as_user(people.alice, "cmp", str(video), str(video)).returncode == 0
    assert as_user(people.bob, "cat", str(video)).returncode != 0
    assert as_user(people.bob, "ls", str(video.parent.parent)).returncode != 0
    trace = read_trace(trace_file)
    acl_calls = [line for line in trace.lines if "setxattr(" in line and "system.posix_acl_access" in line]
    assert acl_calls and all(line.rstrip().endswith("= 0") for line in acl_calls), acl_calls[:5]
    assert not [line for line in trace.lines if "EPERM" in line and "xattr" in line]
    check_against_unit("lipsyncd.service", trace, {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}, DEVICES_CLOSED)
    print(f"lipsyncd.service as {service}: {len(acl_calls)} ACLs set, {len(trace.syscalls)} distinct system calls, "
          "all allowed by its SystemCallFilter=, no capabilities")
