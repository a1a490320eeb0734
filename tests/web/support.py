"""Shared by the web tests: a data tree with people's results, the app, and a running `lipsyncd web`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.daemon_harness import ROOT, terminate, wait_for, write_config

DATE = "2026-11-30"


def add_output(root: Path, user: str, stem: str, *, date: str = DATE, video: bytes = b"\x00" * 4096,
               record: dict[str, Any] | None = None, age_days: float = 0.0) -> Path:
    """outputs/<date>/<user>/<stem>.mp4 + .json + .jpg, as a worker publishes them; the video's path."""
    folder = root / "outputs" / date / user
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.mp4").write_bytes(video)
    (folder / f"{stem}.jpg").write_bytes(b"\xff\xd8poster")
    data = {"name": stem, "user": user, "engine": "command", "frames": 50, "fps": 25.0,
            "sync_score": {"correlation": 0.5, "verdict": "in sync", "offset_ms": 0.0}, **(record or {})}
    (folder / f"{stem}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    if age_days:
        then = time.time() - age_days * 86400
        for suffix in ("mp4", "jpg", "json"):
            os.utime(folder / f"{stem}.{suffix}", (then, then))
    return folder / f"{stem}.mp4"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebServer:
    """`lipsyncd --config CONFIG web` as a child process on a free port, stopped by PID."""

    def __init__(self, root: Path, sections: dict[str, dict[str, Any]] | None = None, **web: Any) -> None:
        self.port = free_port()
        self.config = write_config(root, web={"listen": f"127.0.0.1:{self.port}", **web}, **(sections or {}))
        self.log_path = root / f"web-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WebServer:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the server runs
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "--config", str(self.config), "web"],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                     start_new_session=True)
        wait_for(self._answers, 30, f"lipsyncd web on port {self.port}: {self.log()}")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log()
        try:
            urllib.request.urlopen(self.url + "/static/app.css", timeout=2).read()
        except OSError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """gunicorn's worker: the child of the arbiter (the process we started)."""
        assert self.proc is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout=20)
            self._log.close()
            self.proc = None
