"""`lipsyncd doctor`: check everything a working install needs, and say how to fix what is missing.

Each check prints OK, WARN or FAIL with one line of explanation; the exit status is 1 when anything
failed, so it can gate a deployment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from daemon.config import PRUNED, Config, layout_problems

INOTIFY = Path("/proc/sys/fs/inotify")
MIN_FREE_PERCENT = 10.0


class Report:
    def __init__(self) -> None:
        self.failed = 0
        self.warned = 0

    def ok(self, text: str) -> None:
        print(f"OK    {text}")

    def warn(self, text: str) -> None:
        self.warned += 1
        print(f"WARN  {text}")

    def fail(self, text: str) -> None:
        self.failed += 1
        print(f"FAIL  {text}")


def check_tools(report: Report) -> None:
    for tool in ("ffmpeg", "ffprobe"):
        path = shutil.which(tool)
        if path is None:
            report.fail(f"{tool} is not installed: apt-get install ffmpeg")
            continue
        done = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30)
        version = done.stdout.splitlines()[0] if done.stdout else "unknown version"
        report.ok(f"{tool}: {version}")
        if tool == "ffmpeg":
            encoders = subprocess.run([path, "-hide_banner", "-encoders"], capture_output=True, text=True,
                                      timeout=30).stdout
            for needed in ("libx264", "aac"):
                if needed not in encoders:
                    report.fail(f"ffmpeg has no {needed} encoder: install Debian's ffmpeg (not a minimal build)")


def check_layout(report: Report, config: Config) -> None:
    """The same layout rule `lipsyncd run` and the janitor apply: what it refuses is a FAIL here."""
    problems = layout_problems(config)
    for problem in problems:
        report.fail(f"layout: {problem} (lipsyncd run and the janitor refuse this layout)")
    if not problems:
        report.ok("layout: each data folder has its own place; outputs and failed are real folders")


def check_folders(report: Report, config: Config) -> None:
    devices = {}
    for name, folder in config.paths.folders().items():
        if not folder.exists():
            report.fail(f"paths.{name}: {folder} does not exist (lipsyncd run creates it, or run install.sh)")
            continue
        if folder.is_symlink() and name not in PRUNED:  # a symlinked outputs/failed: check_layout fails it
            report.warn(f"paths.{name}: {folder} is a symbolic link; point the config at the real folder")
        writable = os.access(folder, os.W_OK | os.X_OK)
        (report.ok if writable else report.fail)(
            f"paths.{name}: {folder} " + ("writable" if writable else f"is not writable by uid {os.getuid()}"))
        devices[name] = folder.stat().st_dev
    if "inbox" in devices and "spool" in devices and devices["inbox"] != devices["spool"]:
        report.warn("paths.inbox and paths.spool are on different filesystems: claims copy instead of rename "
                    "(slower, and a crash mid-copy needs the recovery at start-up). Put them on one filesystem.")
    state = config.paths.state
    if state.exists():
        fstype = _fstype(state)
        if fstype in ("nfs", "nfs4", "cifs", "smb3", "fuse.sshfs"):
            report.fail(f"paths.state is on {fstype}: the SQLite queue and alert state must be on a local disk")


def check_access(report: Report, config: Config) -> None:
    """access.mode private needs POSIX ACLs on every data folder people reach, and the admin group."""
    from daemon import access

    rules = access.Access.of(config)
    if not rules.private:
        report.ok("access: shared (the drop group reads every user's results)")
        return
    folders = config.paths.folders()
    try:
        rules.ids(folders["outputs"])
        access.check({key: folders[key] for key in (*access.PEOPLE_FOLDERS, "spool") if folders[key].is_dir()})
    except access.AccessError as exc:
        report.fail(f"access: private mode cannot work here: {exc} (lipsyncd run refuses to start)")
        return
    except PermissionError as exc:
        report.warn(f"access: private; cannot try ACLs as uid {os.getuid()} ({exc}): run doctor as root or as "
                    "the service user")
        return
    report.ok(f"access: private; ACLs work on the data folders; admin group {rules.admin_group}")


def _fstype(path: Path) -> str:
    best, kind = "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def check_disk(report: Report, config: Config) -> None:
    from daemon.disk import filesystems

    disk = config.janitor.disk
    for fs in filesystems(config.paths.folders()):
        text = f"disk {fs.mount}: {fs.percent:.1f}% used ({', '.join(fs.folders)})"
        if fs.percent >= disk.critical_percent:
            report.fail(text + f" — at or above janitor.disk.critical_percent ({disk.critical_percent:g}%)")
        elif fs.percent >= disk.warn_percent:
            report.warn(text + f" — at or above janitor.disk.warn_percent ({disk.warn_percent:g}%)")
        else:
            report.ok(text)


def check_inotify(report: Report, config: Config) -> None:
    if config.ingest.poll:
        report.ok("ingest.poll is true: the inbox is polled (right for NFS/SMB), inotify is not used")
        return
    try:
        watches = int((INOTIFY / "max_user_watches").read_text())
        instances = int((INOTIFY / "max_user_instances").read_text())
    except (OSError, ValueError):
        report.warn("cannot read inotify limits from /proc/sys/fs/inotify; the watcher falls back to polling if needed")
        return
    folders = 1 + sum(1 for e in _scandir(config.paths.inbox) if e.is_dir(follow_symlinks=False))
    if watches < folders * 4 or watches < 8192:
        report.warn(f"fs.inotify.max_user_watches is {watches}; raise it: sysctl -w fs.inotify.max_user_watches=524288")
    else:
        report.ok(f"inotify: {watches} watches allowed, the inbox needs about {folders}")
    if instances < 16:
        report.warn(f"fs.inotify.max_user_instances is {instances}; raise it: "
                    "sysctl -w fs.inotify.max_user_instances=1024")


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


def check_devices(report: Report, config: Config) -> None:
    try:
        import torch
    except ImportError:
        report.fail("torch is not installed in this environment: pip install torch (the CPU or CUDA build)")
        return
    cuda = torch.cuda.is_available()
    if cuda:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        report.ok(f"torch {torch.__version__}, CUDA GPUs: {', '.join(names)}")
    else:
        report.ok(f"torch {torch.__version__}, no CUDA GPU: jobs run on the CPU")
    from pipeline.devices import resolve

    for device in config.pipeline.devices:
        try:
            report.ok(f"pipeline.device {device} -> {resolve(device)}")
        except ValueError as exc:
            report.fail(f"pipeline.device: {exc}")


def check_engines(report: Report, config: Config) -> None:
    from pipeline.engines import EngineUnavailable, get_engine

    default = config.pipeline.engine
    for name in dict.fromkeys([default, *config.pipeline.allowed_engines]):
        try:
            get_engine(name, config.pipeline.settings).check()
        except EngineUnavailable as exc:
            if name == default:
                report.fail(f"engine {name} (pipeline.engine): {exc}")
            else:
                report.warn(f"engine {name} (allowed for manifests) is not usable: {exc}")
        else:
            report.ok(f"engine {name}" + (" (default)" if name == default else ""))


def check_queue(report: Report, config: Config) -> None:
    from daemon.jobs.queue import JobQueue

    try:
        queue = JobQueue(config)
        depth = queue.depth()
        queue.close()
    except Exception as exc:  # noqa: BLE001
        report.fail(f"queue: {exc}")
        return
    report.ok(f"queue {queue.where}: {depth} waiting")


def check_notify(report: Report, config: Config) -> None:
    from daemon.notify.send import validate

    count = len(config.notify.urls) + (1 if config.notify.apprise_config else 0)
    if count == 0:
        report.warn("notify: no notification targets; disk alerts and job failures are only logged "
                    "(set notify.urls, e.g. dingtalk://SECRET@TOKEN or mailtos://...)")
        return
    problems = validate(config)
    for problem in problems:
        report.fail(f"notify: {problem}")
    if not problems:
        report.ok(f"notify: {count} target(s) accepted")


def check_logging(report: Report, config: Config) -> None:
    from daemon.log import journal_available

    if journal_available():
        report.ok("journald: logs go to the journal (journalctl -u lipsyncd)")
    else:
        report.warn("journald not available (no /run/systemd/journal/socket or systemd-python): logs go to stderr")
    path = config.logging.file
    if path:
        (report.ok if os.access(path.parent, os.W_OK) else report.fail)(f"logging.file {path}")


def check_archive(report: Report, config: Config) -> None:
    """janitor.archive: the NAS folder is mounted and writable, or the bucket answers with the credentials."""
    url = config.janitor.archive.url
    if not url:
        return
    from daemon.janitor import archive

    try:
        target = archive.make_target(config.janitor.archive)
    except ImportError:
        report.fail("archive: boto3 is not installed, so nothing can go to S3 (pip install 'lipsyncd[s3]')")
        return
    try:
        report.ok(f"archive {url}: {target.check()}")
    except archive.ArchiveError as exc:
        report.fail(f"archive {url}: {exc}; outputs are kept locally until this is fixed")
    finally:
        target.close()


CHECKS: list[Callable[[Report, Config], None]] = [
    check_layout, check_folders, check_access, check_disk, check_inotify, check_queue, check_notify, check_logging,
    check_devices, check_engines, check_archive,
]


def main(config: Config) -> int:
    report = Report()
    print(f"lipsyncd doctor: {config.source or 'built-in defaults'}")
    check_tools(report)
    for check in CHECKS:
        try:
            check(report, config)
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            report.fail(f"{check.__name__[6:]}: the check itself failed: {type(exc).__name__}: {exc}")
    print(f"\n{report.failed} problem(s), {report.warned} warning(s)")
    return 1 if report.failed else 0
