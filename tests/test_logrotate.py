"""logrotate/lipsyncd, rotated by the real logrotate while a real process logs through daemon.log.setup().

The shipped file is used as it is, with only its log path pointed at a test folder and its user names
(lipsyncd, which does not exist here) replaced by the user running the test.
"""

from __future__ import annotations

import grp
import gzip
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "logrotate/lipsyncd"
SHIPPED_PATH = "/var/log/lipsyncd/lipsyncd.log"
LINES = 6000

pytestmark = pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")

# A real writer: the daemon's logging setup with logging.file, one numbered line every ~0.5 ms.
WRITER = """
import logging, sys, time
from pathlib import Path
from daemon import log
from daemon.config import LoggingConfig
log.setup(LoggingConfig(level="INFO", file=Path(sys.argv[1])), service=False)
logger = logging.getLogger("lipsyncd.test")
for n in range(int(sys.argv[2])):
    logger.info("line %06d", n, extra=log.fields(job_id="20260101-000000-abcdef", user="alice", stage="render"))
    time.sleep(0.0005)
"""


def test_config_rotates_daily_compressed_bounded_with_create() -> None:
    text = SHIPPED.read_text()
    assert f"{SHIPPED_PATH} {{" in text
    directives = {line.split()[0] for line in text.splitlines() if line.startswith("    ")}
    assert {"daily", "compress", "delaycompress", "missingok", "notifempty", "create", "rotate"} <= directives
    assert "copytruncate" not in directives, "copytruncate loses the lines written between copy and truncate"


def staged_config(tmp_path: Path, log_file: Path) -> Path:
    me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    text = SHIPPED.read_text().replace(SHIPPED_PATH, str(log_file))
    text = re.sub(r"\blipsyncd lipsyncd\b", f"{me} {group}", text)
    conf = tmp_path / "lipsyncd.logrotate"
    conf.write_text(text)
    return conf


def rotate(conf: Path, state: Path) -> None:
    result = subprocess.run(["logrotate", "-s", str(state), "-f", str(conf)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def read_all(folder: Path) -> list[str]:
    lines: list[str] = []
    for path in folder.iterdir():
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                lines += fh.read().splitlines()
        elif path.name.startswith("lipsyncd.log"):
            lines += path.read_text(encoding="utf-8").splitlines()
    return lines


def test_no_line_is_lost_while_rotating_under_load(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o750)
    log_file = logs / "lipsyncd.log"
    conf = staged_config(tmp_path, log_file)
    state = tmp_path / "logrotate.state"
    keep = int(re.search(r"^\s*rotate (\d+)", SHIPPED.read_text(), re.M).group(1))

    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log_file), str(LINES)], cwd=REPO,
                              stderr=subprocess.DEVNULL)
    rotations = 0
    try:
        while writer.poll() is None:
            time.sleep(0.2)
            if rotations < keep - 2 and log_file.exists() and log_file.stat().st_size:
                rotate(conf, state)
                rotations += 1
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait(timeout=30)
    assert writer.returncode == 0
    assert rotations >= 5, f"only {rotations} rotations while the writer ran"

    numbers = [int(m.group(1)) for line in read_all(logs) if (m := re.search(r"line (\d{6})", line))]
    assert sorted(numbers) == list(range(LINES)), f"lost {sorted(set(range(LINES)) - set(numbers))[:20]}..."
    # The plain-file format carries the job's context.
    assert "[20260101-000000-abcdef alice render]" in log_file.read_text() or any(
        "[20260101-000000-abcdef alice render]" in line for line in read_all(logs))
    # Rotated files: the newest is kept plain (delaycompress), every older one is real gzip.
    rotated = sorted(p.name for p in logs.iterdir() if p.name != "lipsyncd.log")
    assert "lipsyncd.log.1" in rotated
    gz = [name for name in rotated if name.endswith(".gz")]
    assert gz and len(gz) == len(rotated) - 1, rotated
    for name in gz:
        with gzip.open(logs / name) as fh:
            fh.read()
    # The new file is created with the configured mode.
    assert oct(log_file.stat().st_mode & 0o777) == oct(0o640)


def test_rotated_files_stay_bounded(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o750)
    log_file = logs / "lipsyncd.log"
    conf = staged_config(tmp_path, log_file)
    state = tmp_path / "logrotate.state"
    keep = int(re.search(r"^\s*rotate (\d+)", SHIPPED.read_text(), re.M).group(1))
    for n in range(keep + 5):
        log = subprocess.run([sys.executable, "-c", WRITER, str(log_file), "3"], cwd=REPO,
                             stderr=subprocess.DEVNULL, timeout=60)
        assert log.returncode == 0
        rotate(conf, state)
        assert len([p for p in logs.iterdir() if p.name != "lipsyncd.log"]) <= keep, n
    assert len([p for p in logs.iterdir() if p.name != "lipsyncd.log"]) == keep
    # notifempty: an empty log is not rotated.
    log_file.write_text("")
    before = sorted(p.name for p in logs.iterdir())
    subprocess.run(["logrotate", "-s", str(state), str(conf)], check=True, timeout=60)
    assert sorted(p.name for p in logs.iterdir()) == before
