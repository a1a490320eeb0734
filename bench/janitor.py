"""Janitor pass vs `find outputs -type f -mtime +N -delete` on identical trees, in the same run.

Tree: 365 date folders x USERS users x 5 outputs each (.mp4 + .json + .jpg), one date per day of age, so
with default_days 182 about half is expired: a year of 20 users is 109,500 files; --big adds a year of
200 users, 1,095,000 files (empty files, to keep two copies in memory on tmpfs; building each copy takes
~15 s on tmpfs, ~1 min on ext4, and a pass ~15 s). Each round builds the tree twice (same names, same
mtimes): `lipsyncd janitor` runs on one copy, find on the other; both must delete the same number of files.

Peak memory is each process's own: the janitor's VmHWM, read by the process itself as it exits (a wrapper
around the CLI, see PEAK_WRAPPER), and find's VmHWM, read from /proc/PID/status while it runs. Not wait4's
ru_maxrss: Linux carries that across fork and exec, so it would report this script's own size. Also measured:
the start-up time of `lipsyncd janitor` on an empty tree.

Targets: a pass takes <= 1.5x find's wall time on disk (where outputs live; tmpfs only shows the tools'
own cost); peak memory <= 60 MB and flat in the size of the tree (as find's is); start-up <= 0.3 s.
    .venv/bin/python bench/janitor.py [--rounds 3] [--on tmpfs,disk] [--users 20] [--big]
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
import threading
import time
from pathlib import Path

DATES, USERS, PER_USER = 365, 20, 5
BIG_USERS = 200
DEFAULT_DAYS = 182
DAY = 86400

# Runs `lipsyncd` in this process and prints its own peak memory (VmHWM) on stderr as it exits.
PEAK_WRAPPER = """
import atexit, sys
def _peak():
    with open("/proc/self/status") as status:
        sys.stderr.write(next(line for line in status if line.startswith("VmHWM:")))
