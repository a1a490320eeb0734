"""Farm throughput: 1, 2 and 4 `lipsyncd worker` processes sharing one Redis queue and one spool.

Baseline: 1 worker. Each job is the command engine running a fixed-length command (sleep, then copy the
video to the output), so the engine costs the same on any machine and what is measured is the daemon
around it: Redis hand-out, leases and heartbeats, input hashing, the sync score, the poster, publishing.
Scaling efficiency at N workers = throughput_N / (N x throughput_1); the target is >= 0.9 at 4 workers.

Jobs are claimed into the spool with the calls the daemon's ingest makes (daemon.inbox.claim.claim, then
JobQueue.put) while the workers wait idle; all are queued at once and the clock runs from the first put
to the last output. The watcher is not part of this measurement.

Also printed, to tell the daemon's scheduling apart from the machine's limits:
  cpu/job   CPU seconds the workers and their children (ffmpeg, the command) spent per job;
  cores     cpu/job x workers / seconds per job round: the CPU the run needed, to compare with the cores
            the machine has (when it nears them, workers wait for CPU, not for the queue);
  gap       median time between a worker publishing one job and starting the next: the queue hand-out;
  busy      share of the run the workers spent inside jobs (record start to finish): 1.0 means the queue
            kept every worker fed, whatever the CPU did.

    .venv/bin/python bench/farm.py [--workers 1,2,4] [--jobs-per-worker 6] [--job-seconds 3] [--repeat 3]

Needs redis-server and ffmpeg. Several "hosts" on one machine share its cores; on real farm hosts each
worker has its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon import config as configmod  # noqa: E402
from daemon.inbox.claim import claim  # noqa: E402
from daemon.inbox.pairing import Claim  # noqa: E402
from daemon.jobs.queue import JobQueue  # noqa: E402
from tests import media  # noqa: E402
from tests.jobs.test_farm import HOST_NAMES, Farm, RedisServer, sleep_then_copy  # noqa: E402

BASELINE_WORKERS = 1
TARGET_EFFICIENCY = 0.9
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    seconds: float  # first put to last output
    cpu_per_job: float  # CPU seconds of the workers and their children, per job
    gap: float  # median seconds between a worker's jobs
    busy: float  # share of workers x seconds spent inside jobs


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* and of its children that it waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def run_once(root: Path, workers: int, jobs: int, job_seconds: float, video: Path, audio: Path) -> Run:
    """*jobs* jobs queued at once onto *workers* idle workers."""
    server = RedisServer(root / "redis")
    server.start()
    farm = Farm(root / "farm", server.url, sleep_then_copy(job_seconds))
    try:
        for i in range(workers):
            farm.start_worker(f"worker{i + 1}")
        config = configmod.load(farm.config_for("bench"))
        inbox = farm.shared / "inbox" / "bench"
        inbox.mkdir(parents=True, exist_ok=True)
        job_ids = []
        for i in range(jobs):
            stem = f"job-{i:03d}"
            farm.drop("bench", stem, video, audio)
            job = claim(farm.shared / "spool", inbox, "bench", "bench",
                              Claim(stem=stem, audio=f"{stem}.wav", video=f"{stem}.mp4"))
            job_ids.append(job.id)
        pids = [proc.pid for proc in farm.procs.values()]
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        queue = JobQueue(config)
        started = time.monotonic()
        for job_id in job_ids:
            queue.put(job_id)
        while len(farm.outputs()) < jobs:
            if time.monotonic() - started > 60 + 4 * jobs * job_seconds:
                raise RuntimeError(f"only {len(farm.outputs())} of {jobs} jobs finished\n{farm.diagnostics()}")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        # The last worker finishes its job (a folder left with only a lease is not a job: the reaper's).
        farm.wait_for(lambda: not [e for e in farm.spool_jobs() if e.job is not None], 30, "the last job to finish")
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        queue.close()
        if farm.failed():
            raise RuntimeError(f"{len(farm.failed())} job(s) failed: {farm.failed()[0].read_text()}")
        gap, inside = _gaps_and_busy_seconds(farm)
        return Run(elapsed, cpu / jobs, gap, inside / (workers * elapsed))
    finally:
        farm.stop()
        server.stop()


def _gaps_and_busy_seconds(farm: Farm) -> tuple[float, float]:
    """Median time from one job's record to the next job's start on the same worker; seconds inside jobs."""
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for path in (farm.shared / "outputs").rglob("*.json"):
        record = json.loads(path.read_text())
        by_worker.setdefault(record["worker"], []).append((record["started"], record["finished"]))
    gaps = []
    for spans in by_worker.values():
        spans.sort()
        gaps += [nxt[0] - prev[1] for prev, nxt in zip(spans, spans[1:], strict=False)]
    inside = sum(finished - started for spans in by_worker.values() for started, finished in spans)
    return (statistics.median(gaps) if gaps else 0.0), inside


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure (default 1,2,4)")
    parser.add_argument("--jobs-per-worker", type=int, default=6)
    parser.add_argument("--job-seconds", type=float, default=3.0, help="length of the fixed job's sleep")
    parser.add_argument("--repeat", type=int, default=3, help="runs per worker count; the median is reported")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.workers.split(",")} | {BASELINE_WORKERS})

    with tempfile.TemporaryDirectory(prefix="lipsyncd-bench-farm-") as tmp:
        tmp_path = Path(tmp)
        video = media.color_clip(tmp_path / "clip.mp4")
        audio = media.tone(tmp_path / "tone.wav", seconds=1.5)
        print(f"farm bench: command engine, job = sleep {args.job_seconds:g} s then copy the video; "
              f"{args.jobs_per_worker} jobs per worker; one Redis queue, shared spool/outputs; "
              f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start; "
              f"hosts simulated with unshare -u: {HOST_NAMES}")
        runs: dict[int, list[Run]] = {n: [] for n in counts}
        for r in range(args.repeat):  # interleaved, so a busy moment of the machine hits every count alike
            for n in counts:
                runs[n].append(run_once(tmp_path / f"w{n}-r{r}", n, n * args.jobs_per_worker, args.job_seconds,
                                        video, audio))
        print(f"{'workers':>7} {'jobs':>5} {'seconds':>8} {'jobs/s':>7} {'vs 1 worker':>11} {'efficiency':>10} "
              f"{'cpu/job':>8} {'cores':>6} {'gap':>6} {'busy':>5}   runs (s)")
        throughput: dict[int, float] = {}
        for n in counts:
            jobs = n * args.jobs_per_worker
            elapsed = statistics.median(run.seconds for run in runs[n])
            cpu_per_job = statistics.median(run.cpu_per_job for run in runs[n])
            gap = statistics.median(run.gap for run in runs[n])
            busy = statistics.median(run.busy for run in runs[n])
            throughput[n] = jobs / elapsed
            ratio = throughput[n] / throughput[BASELINE_WORKERS]
            cores = cpu_per_job * jobs / elapsed
            note = "  baseline" if n == BASELINE_WORKERS else ""
            print(f"{n:>7} {jobs:>5} {elapsed:>8.2f} {throughput[n]:>7.3f} {ratio:>10.2f}x {ratio / n:>10.2f} "
                  f"{cpu_per_job:>7.2f}s {cores:>6.2f} {gap:>5.2f}s {busy:>5.2f}   "
                  f"{' '.join(f'{run.seconds:.2f}' for run in runs[n])}{note}")
        top = max(counts)
        efficiency = throughput[top] / (top * throughput[BASELINE_WORKERS])
        verdict = "meets" if efficiency >= TARGET_EFFICIENCY else "BELOW"
        print(f"scaling efficiency at {top} workers: {efficiency:.2f} ({verdict} the target {TARGET_EFFICIENCY}); "
              f"baseline {BASELINE_WORKERS} worker = {throughput[BASELINE_WORKERS]:.3f} jobs/s; "
              f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
