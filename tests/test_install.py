"""install.sh, run for real: staged into a folder with --root, and (as root) on the live system inside a
private mount namespace whose /etc, /var and /opt are overlays, so useradd, chown, setfacl and the
permission checks are real while the machine itself is left untouched.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_units import UNITS, analyze_verify, needs_analyze, stage_units

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "install.sh"
DATA_MODES = {  # folder -> mode (setgid for the folders the drop group shares)
    "inbox": 0o2770, "avatars": 0o2770, "outputs": 0o2750, "failed": 0o2750, "spool": 0o2750, "state": 0o700,
}


def run_install(*args: str, src: Path = REPO, check: bool = True, stdin: int | None = subprocess.DEVNULL,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", str(src / "install.sh"), *args], capture_output=True, text=True, stdin=stdin,
                            timeout=300, env=env)
    if check:
        assert result.returncode == 0, f"install.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def tree_digest(root: Path) -> dict[str, tuple]:
    """Every path under root -> (type, mode, owner, content hash, mtime): what a re-run must not change."""
    entries: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            entries[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            entries[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            entries[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest, st.st_mtime_ns)
    return entries


def copy_source(dest: Path) -> Path:
    """The parts of the source folder install.sh reads (with --no-venv), to simulate an upgrade."""
    dest.mkdir()
    shutil.copy2(INSTALL, dest / "install.sh")
    for folder in ("config", "systemd", "logrotate"):
        shutil.copytree(REPO / folder, dest / folder)
    return dest


def test_staged_install_lays_out_the_expected_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = run_install("--root", str(root), "--no-venv")
    out = result.stdout
    # Files, with the shipped content.
    assert (root / "etc/lipsyncd/lipsyncd.yaml").read_bytes() == (REPO / "config/lipsyncd.yaml").read_bytes()
    assert stat.S_IMODE((root / "etc/lipsyncd/lipsyncd.yaml").stat().st_mode) == 0o640
    for name in UNITS:
        installed = root / "etc/systemd/system" / name
        assert installed.read_bytes() == (REPO / "systemd" / name).read_bytes()
        assert stat.S_IMODE(installed.stat().st_mode) == 0o644
    assert (root / "etc/logrotate.d/lipsyncd").read_bytes() == (REPO / "logrotate/lipsyncd").read_bytes()
    # Data folders: setgid where the drop group shares them, state private.
    for folder, mode in DATA_MODES.items():
        path = root / "var/lib/lipsyncd" / folder
        assert path.is_dir(), folder
        assert stat.S_IMODE(path.stat().st_mode) == mode, f"{folder}: {oct(path.stat().st_mode)}"
    assert stat.S_IMODE((root / "var/log/lipsyncd").stat().st_mode) == 0o750
    assert not (root / "opt/lipsyncd/venv").exists()
    # What it cannot do in a staging root, it states.
    for line in ("would: groupadd --system lipsyncd-drop", "would: useradd --system", "lipsyncd\n",
                 "would: chown lipsyncd:lipsyncd-drop /var/lib/lipsyncd/inbox",
                 "would: chown lipsyncd:lipsyncd /var/lib/lipsyncd/state",
                 "would: systemctl daemon-reload && systemctl enable --now lipsyncd.service lipsyncd-janitor.timer"):
        assert line in out, f"missing {line!r} in:\n{out}"
    # systemctl --root creates the [Install] links without a running systemd.
    if shutil.which("systemctl"):
        wants = root / "etc/systemd/system/multi-user.target.wants/lipsyncd.service"
        timer = root / "etc/systemd/system/timers.target.wants/lipsyncd-janitor.timer"
        assert os.readlink(wants) == "/etc/systemd/system/lipsyncd.service"
        assert os.readlink(timer) == "/etc/systemd/system/lipsyncd-janitor.timer"
        assert not (root / "etc/systemd/system/multi-user.target.wants/lipsyncd-janitor.service").exists()


@needs_analyze
def test_installed_units_pass_verify(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_install("--root", str(root), "--no-venv")
    staged = stage_units(tmp_path / "verify", source=root / "etc/systemd/system")
    result = analyze_verify([staged / name for name in UNITS])
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_install("--root", str(root), "--no-venv")
    first = tree_digest(root)
    second_run = run_install("--root", str(root), "--no-venv")
    assert tree_digest(root) == first
    assert "wrote " not in second_run.stdout, second_run.stdout


def test_edited_config_is_kept_and_the_new_default_lands_beside_it(tmp_path: Path) -> None:
    src = copy_source(tmp_path / "src")
    root = tmp_path / "root"
    run_install("--root", str(root), "--no-venv", src=src)
    conf = root / "etc/lipsyncd/lipsyncd.yaml"
    edited = conf.read_text().replace("settle_seconds: 5", "settle_seconds: 9")
    conf.write_text(edited)

    # Same version again: the edit stays, and the default is offered beside it.
    out = run_install("--root", str(root), "--no-venv", src=src).stdout
    assert conf.read_text() == edited
    assert (root / "etc/lipsyncd/lipsyncd.yaml.new").read_bytes() == (src / "config/lipsyncd.yaml").read_bytes()
    assert "lipsyncd.yaml.new" in out
    digest = tree_digest(root)
    run_install("--root", str(root), "--no-venv", src=src)
    assert tree_digest(root) == digest

    # An upgrade that changes the default: still never overwritten, .new updated.
    shipped = src / "config/lipsyncd.yaml"
    shipped.write_text(shipped.read_text() + "\n# a newer default\n")
    run_install("--root", str(root), "--no-venv", src=src)
    assert conf.read_text() == edited
    assert (root / "etc/lipsyncd/lipsyncd.yaml.new").read_text() == shipped.read_text()


def test_unedited_config_follows_upgrades(tmp_path: Path) -> None:
    src = copy_source(tmp_path / "src")
    root = tmp_path / "root"
    run_install("--root", str(root), "--no-venv", src=src)
    shipped = src / "config/lipsyncd.yaml"
    shipped.write_text(shipped.read_text() + "\n# a newer default\n")
    run_install("--root", str(root), "--no-venv", src=src)
    assert (root / "etc/lipsyncd/lipsyncd.yaml").read_text() == shipped.read_text()
    assert not (root / "etc/lipsyncd/lipsyncd.yaml.new").exists()


def test_uninstall_keeps_data_and_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_install("--root", str(root), "--no-venv")
    dropped = root / "var/lib/lipsyncd/inbox/alice/talk.wav"
    dropped.parent.mkdir()
    dropped.write_bytes(b"RIFF")
    output = root / "var/lib/lipsyncd/outputs/2026-01-01/alice/talk.mp4"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"mp4")

    out = run_install("--root", str(root), "--no-venv", "--uninstall").stdout
    for name in UNITS:
        assert not (root / "etc/systemd/system" / name).exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/lipsyncd.service").is_symlink()
    assert not (root / "etc/systemd/system/timers.target.wants/lipsyncd-janitor.timer").is_symlink()
    assert not (root / "etc/logrotate.d/lipsyncd").exists()
    assert not (root / "opt/lipsyncd").exists()
    assert dropped.read_bytes() == b"RIFF" and output.read_bytes() == b"mp4"
    assert (root / "etc/lipsyncd/lipsyncd.yaml").exists()
    assert "kept /etc/lipsyncd, /var/lib/lipsyncd" in out


def test_purge_asks_first_then_removes_everything(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_install("--root", str(root), "--no-venv")
    (root / "var/lib/lipsyncd/outputs/keep.mp4").write_bytes(b"x")

    refused = run_install("--root", str(root), "--purge", check=False)
    assert refused.returncode != 0
    assert "--yes" in refused.stderr
    assert (root / "var/lib/lipsyncd/outputs/keep.mp4").exists()

    run_install("--root", str(root), "--purge", "--yes")
    for path in ("etc/lipsyncd", "var/lib/lipsyncd", "var/log/lipsyncd", "opt/lipsyncd",
                 "etc/systemd/system/lipsyncd.service", "etc/logrotate.d/lipsyncd"):
        assert not (root / path).exists(), path


def test_bad_option_is_refused_in_plain_words(tmp_path: Path) -> None:
    result = run_install("--root", str(tmp_path), "--frobnicate", check=False)
    assert result.returncode != 0
    assert "unknown option '--frobnicate'" in result.stderr


# --- the real thing, in a private mount namespace -------------------------------------------------

OVERLAID = ("/etc", "/var", "/opt")


def _can_overlay() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("unshare"):
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot create a mount namespace: {probe.stderr.decode().strip()}"
    return None


def _as(user: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run cmd as user with their groups from /etc/group (real permission checks), umask 022 like a login."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--",
                           "sh", "-c", "umask 022; exec \"$@\"", "sh", *cmd], capture_output=True, text=True,
                          timeout=60)


def _inside_namespace(scratch: str) -> None:
    """Runs in `unshare -m`: overlays over /etc, /var and /opt, then install.sh as on a real server."""
    base = Path(scratch)
    for top in OVERLAID:
        upper, work = base / "upper" / top.strip("/"), base / "work" / top.strip("/")
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={top},upperdir={upper},workdir={work}", top], check=True)
    report: dict[str, object] = {}
    subprocess.run(["useradd", "--create-home", "--home-dir", str(base / "alice-home"), "alice"], check=True)
    subprocess.run(["useradd", "--no-create-home", "mallory"], check=True)

    first = run_install("--no-apt", "--no-venv", "--add-user", "alice")
    report["first_stdout"] = first.stdout
    user, drop = pwd.getpwnam("lipsyncd"), grp.getgrnam("lipsyncd-drop")
    assert user.pw_shell == "/usr/sbin/nologin" and user.pw_uid < 1000, user
    assert "alice" in drop.gr_mem and "lipsyncd" in drop.gr_mem, drop
    conf = Path("/etc/lipsyncd/lipsyncd.yaml").stat()
    assert (conf.st_uid, grp.getgrgid(conf.st_gid).gr_name, stat.S_IMODE(conf.st_mode)) == (0, "lipsyncd", 0o640)
    for folder, mode in DATA_MODES.items():
        st = Path("/var/lib/lipsyncd", folder).stat()
        group = "lipsyncd" if folder == "state" else "lipsyncd-drop"
        assert (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name) == ("lipsyncd", group), folder
        assert stat.S_IMODE(st.st_mode) == mode, folder

    # alice (drop group, umask 022) drops into her folder and into a folder she makes herself;
    # the service user can move both files out (what the claim does); mallory can do nothing.
    inbox = Path("/var/lib/lipsyncd/inbox")
    assert _as("alice", "sh", "-c", f"echo audio > {inbox}/alice/talk.wav").returncode == 0
    assert _as("alice", "mkdir", f"{inbox}/projectx").returncode == 0
    assert _as("alice", "sh", "-c", f"echo video > {inbox}/projectx/talk.mp4").returncode == 0
    assert Path(inbox / "projectx").stat().st_gid == drop.gr_gid, "setgid inbox: new folders get the drop group"
    moved = _as("lipsyncd", "mv", f"{inbox}/alice/talk.wav", "/var/lib/lipsyncd/spool/a.wav")
    assert moved.returncode == 0, moved.stderr
    moved = _as("lipsyncd", "mv", f"{inbox}/projectx/talk.mp4", "/var/lib/lipsyncd/spool/b.mp4")
    report["acl"] = bool(shutil.which("setfacl"))
    if report["acl"]:  # without the acl package, a folder made with umask 022 is not group-writable
        assert moved.returncode == 0, moved.stderr
    assert _as("mallory", "ls", str(inbox)).returncode != 0
    assert _as("mallory", "sh", "-c", f"echo x > {inbox}/x.wav").returncode != 0
    # A result is rendered in spool/<job>/work and renamed into outputs/ (a rename keeps the group), with
    # the service's UMask=0027: alice can read it there, not change or delete it.
    work = Path("/var/lib/lipsyncd/spool/20260101-000000-abcdef/work")
    out_dir = Path("/var/lib/lipsyncd/outputs/2026-01-01/alice")
    made = _as("lipsyncd", "sh", "-c", f"umask 0027; mkdir -p {work} {out_dir} && echo mp4 > {work}/output.mp4 "
                                       f"&& mv {work}/output.mp4 {out_dir}/talk.mp4")
    assert made.returncode == 0, made.stderr
    assert _as("alice", "cat", f"{out_dir}/talk.mp4").stdout == "mp4\n"
    assert _as("alice", "rm", "-f", f"{out_dir}/talk.mp4").returncode != 0
    assert _as("alice", "sh", "-c", f"echo x >> {out_dir}/talk.mp4").returncode != 0
    assert _as("alice", "ls", "/var/lib/lipsyncd/state").returncode != 0
    assert _as("mallory", "ls", "/var/lib/lipsyncd/outputs").returncode != 0

    # Idempotent on the live system too: owners, modes, contents and mtimes unchanged.
    watched = [Path(p) for p in ("/etc/lipsyncd", "/var/lib/lipsyncd", "/var/log/lipsyncd", "/opt/lipsyncd",
                                 "/etc/systemd/system")]
    before = {str(p): tree_digest(p) for p in watched}
    passwd_before = Path("/etc/passwd").read_text() + Path("/etc/group").read_text()
    second = run_install("--no-apt", "--no-venv", "--add-user", "alice")
    report["second_stdout"] = second.stdout
    assert {str(p): tree_digest(p) for p in watched} == before
    assert Path("/etc/passwd").read_text() + Path("/etc/group").read_text() == passwd_before

    run_install("--uninstall")
    assert not Path("/etc/systemd/system/lipsyncd.service").exists()
    assert Path("/var/lib/lipsyncd/spool/a.wav").exists() and Path("/etc/lipsyncd/lipsyncd.yaml").exists()
    pwd.getpwnam("lipsyncd")  # kept: it still owns the data
    run_install("--purge", "--yes")
    assert not Path("/var/lib/lipsyncd").exists() and not Path("/etc/lipsyncd").exists()
    with pytest.raises(KeyError):
        pwd.getpwnam("lipsyncd")
    with pytest.raises(KeyError):
        grp.getgrnam("lipsyncd-drop")
    print(json.dumps(report))


@pytest.mark.root
def test_real_install_on_an_overlaid_system(tmp_path: Path) -> None:
    reason = _can_overlay()
    if reason:
        pytest.skip(f"real install in a mount namespace: {reason}")
    code = f"from tests.test_install import _inside_namespace; _inside_namespace({str(tmp_path)!r})"
    result = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    first = str(report["first_stdout"])
    assert "created system user lipsyncd" in first and "created group lipsyncd-drop" in first
    assert "added alice to lipsyncd-drop" in first
    # No systemd as PID 1 here: it says exactly what it would enable.
    if not Path("/run/systemd/system").is_dir():
        assert "systemctl daemon-reload && systemctl enable --now lipsyncd.service lipsyncd-janitor.timer" in first
    second = str(report["second_stdout"])
    assert "created" not in second and "wrote " not in second and "added" not in second, second
    # The machine itself was not touched.
    with pytest.raises(KeyError):
        pwd.getpwnam("lipsyncd")
    assert not Path("/etc/systemd/system/lipsyncd.service").exists()