atexit.register(_peak)
sys.argv[0] = "lipsyncd"
from daemon.cli import main
sys.exit(main())
"""


def build_tree(root: Path, users: int, now: float, size: int = 64) -> int:
    """outputs/<date>/<user>/<stem>.{mp4,json,jpg}; date folder k is k + 0.5 days old. Returns the file count.

    Through descriptors (open, write, futimens, close): ~75,000 files/s on tmpfs."""
    data = b"x" * size
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    made = 0
    (root / "outputs").mkdir(parents=True)
    for k in range(DATES):
        when = int((now - (k + 0.5) * DAY) * 1e9)
        date = root / "outputs" / time.strftime("%Y-%m-%d", time.gmtime(now - k * DAY))
        date.mkdir()
        for u in range(users):
            folder = date / f"user{u:03d}"
            folder.mkdir()
            folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for s in range(PER_USER):
                    for ext in (".mp4", ".json", ".jpg"):
                        fd = os.open(f"clip{s}{ext}", flags, 0o644, dir_fd=folder_fd)
                        try:
                            if data:
                                os.write(fd, data)
                            os.utime(fd, ns=(when, when))
                        finally:
                            os.close(fd)
                        made += 1
                os.utime(folder_fd, ns=(when, when))
            finally:
                os.close(folder_fd)
        os.utime(date, ns=(when, when))
    for name in ("failed", "spool", "inbox", "state", "avatars"):
        (root / name).mkdir()
    return made


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def byte_compile() -> None:
    """Byte-compile daemon/ (into its __pycache__, which git ignores) before the janitor's runs.

    A deployed install (install.sh: pip install of the package) has its .pyc files written at install time,
    so a timer-started pass never compiles source. This checkout is an editable install, and environments
    like CI set PYTHONDONTWRITEBYTECODE=1, so without this every run would compile daemon/ from source
    (~25 ms) and the bench would measure a cost no server pays."""
    source = Path(__file__).resolve().parent.parent / "daemon"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(source)], check=True, stdout=subprocess.DEVNULL)


def timed_child(argv: list[str], cwd: Path, self_reports: bool) -> tuple[float, float, float]:
    """(wall seconds, the process's own peak memory in MB, CPU seconds: user + system).

    *self_reports*: the process prints its VmHWM line on stderr as it exits (PEAK_WRAPPER); else it is
    read from /proc/PID/status every few milliseconds while the process runs (find: its peak is reached
    early and held)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    polled = [0.0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            polled[0] = max(polled[0], int(line.split()[1]) / 1024)
            except (OSError, ValueError):
                pass
            done.wait(0.005)

    poller = threading.Thread(target=poll, daemon=True)
    if not self_reports:
        poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err[-2000:]}")
    if self_reports:
        lines = [line for line in err.splitlines() if line.startswith("VmHWM:")]
        if not lines:
            raise SystemExit(f"{argv} did not report its peak memory: {err[-2000:]}")
        peak = int(lines[-1].split()[1]) / 1024
    else:
        poller.join()
        peak = polled[0]
    return wall, peak, usage.ru_utime + usage.ru_stime


def write_config(root: Path) -> Path:
    paths = {name: str(root / name) for name in ("inbox", "outputs", "failed", "spool", "state", "avatars")}
    config = {"paths": paths, "janitor": {"retention": {"default_days": DEFAULT_DAYS}},
              "logging": {"level": "WARNING"}}
    path = root / "lipsyncd.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def lipsyncd_argv() -> list[str]:
    """`lipsyncd` run through PEAK_WRAPPER (the same CLI, as the installed script runs it)."""
    return [sys.executable, "-c", PEAK_WRAPPER]


def compare(base: Path, rounds: int, users: int, size: int, now: float) -> dict[str, list[float]]:
    """Janitor and find wall and CPU times and peak memory over *rounds* fresh pairs of trees."""
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(base)], capture_output=True, text=True).stdout
    runs: dict[str, list[float]] = {"janitor": [], "find": [], "janitor_cpu": [], "find_cpu": [], "janitor_peak": [],
                                    "find_peak": [], "build": []}
    total = 0
    for r in range(rounds):
        for name in ("a", "b"):
            copy = base / name
            if copy.exists():
                shutil.rmtree(copy)
            t = time.perf_counter()
            total = build_tree(copy, users, now, size)
            runs["build"].append(time.perf_counter() - t)
        if r == 0:
            print(f"tree: {total} files in {DATES} dates x {users} users x {PER_USER} outputs ({size}-byte files), "
                  f"built in {runs['build'][0]:.1f} s under {base} ({(fs.split() or ['?'])[0]})")
        subprocess.run(["sync"], check=True)
        config = write_config(base / "a")
        # Alternate the order so neither side always runs first.
        for which in ("janitor", "find") if r % 2 == 0 else ("find", "janitor"):
            if which == "janitor":
                wall, peak, cpu = timed_child([*lipsyncd_argv(), "--config", str(config), "janitor"], base / "a", True)
            else:
                wall, peak, cpu = timed_child(["find", "outputs", "-type", "f", "-mtime", f"+{DEFAULT_DAYS - 1}",
                                               "-delete"], base / "b", False)
            runs[which].append(wall)
            runs[f"{which}_cpu"].append(cpu)
            runs[f"{which}_peak"].append(peak)
        left_a, left_b = count_files(base / "a" / "outputs"), count_files(base / "b" / "outputs")
        if left_a != left_b:
            raise SystemExit(f"the two sides disagree: janitor left {left_a} files, find left {left_b}")
        print(f"  round {r + 1}: janitor {runs['janitor'][-1]:.3f} s (CPU {runs['janitor_cpu'][-1]:.3f} s, peak "
              f"{runs['janitor_peak'][-1]:.1f} MB), find {runs['find'][-1]:.3f} s (CPU {runs['find_cpu'][-1]:.3f} s, "
              f"peak {runs['find_peak'][-1]:.1f} MB), deleted {total - left_a} of {total} files each")
    for name in ("a", "b"):
        shutil.rmtree(base / name, ignore_errors=True)
    return runs


