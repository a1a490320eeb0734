"""Janitor pass vs `find outputs -type f -mtime +N -delete` on identical trees, in the same run.

Tree: 365 date folders x 20 users, about 100,000 files (outputs of .mp4 + .json + .jpg), one date per day
of age, so with default_days 182 about half is expired. Each round copies a pristine template twice
(cp -a keeps the mtimes): `lipsyncd janitor` runs on one copy, find on the other; both must delete the
same number of files. Also measured in child processes: peak RSS of the pass (wait4's ru_maxrss) and
start-up time of `lipsyncd janitor` on an empty tree.

Targets: a pass takes <= 1.5x find's wall time on disk (where outputs live; tmpfs only shows the tools' own
cost); peak RSS <= 60 MB; start-up <= 0.3 s. CPU time is printed too.
    .venv/bin/python bench/janitor.py [--rounds 3] [--on tmpfs,disk] [--files 100000]
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

DATES, USERS = 365, 20
DEFAULT_DAYS = 182
DAY = 86400


def build_template(root: Path, files: int, now: float) -> int:
    """outputs/<date>/<user>/<stem>.{mp4,json,jpg}; date folder k is k + 0.5 days old. Returns the file count."""
    stems = files // 3
    folders = DATES * USERS
    made = 0
    for k in range(DATES):
        when = now - (k + 0.5) * DAY
        date = time.strftime("%Y-%m-%d", time.gmtime(now - k * DAY))
        for u in range(USERS):
            folder = root / "outputs" / date / f"user{u:02d}"
            folder.mkdir(parents=True)
            index = k * USERS + u
            count = stems * (index + 1) // folders - stems * index // folders  # spread evenly over all ages
            for s in range(count):
                for ext in (".mp4", ".json", ".jpg"):
                    path = folder / f"clip{s}{ext}"
                    with open(path, "wb") as handle:
                        handle.write(b"x" * 64)
                    os.utime(path, (when, when))
                    made += 1
            os.utime(folder, (when, when))
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


def timed_child(argv: list[str], cwd: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MB, CPU seconds: user + system, the children it waited for included)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def write_config(root: Path) -> Path:
    paths = {name: str(root / name) for name in ("inbox", "outputs", "failed", "spool", "state", "avatars")}
    config = {"paths": paths, "janitor": {"retention": {"default_days": DEFAULT_DAYS}},
              "logging": {"level": "WARNING"}}
    path = root / "lipsyncd.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def lipsyncd_argv() -> list[str]:
    script = Path(sys.executable).with_name("lipsyncd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "daemon.cli"]


def compare(base: Path, rounds: int, files: int, now: float) -> dict[str, list[float]]:
    """Janitor and find wall and CPU times (and the janitor's peak RSS) over *rounds* fresh copies."""
    template = base / "template"
    t = time.perf_counter()
    total = build_template(template, files, now)
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(base)], capture_output=True, text=True).stdout
    print(f"tree: {total} files in {DATES} dates x {USERS} users, built in {time.perf_counter() - t:.1f} s "
          f"under {base} ({(fs.split() or ['?'])[0]})")
    runs: dict[str, list[float]] = {"janitor": [], "find": [], "janitor_cpu": [], "find_cpu": [], "rss": []}
    for r in range(rounds):
        for name in ("a", "b"):
            copy = base / name
            if copy.exists():
                shutil.rmtree(copy)
            subprocess.run(["cp", "-a", str(template), str(copy)], check=True)
        subprocess.run(["sync"], check=True)
        config = write_config(base / "a")
        # Alternate the order so neither side always runs first.
        for which in ("janitor", "find") if r % 2 == 0 else ("find", "janitor"):
            if which == "janitor":
                wall, peak, cpu = timed_child([*lipsyncd_argv(), "--config", str(config), "janitor"], base / "a")
                runs["rss"].append(peak)
            else:
                wall, _, cpu = timed_child(["find", "outputs", "-type", "f", "-mtime", f"+{DEFAULT_DAYS - 1}",
                                            "-delete"], base / "b")
            runs[which].append(wall)
            runs[f"{which}_cpu"].append(cpu)
        left_a, left_b = count_files(base / "a" / "outputs"), count_files(base / "b" / "outputs")
        if left_a != left_b:
            raise SystemExit(f"the two sides disagree: janitor left {left_a} files, find left {left_b}")
        print(f"  round {r + 1}: janitor {runs['janitor'][-1]:.3f} s (CPU {runs['janitor_cpu'][-1]:.3f} s), "
              f"find {runs['find'][-1]:.3f} s (CPU {runs['find_cpu'][-1]:.3f} s), deleted {total - left_a} of "
              f"{total} files each, janitor peak RSS {runs['rss'][-1]:.1f} MB")
    return runs


def startup(base: Path) -> tuple[float, float]:
    """Median wall time and peak RSS of `lipsyncd janitor` on an empty tree (the whole process)."""
    for name in ("outputs", "failed", "spool", "inbox", "state", "avatars"):
        (base / name).mkdir(parents=True, exist_ok=True)
    config = write_config(base)
    starts, peaks = [], []
    for _ in range(7):
        wall, peak, _cpu = timed_child([*lipsyncd_argv(), "--config", str(config), "janitor"], base)
        starts.append(wall)
        peaks.append(peak)
    return statistics.median(starts), max(peaks)


PLACES = {"tmpfs": "/dev/shm", "disk": "/var/tmp"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--on", default="tmpfs,disk",
                        help="where to build the trees: tmpfs (/dev/shm: the tools' own cost, no I/O noise), "
                             "disk (/var/tmp), or a folder; comma-separated (default: tmpfs,disk)")
    args = parser.parse_args()
    byte_compile()
    return run(args)


def run(args: argparse.Namespace) -> int:
    now = time.time()
    summary = []
    all_rss: list[float] = []
    start = start_rss = 0.0
    for place in args.on.split(","):
        parent = PLACES.get(place, place)
        base = Path(tempfile.mkdtemp(prefix="lipsyncd-bench-", dir=parent))
        try:
            print(f"[{place}]")
            runs = compare(base, args.rounds, args.files, now)
            all_rss += runs["rss"]
            summary.append((place, runs))
            if place == args.on.split(",")[0]:
                start, start_rss = startup(base / "empty")
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print()
    for place, runs in summary:
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
            print(f"[{place}] {unit}: janitor pass (lipsyncd janitor, child process) median {j:.3f} s; baseline "
                  f"find -type f -mtime +{DEFAULT_DAYS - 1} -delete median {f:.3f} s; ratio {ratio:.2f}x "
                  f"(best-of ratio {best:.2f}x; {verdict}")
    print(f"  the janitor also removes the ~{DATES // 2 * USERS} emptied folders, checks that an output's files "
          "are unchanged before deleting them, and measures the disk; find does none of that")
    peak = max(all_rss)
    print(f"peak RSS of the pass: {peak:.1f} MB (target <= 60 MB){'' if peak <= 60 else '  OVER TARGET'}")
    print("  the janitor runs byte-compiled, as installed by pip (see byte_compile)")
    print(f"start-up (lipsyncd janitor on an empty tree, whole process): median {start:.3f} s, "
          f"peak RSS {start_rss:.1f} MB (target <= 0.3 s){'' if start <= 0.3 else '  OVER TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
