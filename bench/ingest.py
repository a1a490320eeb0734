"""Ingest benchmarks for the real daemon (command engine: ffmpeg muxing audio onto a tiny clip).

1. Drop-to-start latency: from the last byte of the second file of a pair to the worker starting the
   job, p50/p95, against the named baseline settle_seconds (target: p95 <= settle_seconds + 1 s).
2. 500 pairs from 20 users: all done, none lost, none twice; the daemon's overhead per job beyond the
   engine's own time (baseline: the engine's time; target <= 50 ms per job).
3. The watcher process (`lipsyncd run` without its workers): RSS and CPU over 60 s idle.

    .venv/bin/python bench/ingest.py [--pairs 500] [--users 20] [--latency-pairs 20] [--idle 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import media  # noqa: E402
from tests.daemon_harness import Daemon, outputs, records, wait_for, write_config  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency(root: Path, audio: Path, video: Path, pairs: int, settle: float) -> None:
    config = write_config(root, ingest={"settle_seconds": settle})
    samples = []
    with Daemon(config):
        for i in range(pairs):
            folder = root / "inbox" / "lat"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(video, folder / f"l{i}.mp4")
            data = audio.read_bytes()
            with open(folder / f"l{i}.wav", "wb") as handle:  # a plain writer: write, close
                handle.write(data)
            last_byte = time.time()
            wait_for(lambda i=i: any(p.name == f"l{i}.mp4" for p in outputs(root)), 60, f"pair {i}")
            record = next(r for r in records(root) if r["name"] == f"l{i}")
            samples.append(record["started"] - last_byte)
    p50, p95 = percentile(samples, 0.5), percentile(samples, 0.95)
    print(f"drop-to-start latency over {pairs} pairs (settle_seconds={settle:g}, the baseline): "
          f"p50 {p50:.3f} s, p95 {p95:.3f} s, max {max(samples):.3f} s")
    print(f"  ratio p95 / settle_seconds = {p95 / settle:.2f}; target p95 <= settle + 1 s = {settle + 1:g} s: "
          f"{'met' if p95 <= settle + 1 else 'NOT met'}")


def throughput(root: Path, audio: Path, video: Path, pairs: int, users: int) -> None:
    config = write_config(root, ingest={"settle_seconds": 1, "rescan_seconds": 10}, logging={"level": "INFO"})
    staging = root / "staging"
    for i in range(pairs):
        user = f"user{i % users:02d}"
        (staging / user).mkdir(parents=True, exist_ok=True)
        shutil.copy(video, staging / user / f"p{i:04d}.mp4")
        shutil.copy(audio, staging / user / f"p{i:04d}.wav")
    with Daemon(config) as daemon:
        started = time.time()
        for user_dir in sorted(staging.iterdir()):  # mv on one filesystem: what a sync tool's final rename does
            target = root / "inbox" / user_dir.name
            target.mkdir(exist_ok=True)
            for path in sorted(user_dir.iterdir()):
                os.rename(path, target / path.name)
        wait_for(lambda: len(outputs(root)) >= pairs, 60 + pairs * 2.0, f"{pairs} outputs", interval=0.5)
        time.sleep(2)
        wall = time.time() - started
        log = daemon.log()
    recs = records(root)
    names = [r["name"] for r in recs]
    ids = {r["job_id"] for r in recs}
    failed = list((root / "failed").rglob("error.txt"))
    print(f"{pairs} pairs from {users} users: {len(recs)} outputs, {len(set(names))} distinct names, "
          f"{len(ids)} distinct jobs, {len(failed)} failed, {len(names) - len(set(names))} duplicates, "
          f"{pairs - len(set(names))} lost; wall {wall:.1f} s")
    first_start = min(r["started"] for r in recs)
    last_finish = max(r["finished"] for r in recs)
    engine = sum(r["timings"]["engine"] for r in recs)
    per_stage = {k: statistics.mean(r["timings"].get(k, 0.0) for r in recs) for k in ("verify", "score", "poster")}
    busy = last_finish - first_start
    overhead = (busy - engine) / len(recs)
    print(f"  engine time (the baseline): {engine / len(recs) * 1000:.1f} ms/job; worker busy span "
          f"{busy:.1f} s for {len(recs)} jobs")
    print(f"  daemon overhead beyond the engine: {overhead * 1000:.1f} ms/job "
          f"(ratio to engine time {overhead / (engine / len(recs)):.2f}); of which per job: "
          + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in per_stage.items()))
    bare = overhead - per_stage["score"] - per_stage["poster"]
    print(f"  overhead without scoring and poster (queue hand-off, lease, hashing, publishing): "
          f"{bare * 1000:.1f} ms/job")
    print(f"  target <= 50 ms/job: {'met' if overhead <= 0.05 else 'NOT met'} (all stages), "
          f"{'met' if bare <= 0.05 else 'NOT met'} (without score+poster)")
    if "Traceback" in log:
        print("  WARNING: the daemon log has a traceback")


def watcher_idle(root: Path, seconds: float) -> None:
    config = write_config(root, ingest={"rescan_seconds": 60})
    with Daemon(config) as daemon:
        pid = daemon.proc.pid
        time.sleep(2)
        before = _cpu_seconds(pid)
        t0 = time.monotonic()
        time.sleep(seconds)
        used = _cpu_seconds(pid) - before
        elapsed = time.monotonic() - t0
        rss = _rss_mb(pid)
    print(f"watcher process (lipsyncd run, workers excluded): RSS {rss:.1f} MB (target <= 80 MB); "
          f"idle CPU {100 * used / elapsed:.2f}% over {elapsed:.0f} s (target < 1%)")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--latency-pairs", type=int, default=20)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lipsyncd-bench-") as tmp:
        tmp_path = Path(tmp)
        audio = media.tone(tmp_path / "a.wav", seconds=1.0)
        video = media.color_clip(tmp_path / "v.mp4", seconds=1.0)
        latency(tmp_path / "latency", audio, video, args.latency_pairs, args.settle)
        throughput(tmp_path / "throughput", audio, video, args.pairs, args.users)
        watcher_idle(tmp_path / "idle", args.idle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
