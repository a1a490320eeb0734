"""The daemon's own share of a job, apart from the engine's time: builtin engine, tiny clips, 500 pairs.

Pairs of a tiny face clip (1 s, 320x320, the astronaut panned) and 1 s of espeak-ng speech are claimed into
the spool with the calls the daemon's ingest makes (daemon.inbox.claim.claim, then JobQueue.put), each pair
timed; then one `lipsyncd worker` (builtin engine, CPU) works through them back to back. Each record says
when its attempt started and how long verify, engine, score and poster took; its .json's mtime says when
publishing ended (the record is written last). Per job:

  worker's own share = from the previous job's record written to this one's, less verify, engine, score and
                       poster: taking the job off the queue, the lease, job.json, the work folder, keeping the
                       render, building the record, publishing, removing the job folder
  daemon share       = claim + queue put + the worker's own share            target <= 20 ms per job

Baseline, measured in the same run: the engine's own time per job (the ratio is printed). verify (sha256 of the
inputs and the ffprobe limits check), the sync score and the poster are printed beside it: they are checks of
the media, not the daemon's bookkeeping. The first job is left out (the worker's first engine call loads it).

    .venv/bin/python bench/jobs.py [--pairs 500] [--seconds 1] [--on disk|tmpfs]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon import config as configmod  # noqa: E402
from daemon.inbox.claim import claim  # noqa: E402
from daemon.inbox.pairing import Claim  # noqa: E402
from daemon.jobs.queue import JobQueue  # noqa: E402
from tests import media  # noqa: E402
from tests.daemon_harness import terminate, write_config  # noqa: E402

TARGET_MS = 20.0
PLACES = {"disk": "/var/tmp", "tmpfs": "/dev/shm"}
STAGES = ("verify", "engine", "score", "poster")  # the record's timings that are not the daemon's bookkeeping


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def make_pair(folder: Path, seconds: float) -> tuple[Path, Path]:
    speech = media.speech(folder / "speech.wav")
    audio = media.convert(speech, folder / "a.wav", "-t", f"{seconds:g}")
    video = media.face_clip(folder / "v.mp4", seconds=seconds)
    return audio, video


def claim_all(root: Path, config: configmod.Config, audio: Path, video: Path, pairs: int) -> list[float]:
    """Drop and claim every pair, queueing each; returns the seconds claim + put took per pair."""
    inbox = root / "inbox" / "bench"
    inbox.mkdir(parents=True, exist_ok=True)
    queue = JobQueue(config)
    took = []
    try:
        for i in range(pairs):
            stem = f"p{i:04d}"
            shutil.copy(video, inbox / f"{stem}.mp4")
            shutil.copy(audio, inbox / f"{stem}.wav")
            t = time.perf_counter()
            job = claim(config.paths.spool, inbox, "bench", "bench", Claim(stem=stem, audio=f"{stem}.wav",
                                                                             video=f"{stem}.mp4"))
            queue.put(job.id)
            took.append(time.perf_counter() - t)
    finally:
        queue.close()
    return took


def run_worker(root: Path, config_path: Path, pairs: int) -> float:
    """One `lipsyncd worker` until every pair is published; returns the wall seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LIPSYNCD_CONFIG")}
    with open(root / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "--config", str(config_path), "worker"],
                                cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
    started = time.monotonic()
    try:
        while len(list((root / "outputs").rglob("*.json"))) < pairs:
            if proc.poll() is not None:
                raise SystemExit(f"the worker exited ({proc.returncode}): {(root / 'worker.log').read_text()[-3000:]}")
            if list((root / "failed").rglob("error.txt")):
                raise SystemExit(f"a job failed: {next((root / 'failed').rglob('error.txt')).read_text()[:2000]}")
            time.sleep(0.2)
        return time.monotonic() - started
    finally:
        terminate(proc, timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each clip")
    parser.add_argument("--on", default="disk", choices=sorted(PLACES),
                        help="where the spool and outputs live: disk (/var/tmp, each fsync paid) or tmpfs "
                             "(/dev/shm: fsync costs nothing, so what is left is the daemon's own work)")
    args = parser.parse_args()
    print(f"[{args.on}]")
    with tempfile.TemporaryDirectory(prefix="lipsyncd-bench-", dir=PLACES[args.on]) as tmp:
        root = Path(tmp)
        audio, video = make_pair(root, args.seconds)
        config_path = write_config(root / "d", pipeline={"engine": "builtin", "device": "cpu"},
                                   queue={"lease_seconds": 30, "stop_timeout_seconds": 20},
                                   logging={"level": "INFO"})
        config = configmod.load(config_path)
        claims = claim_all(root / "d", config, audio, video, args.pairs)
        wall = run_worker(root / "d", config_path, args.pairs)
        report(root / "d", claims, wall)
    return 0


def report(root: Path, claims: list[float], wall: float) -> None:
    jobs = []
    for path in (root / "outputs").rglob("*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        jobs.append((record["started"], path.stat().st_mtime, record["timings"]))
    jobs.sort(key=lambda job: job[0])
    own = []
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    for (_, before, _), (started, written, timings) in zip(jobs, jobs[1:], strict=False):
        if started < before:
            raise SystemExit("jobs overlapped: one worker should take them one after the other")
        spent = sum(timings.get(name, 0.0) for name in STAGES)
        own.append(written - before - spent)
        for name in STAGES:
            stages[name].append(timings.get(name, 0.0))
    n = len(jobs)
    engine = statistics.mean(stages["engine"])
    print(f"{n} pairs ({', '.join(f'{k} {statistics.mean(v) * 1000:.0f} ms' for k, v in stages.items())} per job); "
          f"one worker took {wall:.1f} s ({n / wall:.2f} jobs/s)")

    def line(name: str, values: list[float]) -> str:
        return (f"{name}: mean {statistics.mean(values) * 1000:.1f} ms, p50 {percentile(values, 0.5) * 1000:.1f} ms, "
                f"p95 {percentile(values, 0.95) * 1000:.1f} ms per job")

    print("  " + line("claim + queue put (the watcher's calls)", claims))
    print("  " + line("worker's own share (queue take, lease, job.json, record, publish, clean-up)", own))
    share = statistics.mean(claims) + statistics.mean(own)
    print(f"  daemon share: {share * 1000:.1f} ms per job; baseline engine {engine * 1000:.0f} ms per job: ratio "
          f"{share / engine:.3f} (target <= {TARGET_MS:g} ms: {'met' if share * 1000 <= TARGET_MS else 'NOT met'})")


if __name__ == "__main__":
    sys.exit(main())
