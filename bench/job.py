"""One job end to end against the ffmpeg floor: a warm daemon's drop-to-output, and a cold `lipsyncd render`.

Baseline ("ffmpeg floor", as bench/pipeline.py): ffmpeg alone decoding the same clip and re-encoding it with
the same audio and encoder settings, in the same run, alternating with the measured side; each keeps its best.

1. Warm daemon (`lipsyncd run`, builtin engine on the CPU, its worker up and past a first job): from the
   rename that completes a pair in the inbox to the .mp4 appearing under outputs/ (published: the video and
   its complete record), minus the settle time the inbox waits for on purpose (a renamed file needs
   min(ingest.settle_seconds, daemon.inbox.settle.FAST_SECONDS) of quiet). Target: <= 1.5x the floor.
   Also printed: when the record gained its sync score and poster (after publishing; not part of the target).
2. Cold `lipsyncd render AUDIO VIDEO -o OUT` in a new process, process start and imports included.
   Target: <= 2.0x the floor.

    .venv/bin/python bench/job.py [--size 720] [--seconds 10] [--rounds 3] [--settle 1]
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

from bench.pipeline import OUT, face_clip, ffmpeg_floor, speech_of  # noqa: E402
from daemon.inbox.settle import FAST_SECONDS  # noqa: E402
from tests.daemon_harness import Daemon, write_config  # noqa: E402

POLL_SECONDS = 0.005


def drop(inbox: Path, stem: str, audio: Path, video: Path) -> float:
    """Copy the pair in under temp names, rename the video, then the audio; the time of the last rename."""
    inbox.mkdir(parents=True, exist_ok=True)
    temps = []
    for src in (video, audio):
        temp = inbox / f".{stem}{src.suffix}.part"
        shutil.copyfile(src, temp)
        temps.append((temp, inbox / f"{stem}{src.suffix}"))
    for temp, final in temps:
        os.rename(temp, final)
    return time.monotonic()


def wait_published(folder: Path, stem: str, timeout: float = 600) -> tuple[float, Path]:
    """Poll for <stem>.mp4 with its record (the daemon publishes both before anything else)."""
    target = folder / f"{stem}.mp4"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.exists() and target.with_suffix(".json").exists():
            return time.monotonic(), target
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"no output {target} after {timeout:g} s; see the daemon log under {folder.parents[3]}")


def worker_cpu(root: Path) -> float:
    """CPU seconds of the worker process and of its finished children (the engine's ffmpeg processes)."""
    [beat] = (root / "spool" / ".workers").glob("*.json")
    pid = beat.stem.rsplit("-", 1)[1]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def wait_scored(output: Path, timeout: float = 120) -> tuple[float, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        if record and not record.get("pending"):
            return time.monotonic(), record
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"the record of {output} did not gain its sync score within {timeout:g} s")


def warm_daemon(audio: Path, video: Path, rounds: int, settle: float, work: Path) -> tuple[list[dict], list[dict]]:
    root = work / "srv"
    config = write_config(root, ingest={"settle_seconds": settle}, logging={"level": "INFO"},
                          pipeline={"engine": "builtin", "device": "cpu"})
    quiet = min(settle, FAST_SECONDS)  # what the inbox waits for on purpose after a rename
    outputs = root / "outputs" / time.strftime("%Y-%m-%d") / "bench"
    floors, jobs = [], []
    with Daemon(config) as daemon:
        for index in range(rounds + 1):  # the first job warms the worker up (first calls, caches)
            floor = ffmpeg_floor(video, audio, work / "floor.mp4")
            cpu = worker_cpu(root)
            dropped = drop(root / "inbox" / "bench", f"job{index}", audio, video)
            published, output = wait_published(outputs, f"job{index}")
            cpu = worker_cpu(root) - cpu
            scored, record = wait_scored(output)
            if index == 0:
                continue
            floors.append(floor)
            jobs.append({"wall": published - dropped - quiet, "raw": published - dropped, "cpu": cpu,
                         "scored": scored - dropped - quiet, "timings": record["timings"],
                         "score": record["sync_score"]})
        if "Traceback" in daemon.log():
            print(daemon.log()[-3000:])
    return floors, jobs


def cold_render(audio: Path, video: Path, rounds: int, work: Path) -> tuple[list[dict], list[dict]]:
    floors, renders = [], []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for index in range(rounds):
        floors.append(ffmpeg_floor(video, audio, work / "floor.mp4"))
        out = work / f"cold{index}.mp4"
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "daemon.cli", "render", str(audio), str(video), "-o", str(out),
                               "--device", "cpu", "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"lipsyncd render failed:\n{done.stdout}{done.stderr}")
        renders.append({"wall": wall, "said": done.stdout.strip().splitlines()[-1]})
    return floors, renders


def runs(results: list[dict]) -> str:
    return " ".join(f"{r['wall']:.2f}" for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=720, help="clip height (default 720)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="measured jobs and cold renders (default 3)")
    parser.add_argument("--settle", type=float, default=1.0, help="ingest.settle_seconds (default 1)")
    parser.add_argument("--skip", choices=("warm", "cold"), help="leave one of the two out")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    clip, sound = face_clip(args.size, args.seconds, OUT), speech_of(args.seconds, OUT)
    print(f"one job end to end: builtin engine on the CPU, {args.size}p {args.seconds:g} s pair, "
          f"{os.cpu_count()} cores, {args.rounds} rounds alternating with the floor (best of each)")
    summary: dict = {"size": args.size, "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="lipsyncd-bench-job-") as temp:
        work = Path(temp)
        if args.skip != "warm":
            floors, jobs = warm_daemon(sound, clip, args.rounds, args.settle, work)
            floor, best = min(f["wall"] for f in floors), min(jobs, key=lambda j: j["wall"])
            print(f"  ffmpeg floor          {floor:6.2f} s (runs {runs(floors)})")
            print(f"  warm daemon, drop to published .mp4, settle ({min(args.settle, FAST_SECONDS):g} s) taken off: "
                  f"{best['wall']:6.2f} s (runs {runs(jobs)})")
            print(f"  ratio drop-to-output / floor: {best['wall'] / floor:.2f} (median of runs "
                  f"{statistics.median(j['wall'] for j in jobs) / floor:.2f}; target <= 1.5)")
            job_cpu, floor_cpu = min(j["cpu"] for j in jobs), min(f["cpu"] for f in floors)
            cores = os.cpu_count() or 1
            print(f"  CPU time to the published output: worker + its ffmpegs {job_cpu:.2f} s, floor {floor_cpu:.2f} s:"
                  f" {job_cpu / floor_cpu:.2f}x; even with all {cores} cores busy throughout, the job needs "
                  f"{job_cpu / cores:.2f} s = {job_cpu / cores / floor:.2f}x the floor")
            print(f"  record complete (sync score + poster) {best['scored']:.2f} s after the drop "
                  f"(settle taken off); sync score {best['score'] and best['score'].get('correlation')}")
            stages = ", ".join(f"{k} {v:.2f}" for k, v in best["timings"].items())
            print(f"  the record's timings (s): {stages}")
            summary["warm"] = {"floor": floor, "job": best, "ratio": best["wall"] / floor}
        if args.skip != "cold":
            floors, renders = cold_render(sound, clip, args.rounds, work)
            floor, best = min(f["wall"] for f in floors), min(r["wall"] for r in renders)
            print(f"  ffmpeg floor          {floor:6.2f} s (runs {runs(floors)})")
            print(f"  cold lipsyncd render  {best:6.2f} s (runs {runs(renders)})")
            print(f"  ratio cold render / floor: {best / floor:.2f} (target <= 2.0)")
            print(f"  {renders[0]['said']}")
            summary["cold"] = {"floor": floor, "render": best, "ratio": best / floor}
    (OUT / f"summary-job-{args.size}p.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