def startup(base: Path) -> tuple[float, float]:
    """Median wall time and peak memory of `lipsyncd janitor` on an empty tree (the whole process)."""
    for name in ("outputs", "failed", "spool", "inbox", "state", "avatars"):
        (base / name).mkdir(parents=True, exist_ok=True)
    config = write_config(base)
    starts, peaks = [], []
    for _ in range(7):
        wall, peak, _cpu = timed_child([*lipsyncd_argv(), "--config", str(config), "janitor"], base, True)
        starts.append(wall)
        peaks.append(peak)
    return statistics.median(starts), max(peaks)


PLACES = {"tmpfs": "/dev/shm", "disk": "/var/tmp"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=USERS, help="users of the default tree (20: 109,500 files)")
    parser.add_argument("--big", action="store_true",
                        help=f"also a year of {BIG_USERS} users (1,095,000 empty files; ~1 min per round on tmpfs)")
    parser.add_argument("--big-rounds", type=int, default=1)
    parser.add_argument("--on", default="tmpfs,disk",
                        help="where to build the trees: tmpfs (/dev/shm: the tools' own cost, no I/O noise), "
                             "disk (/var/tmp), or a folder; comma-separated (default: tmpfs,disk)")
    args = parser.parse_args()
    byte_compile()
    return run(args)


def run(args: argparse.Namespace) -> int:
    now = time.time()
    cases = [(f"{args.users} users", args.users, args.rounds, 64)]
    if args.big:
        cases.append((f"{BIG_USERS} users", BIG_USERS, args.big_rounds, 0))
    summary = []
    start = start_peak = 0.0
    for place in args.on.split(","):
        parent = PLACES.get(place, place)
        base = Path(tempfile.mkdtemp(prefix="lipsyncd-bench-", dir=parent))
        try:
            for label, users, rounds, size in cases:
                print(f"[{place}, {label}]")
                summary.append((place, label, compare(base, rounds, users, size, now)))
            if place == args.on.split(",")[0]:
                start, start_peak = startup(base / "empty")
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print()
    peaks = []
    for place, label, runs in summary:
        for kind, unit in (("", "wall"), ("_cpu", "CPU")):
            j, f = statistics.median(runs["janitor" + kind]), statistics.median(runs["find" + kind])
            ratio = j / f
            best = min(runs["janitor" + kind]) / min(runs["find" + kind])
            if unit == "wall" and place != "tmpfs":  # the target: how long a pass takes where outputs live
                verdict = f"target <= 1.5x){'' if ratio <= 1.5 else '  OVER TARGET'}"
            elif unit == "wall":
                verdict = "the tools' own cost, for information: the target is on disk)"
            else:
                verdict = "for information: no target)"
            print(f"[{place}, {label}] {unit}: janitor pass (lipsyncd janitor, child process) median {j:.3f} s; "
                  f"baseline find -type f -mtime +{DEFAULT_DAYS - 1} -delete median {f:.3f} s; ratio {ratio:.2f}x "
                  f"(best-of ratio {best:.2f}x; {verdict}")
        jp, fp = max(runs["janitor_peak"]), max(runs["find_peak"])
        peaks.append((label, jp, fp))
        print(f"[{place}, {label}] peak memory (VmHWM): janitor {jp:.1f} MB, find {fp:.1f} MB: {jp / fp:.1f}x find "
              f"(target <= 60 MB){'' if jp <= 60 else '  OVER TARGET'}")
    if len({label for label, _, _ in peaks}) > 1:
        by_label: dict[str, float] = {}
        for label, jp, _fp in peaks:
            by_label[label] = max(jp, by_label.get(label, 0.0))
        (small, s_peak), (large, l_peak) = list(by_label.items())[:2]
        print(f"flat in the tree: janitor peak {l_peak:.1f} MB for {large} vs {s_peak:.1f} MB for {small}: "
              f"{l_peak / s_peak:.2f}x")
    print(f"  the janitor also removes the ~{DATES // 2 * USERS} emptied folders (per 20 users), checks that an "
          "output's files are unchanged before deleting them, and measures the disk; find does none of that")
    print("  the janitor runs byte-compiled, as installed by pip (see byte_compile)")
    print(f"start-up (lipsyncd janitor on an empty tree, whole process): median {start:.3f} s, "
          f"peak {start_peak:.1f} MB (target <= 0.3 s){'' if start <= 0.3 else '  OVER TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
