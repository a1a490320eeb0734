"""Job leases (daemon/jobs/lease.py): of several workers that reach for the same job at once, exactly one gets it,
also when they all find its lease gone stale (a worker died); a live lease is never taken."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

from daemon.jobs import lease

WORKERS = 8


def _reach(folder: str, name: str, barrier: multiprocessing.synchronize.Barrier, won: multiprocessing.Queue) -> None:
    barrier.wait()
    if lease.take_lease(Path(folder), {"worker": name}, stale_after=5.0):
        won.put(name)


def _race(folder: Path) -> list[str]:
    """WORKERS real processes released together at take_lease; the names of those that got the lease."""
    ctx = multiprocessing.get_context("fork")
    barrier, won = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_reach, args=(str(folder), f"w{i}", barrier, won)) for i in range(WORKERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    winners = []
    while not won.empty():
        winners.append(won.get(timeout=5))
    return winners


def _stale_lease(folder: Path, age: float = 60.0) -> None:
    lease = folder / "lease"
    lease.write_text(json.dumps({"worker": "dead"}))
    then = time.time() - age
    os.utime(lease, (then, then))


def test_one_worker_takes_over_a_stale_lease_however_many_reach_for_it(tmp_path: Path) -> None:
    for round_ in range(30):
        folder = tmp_path / f"job{round_}"
        folder.mkdir()
        _stale_lease(folder)
        winners = _race(folder)
        assert len(winners) == 1, f"round {round_}: {winners} all believe they hold the job"
        assert json.loads((folder / "lease").read_text())["worker"] == winners[0]


def test_one_worker_takes_a_free_job(tmp_path: Path) -> None:
    for round_ in range(10):
        folder = tmp_path / f"job{round_}"
        folder.mkdir()
        winners = _race(folder)
        assert len(winners) == 1
        assert json.loads((folder / "lease").read_text())["worker"] == winners[0]


def test_a_live_lease_is_not_taken_and_a_gone_job_is_not_recreated(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    _stale_lease(folder, age=1.0)
    assert _race(folder) == []
    assert json.loads((folder / "lease").read_text())["worker"] == "dead"
    assert not lease.take_lease(tmp_path / "finished-and-removed", {"worker": "w"}, stale_after=5.0)
    assert not (tmp_path / "finished-and-removed").exists()
