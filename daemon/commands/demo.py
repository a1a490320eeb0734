"""`lipsyncd demo`: make a sample pair and take it through the whole daemon, then print the output.

Everything real: a config in a fresh folder, `lipsyncd run` as a child process, the pair copied into
its inbox the way a person would (video first, audio renamed into place), and the finished MP4 found
under outputs/YYYY-MM-DD/demo/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from daemon.commands import samples

TIMEOUT_SECONDS = 900.0
SCORE_TIMEOUT_SECONDS = 120.0  # after the video: the sync score of a long output takes a while
SIZE = (480, 480)
VIDEO_SECONDS = 4.0  # shorter than the speech on purpose: the video plays back and forth
MUX_ARGV = ["ffmpeg", "-y", "-v", "error", "-i", "{video}", "-i", "{audio}", "-map", "0:v", "-map", "1:a",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", "{output}"]


def main(*, engine: str = "builtin", workdir: Path | None = None) -> int:
    root = workdir or Path(tempfile.mkdtemp(prefix="lipsyncd-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"lipsyncd demo in {root}")
    config = _write_config(root, engine)

    print("making a sample pair: a real face photo panned into a clip, and espeak-ng speech ...")
    sample = root / "sample"
    sample.mkdir(exist_ok=True)
    try:
        audio = samples.speech(sample / "hello.wav")
        video = samples.face_clip(sample / "hello.mp4", seconds=VIDEO_SECONDS, size=SIZE)
    except samples.SampleError as exc:
        print(f"lipsyncd demo: {exc}", file=sys.stderr)
        return 2

    log_path = root / "daemon.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    print(f"starting the daemon: lipsyncd --config {config} run   (log: {log_path})")
    with open(log_path, "wb") as log_file:
        daemon = subprocess.Popen([sys.executable, "-m", "daemon.cli", "--config", str(config), "run"],
                                  stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        if not _wait(lambda: "ready: taking work" in _read(log_path), daemon, 300):
            return _give_up("the daemon did not become ready", log_path)
        inbox = root / "inbox" / "demo"
        inbox.mkdir(parents=True, exist_ok=True)
        for src in (video, audio):  # like `lipsyncd submit`: copy under a temp name, then rename
            temp = inbox / f".{src.name}.part"
            temp.write_bytes(src.read_bytes())
            temp.rename(inbox / src.name)
        print(f"dropped {audio.name} + {video.name} into {inbox}; rendering with the {engine} engine ...")
        started = time.monotonic()
        found = _wait(lambda: _result(root), daemon, TIMEOUT_SECONDS, progress=lambda: _progress(root))
        print()
        if not found:
            return _give_up("no output appeared", log_path)
        kind, path = found
        if kind == "failed":
            print((path / "error.txt").read_text(encoding="utf-8"), file=sys.stderr)
            return _give_up(f"the job failed: {path}", log_path)
        print(f"done in {time.monotonic() - started:.1f} s")
        # The video is published first; its record gains the sync score (and the poster) a moment later.
        record = _wait(lambda: _scored(path), daemon, SCORE_TIMEOUT_SECONDS) or _record(path)
        score = record.get("sync_score") or {}
        if "error" in score:
            print(f"sync score: not available ({score['error']})")
        elif score:
            print(f"sync score: correlation {score.get('correlation', 0):.2f} at offset {score.get('offset_frames')} "
                  f"frame(s) (confidence {score.get('confidence', 0):.2f})")
        print(f"record: {path.with_suffix('.json')}")
        print(path)
        return 0
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if workdir is None:
            print(f"(the demo folder {root} is kept for you to look at; delete it when done)")


def _write_config(root: Path, engine: str) -> Path:
    paths = {name: str(root / name) for name in ("inbox", "outputs", "failed", "spool", "state", "avatars")}
    data = {"paths": paths, "ingest": {"settle_seconds": 1}, "pipeline": {"engine": engine, "device": "auto"},
            "logging": {"level": "INFO"}}
    if engine == "command":
        data["pipeline"]["command"] = {"argv": MUX_ARGV}
    path = root / "lipsyncd.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8", "replace")
    except OSError:
        return ""


def _wait(predicate, daemon: subprocess.Popen[bytes], timeout: float, progress=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if daemon.poll() is not None:
            return None
        if progress is not None:
            progress()
        time.sleep(0.5)
    return None


def _record(output: Path) -> dict:
    try:
        return json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _scored(output: Path) -> dict | None:
    """The output's record once nothing is pending in it (sync score and poster added)."""
    record = _record(output)
    return record if record and not record.get("pending") else None


def _result(root: Path) -> tuple[str, Path] | None:
    for path in (root / "outputs").rglob("*.mp4"):
        if not path.name.startswith(".") and path.with_suffix(".json").exists():
            return "output", path
    for error in (root / "failed").rglob("error.txt"):
        return "failed", error.parent
    return None


def _progress(root: Path) -> None:
    for lease in (root / "spool").glob("*/lease"):
        try:
            data = json.loads(lease.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if sys.stdout.isatty():
            print(f"\r  {data.get('stage', '?'):>10} {100 * float(data.get('progress') or 0):5.1f}%", end="",
                  flush=True)


def _give_up(why: str, log_path: Path) -> int:
    print(f"lipsyncd demo: {why}. Last lines of the daemon's log ({log_path}):", file=sys.stderr)
    for line in _read(log_path).splitlines()[-25:]:
        print(f"  {line}", file=sys.stderr)
    return 1
