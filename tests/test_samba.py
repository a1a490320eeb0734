"""Private folders through a real Samba share: smbd started here on a loopback port with its own smb.conf,
people logging in with their own passwords (smbpasswd -a), smbclient as their client.

Each person drops a pair through the share and gets the result back through it; neither can open, list or
delete the other's. The smb.conf written here is the one the README shows.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.access_support import People, lay_out, readable_copy
from tests.daemon_harness import ROOT, Daemon, failures, outputs, wait_for
from tests.janitor_support import free_port

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

SHARE = "lipsync"
# The share section as the README shows it (DATA: the data root holding inbox/, avatars/, outputs/, failed/).
SHARE_CONF = """\
[lipsync]
   path = {data}
   read only = no
   valid users = @{drop}
   # new files and folders take the folder's default ACL: the person, the admin group, the service
   inherit acls = yes
   inherit permissions = no
   # what a person may not open is not listed either
   hide unreadable = yes
"""


def _smb_conf(state: Path, data: Path, port: int, drop: str) -> Path:
    for sub in ("run", "lock", "state", "cache", "private", "log"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    conf = state / "smb.conf"
    conf.write_text(f"""\
[global]
   server role = standalone server
   smb ports = {port}
   interfaces = 127.0.0.1
   bind interfaces only = yes
   pid directory = {state}/run
   lock directory = {state}/lock
   state directory = {state}/state
   cache directory = {state}/cache
   private dir = {state}/private
   ncalrpc dir = {state}/run/ncalrpc
   passdb backend = tdbsam:{state}/private/passdb.tdb
   log file = {state}/log/%m.log
   map to guest = never
   server min protocol = SMB2
   load printers = no
   printing = bsd
   printcap name = /dev/null
   disable spoolss = yes

{SHARE_CONF.format(data=data, drop=drop)}""", encoding="utf-8")
    return conf


class Smb:
    """smbd in the foreground under this test, stopped by its PID."""

    def __init__(self, conf: Path, port: int) -> None:
        self.conf, self.port = conf, port
        self.log = conf.parent / "smbd.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Smb:
        with open(self.log, "wb") as out:
            # A session of its own: smbd signals its whole process group when it stops, never the test's.
            self.proc = subprocess.Popen(["smbd", "--foreground", "--no-process-group", "--debug-stdout", "-s",
                                          str(self.conf)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._listening, 30, "smbd to listen")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"smbd exited: {self.log.read_text(errors='replace')[-3000:]}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def add_user(self, user: str, password: str) -> None:
        done = subprocess.run(["smbpasswd", "-c", str(self.conf), "-s", "-a", user],
                              input=f"{password}\n{password}\n", capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr

    def client(self, user: str, password: str, commands: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        """smbclient as *user*, running *commands*; a refused command shows as NT_STATUS_... in its output."""
        return subprocess.run(["smbclient", f"//127.0.0.1/{SHARE}", "-p", str(self.port), "-m", "SMB3",
                               "-U", f"{user}%{password}", "-c", commands], capture_output=True, text=True,
                              timeout=60, cwd=cwd)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    text = result.stdout + result.stderr
    assert result.returncode == 0 and "NT_STATUS_" not in text, text
    return text


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    text = result.stdout + result.stderr
    assert "NT_STATUS_ACCESS_DENIED" in text, text
    return text


def test_two_people_through_a_samba_share(people: People, shared_root: Path, short_wav: Path,
                                          small_mp4: Path) -> None:
    if not shutil.which("smbd") or not shutil.which("smbclient"):
        pytest.skip("needs Debian's samba and smbclient (dev.sh installs them)")
    root = shared_root
    config = lay_out(root, people, access={"mode": "private", "admin_group": people.admin})
    media = root / "media"
    wav, mp4 = readable_copy(short_wav, media), readable_copy(small_mp4, media)
    for person in (people.alice, people.bob):
        added = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config), "users", "add", person],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
    port = free_port()
    smb = Smb(_smb_conf(root / "samba", root, port, people.drop), port)
    passwords = {people.alice: "alice-Secret-1", people.bob: "bob-Secret-2"}
    date = time.strftime("%Y-%m-%d")
    downloads = {}
    try:
        smb.start()
        for person, password in passwords.items():
            smb.add_user(person, password)
        with Daemon(config):
            for person, password in passwords.items():
                _ok(smb.client(person, password, f"cd inbox/{person}; put {mp4} talk.mp4; put {wav} talk.wav",
                               cwd=media))
            # a wrong password gets nothing
            assert "NT_STATUS_LOGON_FAILURE" in smb.client(people.bob, "guess", "ls", cwd=media).stdout
            wait_for(lambda: len(outputs(root)) == 2, 90, "both results", interval=0.2)
        assert not failures(root)

        for person, password in passwords.items():
            target = root / f"got-{person}.mp4"
            downloads[person] = target
            _ok(smb.client(person, password, f"cd outputs/{date}/{person}; get talk.mp4 {target}", cwd=root))
            assert target.read_bytes() == (root / "outputs" / date / person / "talk.mp4").read_bytes()

        alice, bob = people.alice, people.bob
        for me, other in ((alice, bob), (bob, alice)):
            pw = passwords[me]
            theirs = f"outputs/{date}/{other}"
            _refused(smb.client(me, pw, f"get {theirs}/talk.mp4 {root}/stolen.mp4", cwd=root))
            assert not (root / "stolen.mp4").exists()
            _refused(smb.client(me, pw, f"del {theirs}/talk.mp4", cwd=root))
            assert (root / theirs / "talk.mp4").exists()
            assert "talk.mp4" in _ok(smb.client(me, pw, f"ls outputs/{date}/{me}/*", cwd=root))
            assert "talk.mp4" not in _refused(smb.client(me, pw, f"ls {theirs}/*", cwd=root))
            assert other not in _refused(smb.client(me, pw, f"ls outputs/{date}/*", cwd=root))  # names no one
            _refused(smb.client(me, pw, f"cd inbox/{other}; put {mp4} sneak.mp4", cwd=media))
            assert not (root / "inbox" / other / "sneak.mp4").exists()

        # each person deletes their own result through the share, and pins by making a .keep
        _ok(smb.client(alice, passwords[alice], f"cd outputs/{date}/{alice}; del talk.mp4", cwd=root))
        assert not (root / "outputs" / date / alice / "talk.mp4").exists()
        _ok(smb.client(bob, passwords[bob], f"cd outputs/{date}/{bob}; put {mp4} talk.mp4.keep", cwd=media))
        assert (root / "outputs" / date / bob / "talk.mp4.keep").exists()
    finally:
        smb.stop()
