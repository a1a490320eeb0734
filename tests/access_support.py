"""Real local accounts for the private-folder tests: made with useradd/groupadd, removed after, acted as with setpriv.

Names carry the test process id, so two runs (or a crashed earlier one) never meet. The data root lives in a
folder under /tmp that every account may traverse (pytest's own tmp folders are 0700, root's only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon_harness import ROOT, write_config

SYSTEM_PYTHON = Path("/usr/bin/python3")  # the venv's interpreter may live under /root, which accounts cannot read


@dataclass(frozen=True)
class People:
    """alice and bob drop files; carol is in the admin group; mallory is in no lipsyncd group at all."""

    alice: str
    bob: str
    carol: str
    mallory: str
    drop: str
    admin: str


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def as_user(user: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run *cmd* as *user* with the groups /etc/group gives them now (real permission checks), umask 022."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--",
                           "sh", "-c", "umask 022; exec \"$@\"", "sh", *cmd], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def people() -> Iterator[People]:
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setfacl"):
        pytest.skip("needs root, useradd and setfacl (Debian package acl)")
    tag = f"{os.getpid() % 100000}"
    found = People(f"lsa{tag}", f"lsb{tag}", f"lsc{tag}", f"lsm{tag}", f"lsdrop{tag}", f"lsadm{tag}")
    made_users: list[str] = []
    made_groups: list[str] = []
    try:
        for group in (found.drop, found.admin):
            run("groupadd", group).check_returncode()
            made_groups.append(group)
        for user in (found.alice, found.bob, found.carol, found.mallory):
            run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user).check_returncode()
            made_users.append(user)
        run("usermod", "-a", "-G", f"{found.drop},{found.admin}", found.carol).check_returncode()
        yield found
    finally:
        for user in made_users:
            run("userdel", user)
        for group in made_groups:
            run("groupdel", group)


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A data root every account can traverse, removed after."""
    root = Path(tempfile.mkdtemp(prefix="lipsyncd-access-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def lay_out(root: Path, people: People, **sections: dict) -> Path:
    """Data folders as install.sh lays them out (drop group, setgid modes), and a config for them."""
    config = write_config(root, **sections)
    for name, mode in (("inbox", 0o2770), ("avatars", 0o2770), ("outputs", 0o2750), ("failed", 0o2750),
                       ("spool", 0o2750), ("state", 0o700)):
        folder = root / name
        if name != "state":
            shutil.chown(folder, group=people.drop)
        folder.chmod(mode)
    config.chmod(0o644)
    return config


def readable_copy(src: Path, folder: Path) -> Path:
    """*src* copied where every account can read it (pytest's session media folder is root's only)."""
    folder.mkdir(mode=0o755, exist_ok=True)
    folder.chmod(0o755)
    dst = folder / src.name
    shutil.copyfile(src, dst)
    dst.chmod(0o644)
    return dst


def system_python_fits() -> bool:
    """/usr/bin/python3 is the venv's Python version, so it can run lipsyncd with the venv's packages."""
    if not SYSTEM_PYTHON.exists():
        return False
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    return version == str(sys.version_info[:2])


def system_python_env(home: Path) -> dict[str, str]:
    """The environment for /usr/bin/python3 to run this checkout with the venv's packages."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"}


def lipsyncd_as(user: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`lipsyncd --config CONFIG ARGS` as *user* (their uid and groups)."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--",
                           str(SYSTEM_PYTHON), "-m", "daemon.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, cwd="/", env=system_python_env(Path("/tmp")))
