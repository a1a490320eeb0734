"""The janitor's memory stays flat in the size of the tree: a pass made and reported as `lipsyncd janitor` makes
it (each step's paths streamed out, nothing per path kept) holds no more for a tree 16 times larger. Measured
with tracemalloc (Python's own allocations, not timed), on real folders."""

from __future__ import annotations

import io
import os
import time
import tracemalloc
from pathlib import Path

from daemon import janitor
from daemon.janitor.report import Stream
from tests.janitor_support import make_config

DAY = 86400


def _tree(outputs: Path, dates: int, users: int, per_user: int) -> int:
    """outputs/<date>/<user>/clipN.{mp4,json,jpg}; date k is k + 0.5 days old, so with default_days 7
    everything from the eighth date on is expired."""
    now = time.time()
    made = 0
    for k in range(dates):
        when = now - (k + 0.5) * DAY
        date = time.strftime("%Y-%m-%d", time.gmtime(now - k * DAY))
        for u in range(users):
            folder = outputs / date / f"user{u:02d}"
            folder.mkdir(parents=True)
            for s in range(per_user):
                for ext in (".mp4", ".json", ".jpg"):
                    path = folder / f"clip{s}{ext}"
                    path.write_bytes(b"x" * 64)
                    os.utime(path, (when, when))
                    made += 1
            os.utime(folder, (when, when))
        os.utime(outputs / date, (when, when))
    return made


def _peak(cfg, dry_run: bool, as_json: bool) -> tuple[int, int]:
    """(peak bytes Python allocated during the pass and its report, paths planned)."""
    stream = Stream(_Null(), dry_run, as_json)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = janitor.run_pass(cfg, dry_run=dry_run, listener=stream.paths)
        stream.finish(result.to_dict(actions=False))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert result.ok, result.problems
    assert result.plan is not None and result.plan.actions() == []  # nothing per path kept
    return peak, result.plan.action_count()


class _Null(io.TextIOBase):
    """stdout sent nowhere: what was written is counted, not kept."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)


def test_memory_does_not_grow_with_the_tree(tmp_path: Path) -> None:
    trees = []
    for name, dates, users in (("small", 16, 3), ("large", 64, 12)):  # 16 times the files, 4 times dates and users
        cfg = make_config(tmp_path / name, janitor={"retention": {"default_days": 7}})
        trees.append((cfg, _tree(cfg.paths.outputs, dates, users, 2)))
    for dry_run, as_json in ((True, False), (True, True), (False, True)):  # the real pass last: it deletes
        peaks = []
        for cfg, files in trees:
            peak, actions = _peak(cfg, dry_run, as_json)
            assert actions > files / 2  # most of it planned (and, for a real pass, deleted)
            peaks.append(peak)
        small, large = peaks
        # The peak may grow by the per-user and per-date totals (a few hundred bytes each), never by anything
        # per file or per folder: per-file records would add megabytes.
        assert large - small < 64 * 1024, (dry_run, as_json, f"peak {small} bytes for the small tree, {large} "
                                           "for the large one")
