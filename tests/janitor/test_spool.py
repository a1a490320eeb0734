"""What the janitor does in spool/: dead workers' heartbeat files go, live ones stay; jobs are never touched."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from daemon import janitor
from daemon.janitor.report import render_text
from daemon.jobs import lease
from daemon.names import WORKERS_DIR
from tests.janitor_support import make_config


def _beat(spool: Path, name: str, age_seconds: float) -> Path:
    lease.write_heartbeat(spool, name, {"host": "gpu1", "device": "cuda:0", "pid": 4242, "state": "busy",
                                        "interval": 2.0})
    path = spool / WORKERS_DIR / f"{name}.json"
    when = time.time() - age_seconds
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "updated": when}))
    os.utime(path, (when, when))
    return path


def test_dead_workers_heartbeat_files_are_removed_live_ones_kept(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    spool = cfg.paths.spool
    dead = [_beat(spool, "gpu1-cuda0-111", 3 * 3600), _beat(spool, "gpu2-cuda1-222", 30 * 86400)]
    live = _beat(spool, "gpu1-cuda0-333", 1)
    quiet = _beat(spool, "gpu3-cuda0-444", 20 * 60)  # stale for the reaper, not long enough to be forgotten
    job = spool / "0123-job"
    job.mkdir()
    (job / "job.json").write_text(json.dumps({"state": "queued", "user": "ann"}))

    dry = janitor.run_pass(cfg, dry_run=True)
    assert sorted(d["path"] for d in dry.spool.dead_workers) == sorted(map(str, dead))
    assert all(p.exists() for p in dead)
    assert "would remove its heartbeat file" in render_text(dry.to_dict())

    result = janitor.run_pass(cfg)
    assert result.ok, result.problems
    assert not any(p.exists() for p in dead)
    assert live.exists() and quiet.exists() and (job / "job.json").exists()
    text = render_text(result.to_dict())
    assert f"removed its heartbeat file, silent 3 h): {dead[0]}" in text
    assert janitor.run_pass(cfg).spool.dead_workers == []
