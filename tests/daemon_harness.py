"""Run the real `lipsyncd run` daemon in a temp folder and wait for what it does (shared by daemon tests)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
# The command engine muxing the audio onto the video: a real subprocess, fast.
MUX_ARGV = ["ffmpeg", "-y", "-v", "error", "-i", "{video}", "-i", "{audio}", "-map", "0:v", "-map", "1:a",
            "-c:v", "copy", "-c:a", "aac", "-shortest", "{output}"]


def slow_mux_argv(seconds: float) -> list[str]:
    """The mux command after a pause, for jobs long enough to be interrupted."""
    return ["sh", "-c", f'sleep {seconds} && exec "$0" "$@"', *MUX_ARGV]


def write_config(root: Path, **sections: dict[str, Any]) -> Path:
    """A config file whose data folders all live under *root*; *sections* override keys per section."""
    data: dict[str, Any] = {
        "paths": {name: str(root / name) for name in ("inbox", "outputs", "failed", "spool", "state", "avatars")},
        "ingest": {"settle_seconds": 1, "rescan_seconds": 30},
        "pipeline": {"engine": "command", "device": "cpu", "command": {"argv": MUX_ARGV, "timeout_seconds": 120}},
        "queue": {"lease_seconds": 3, "stop_timeout_seconds": 20},
        "logging": {"level": "DEBUG"},
    }
    for section, values in sections.items():
        merged = data.setdefault(section, {})
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    for name in data["paths"]:
        Path(data["paths"][name]).mkdir(parents=True, exist_ok=True)
    path = root / "lipsyncd.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def terminate(proc: subprocess.Popen[Any], timeout: float = 60, group: bool = True) -> int:
    """Stop *proc* as systemd would: SIGTERM, then after *timeout* SIGKILL (its whole process group when
    *group*, for a daemon started in a session of its own). Its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait()
    return proc.returncode


class Daemon:
    """`lipsyncd --config CONFIG run` as a child process, its output captured to a log file."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.root = config.parent
        self.log_path = self.root / f"daemon-{time.monotonic_ns()}.log"
        inherited = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        self.env = {**inherited, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> Daemon:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - stays open while the daemon runs
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "--config", str(self.config), "run"],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                                     start_new_session=True)
        if wait_ready:
            wait_for(lambda: "ready: taking work" in self.log() or self.proc.poll() is not None, 60,
                     "the daemon to report ready")
            assert self.proc.poll() is None, f"daemon exited early:\n{self.log()}"
        return self

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        if self.proc is None:
            return 0
        terminate(self.proc, timeout)
        self._log.close()
        return self.proc.returncode

    def kill_all(self) -> None:
        """SIGKILL the daemon and its workers (its whole session)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def outputs(root: Path) -> list[Path]:
    """Published outputs: the MP4 and its record (written last) are both there."""
    return sorted(p for p in (root / "outputs").rglob("*.mp4")
                  if not p.name.startswith(".") and p.with_suffix(".json").exists())


def finished(root: Path) -> list[Path]:
    """Published outputs whose record is complete: sync score and poster added (published first, then these)."""
    done = []
    for out in outputs(root):
        with contextlib.suppress(OSError, ValueError):
            if not json.loads(out.with_suffix(".json").read_text(encoding="utf-8")).get("pending"):
                done.append(out)
    return done


def failures(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "failed").rglob("error.txt"))


def records(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.with_suffix(".json").read_text(encoding="utf-8")) for p in outputs(root)]


def drop_pair(folder: Path, stem: str, audio: Path, video: Path) -> None:
    """Copy a pair in the way people do: cp of the video, then of the audio."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", str(video), str(folder / f"{stem}{video.suffix}")], check=True)
    subprocess.run(["cp", str(audio), str(folder / f"{stem}{audio.suffix}")], check=True)
