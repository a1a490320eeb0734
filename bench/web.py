"""`lipsyncd web`: the first history page of a person with 10,000 results, and streaming a 300 MB video.

1. First page: GET /api/outputs (60 results, records read for those only) for a person with --results results
   spread over 100 date folders, timed inside the process with Flask's test client (server time, no network),
   median of --rounds: right after a restart (every folder's names read) and on later visits (past dates'
   names kept while their folders' mtimes stay). Baseline in the same run: os.scandir + lstat of that
   person's folders (what a listing that stats every result does). Target: <= 200 ms.
2. Streaming: a --mb MB file through the running `lipsyncd web` (gunicorn, sendfile) with curl, against curl
   reading the same file from disk (file://), both to /dev/null, page cache warm, best of --rounds; and against
   `python -m http.server`, which copies with a Python read/write loop, over the same loopback HTTP. curl from
   disk skips TCP altogether, so it stays faster; the loop server shows what sendfile saves.
    .venv/bin/python bench/web.py [--results 10000] [--mb 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon import config as configmod  # noqa: E402
from daemon.web import files  # noqa: E402
from daemon.web.app import create_app  # noqa: E402
from tests.daemon_harness import write_config  # noqa: E402
from tests.web.support import WebServer, free_port  # noqa: E402

DATES = 100
HEADERS = {"Remote-User": "alice"}


def build(root: Path, results: int) -> None:
    """outputs/<date>/alice/<stem>.{mp4,json,jpg} for *results* results over DATES date folders."""
    record = b'{"engine": "builtin", "frames": 250, "fps": 25.0, "sync_score": {"verdict": "in sync"}}'
    for k in range(DATES):
        folder = root / "outputs" / f"2026-{1 + k // 28:02d}-{1 + k % 28:02d}" / "alice"
        folder.mkdir(parents=True)
        for i in range(results * (k + 1) // DATES - results * k // DATES):
            for suffix, data in (("mp4", b"\0" * 64), ("jpg", b"\xff\xd8"), ("json", record)):
                (folder / f"clip-{k}-{i}.{suffix}").write_bytes(data)


def scan_baseline(root: Path) -> float:
    start = time.perf_counter()
    for date in os.scandir(root / "outputs"):
        with os.scandir(os.path.join(date.path, "alice")) as it:
            for entry in it:
                entry.stat(follow_symlinks=False)
    return time.perf_counter() - start


def first_page(root: Path, results: int, rounds: int) -> None:
    build(root, results)
    past = time.time() - 3600  # the folders as on a real server: written before today
    for folder in (root / "outputs").glob("*/alice"):
        os.utime(folder, (past, past))
    client = create_app(configmod.load(write_config(root))).test_client()

    def timed() -> float:
        start = time.perf_counter()
        response = client.get("/api/outputs", headers=HEADERS)
        elapsed = time.perf_counter() - start
        assert response.status_code == 200 and response.json["total"] == results, response.json
        assert len(response.json["outputs"]) == 60
        return elapsed

    cold, warm, baselines = [], [], []
    for _ in range(rounds):
        files._NAMES.clear()  # as after a restart: every folder's names read again
        cold.append(timed())
        warm.append(timed())  # past dates' names kept (their folders' mtimes did not change)
        baselines.append(scan_baseline(root))
    base = statistics.median(baselines)
    for label, times in (("first visit after a restart", cold), ("later visits", warm)):
        page = statistics.median(times)
        verdict = "ok" if page <= 0.2 else "OVER the 200 ms target"
        print(f"first page, {results} results, {label}: {page * 1000:.1f} ms server time (median of {rounds}; "
              f"{verdict}); scandir+lstat baseline {base * 1000:.1f} ms; ratio {page / base:.2f}x")


def curl_seconds(url: str, *extra: str) -> float:
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", *extra, url],
                         capture_output=True, text=True, check=True, timeout=300).stdout.split()
    return float(out[0])


def streaming(root: Path, mb: int, rounds: int) -> None:
    folder = root / "outputs" / "2026-12-01" / "alice"
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "big.mp4"
    with open(video, "wb") as handle:
        for _ in range(mb):
            handle.write(os.urandom(1 << 20))
    web = WebServer(root).start()
    try:
        url = f"{web.url}/files/outputs/2026-12-01/alice/big.mp4"
        curl_seconds(url, "-H", "Remote-User: alice")  # warm the page cache and the server
        (worker,) = web.worker_pids()
        cpu_before = cpu_seconds(worker)
        served = min(curl_seconds(url, "-H", "Remote-User: alice") for _ in range(rounds))
        web_cpu = (cpu_seconds(worker) - cpu_before) / rounds
        ranged = min(curl_seconds(url, "-H", "Remote-User: alice", "-H", f"Range: bytes={mb << 19}-")
                     for _ in range(rounds))
        disk = min(curl_seconds(f"file://{video}") for _ in range(rounds))
        loop, loop_cpu = python_loop_seconds(folder, rounds)
    finally:
        web.stop()
    print(f"streaming {mb} MB: lipsyncd web {served:.3f} s ({mb / served:.0f} MB/s), second half by Range "
          f"{ranged:.3f} s; curl from disk {disk:.3f} s ({mb / disk:.0f} MB/s); ratio {served / disk:.2f}x; "
          f"python -m http.server (a read/write loop) {loop:.3f} s, lipsyncd web takes {served / loop:.2f}x of it")
    print(f"server CPU per {mb} MB sent: lipsyncd web {web_cpu:.3f} s, python -m http.server {loop_cpu:.3f} s "
          f"(ratio {web_cpu / loop_cpu if loop_cpu else float('nan'):.2f}x)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def python_loop_seconds(folder: Path, rounds: int) -> tuple[float, float]:
    """The same file from `python -m http.server`, which copies it with a read/write loop (shutil.copyfileobj):
    (best seconds, CPU seconds per transfer)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory",
                               str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/big.mp4"
        for _ in range(100):
            try:
                curl_seconds(url)
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        before = cpu_seconds(server.pid)
        best = min(curl_seconds(url) for _ in range(rounds))
        return best, (cpu_seconds(server.pid) - before) / rounds
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=10_000)
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lipsyncd-bench-web-") as tmp:
        first_page(Path(tmp) / "page", args.results, args.rounds)
        streaming(Path(tmp) / "stream", args.mb, args.rounds)


if __name__ == "__main__":
    main()
