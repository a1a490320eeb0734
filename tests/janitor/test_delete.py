"""Carrying out the plan folder by folder (daemon/janitor/delete.py): a step deletes through the planner's own
descriptor of its folder (never by path), checks a folder changed since planning file by file, removes an
emptied folder through its parent's descriptor, and a pass killed mid-way is finished by the next one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path

import yaml

from daemon import janitor
from daemon.janitor import delete as safedelete
from daemon.janitor import plan as prune
from tests.janitor_support import make_config, output, put

REPO = Path(__file__).resolve().parents[2]
DATE = "2026-09-01"


def _steps(cfg) -> tuple[prune.Planner, Generator[prune.Step, None, None]]:
    planner = prune.Planner(cfg, time.time(), None)
    return planner, planner.steps()


def _carry_out(planner: prune.Planner, steps: Generator[prune.Step, None, None], step: prune.Step
               ) -> safedelete.Outcome:
    """Carry out one step as a real pass does, then close the plan's descriptors."""
    executor = safedelete.Executor(planner.plan)
    try:
        executor.do(step)
    finally:
        executor.close()
        steps.close()
    return executor.outcome


def test_a_step_deletes_through_the_planners_descriptor_not_the_path(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    output(out, DATE, "ann", "talk", 30)
    planner, steps = _steps(cfg)
    step = next(steps)
    assert step.fd is not None and step.folder == (DATE, "ann")
    # While the planner holds the folder, it moves away and a symlink to a decoy takes its name:
    # deleting by path would hit the decoy.
    folder, moved, decoy = out / DATE / "ann", tmp_path / "moved", tmp_path / "decoy"
    folder.rename(moved)
    output(decoy, DATE, "x", "talk", 30)
    folder.symlink_to(decoy / DATE / "x", target_is_directory=True)
    outcome = _carry_out(planner, steps, step)
    assert outcome.files == 3 and outcome.errors == []
    assert list(moved.iterdir()) == []  # the real folder, reached through its descriptor, is empty
    assert sorted(p.name for p in (decoy / DATE / "x").iterdir()) == ["talk.jpg", "talk.json", "talk.mp4"]


def test_a_folder_changed_since_planning_is_checked_file_by_file(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    folder = out / DATE / "bo"
    kept = output(out, DATE, "bo", "kept", 30)
    gone = output(out, DATE, "bo", "gone", 30)
    planner, steps = _steps(cfg)
    step = next(steps)
    assert step.remove and step.parent_fd is not None  # the pass empties it: removed with its outputs
    time.sleep(0.01)
    put(tmp_path / "new.json", 0)
    os.replace(tmp_path / "new.json", kept[1])  # a new record renamed over kept.json after planning
    outcome = _carry_out(planner, steps, step)
    assert outcome.files == 3 and outcome.errors == [] and outcome.folders == 0
    whys = {item["path"]: item["why"] for item in outcome.skipped}
    assert "kept.json changed" in whys[str(folder / "kept")]
    assert whys[str(folder)] == "directory not empty"  # not emptied after all: left in place
    assert all(p.exists() for p in kept) and not any(p.exists() for p in gone)  # the changed output stays whole
    assert sorted(p.name for p in folder.iterdir()) == ["kept.jpg", "kept.json", "kept.mp4"]


def test_an_emptied_folder_is_removed_through_its_parent_descriptor(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    output(out, DATE, "cy", "talk", 30)
    output(out, DATE, "di", "talk", 30)
    planner, steps = _steps(cfg)
    executor = safedelete.Executor(planner.plan)
    try:
        cy = next(steps)
        executor.do(cy)
        di = next(steps)
        put(out / DATE / "di" / "arrived-late.txt", 0)  # di is no longer emptied by the pass
        executor.do(di)
    finally:
        executor.close()
        steps.close()
    assert (cy.folder, di.folder) == ((DATE, "cy"), (DATE, "di")) and cy.remove and di.remove
    assert not (out / DATE / "cy").exists()
    # di's outputs are checked one by one (its folder changed) and deleted; the late file keeps the folder.
    assert sorted(p.name for p in (out / DATE / "di").iterdir()) == ["arrived-late.txt"]
    outcome = executor.outcome
    assert outcome.files == 6 and outcome.folders == 1 and outcome.errors == []
    assert outcome.skipped == [{"path": str(out / DATE / "di"), "why": "directory not empty"}]


def test_a_pass_killed_mid_way_is_finished_by_the_next_pass(tmp_path: Path) -> None:
    """kill -9 of the janitor mid-pass (a timer-started pass cut short): the next pass does the rest."""
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    old = time.time() - 30 * 86400
    for day in range(1, 29):
        for u in range(60):
            folder = out / f"2026-02-{day:02d}" / f"u{u:02d}"
            folder.mkdir(parents=True)
            for suffix in (".mp4", ".json", ".jpg"):
                (folder / f"talk{suffix}").write_bytes(b"x")
                os.utime(folder / f"talk{suffix}", (old, old))
    kept = output(out, DATE, "keeper", "fresh", 0.5)
    config_file = tmp_path / "lipsyncd.yaml"
    config_file.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "--config", str(config_file), "janitor"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    first = out / "2026-02-01" / "u00"  # the first folder the pass empties
    deadline = time.monotonic() + 30
    while first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the pass ended before it could be killed (tree too small?)"
    assert not first.exists() and (out / "2026-02-28" / "u59").exists()  # killed mid-way
    second = janitor.run_pass(cfg)
    assert second.ok, second.problems
    assert sorted(p.name for p in out.iterdir()) == [DATE]  # every expired output and emptied folder gone
    assert all(p.exists() for p in kept)


def test_folders_a_killed_pass_emptied_are_removed_though_they_look_fresh(tmp_path: Path) -> None:
    """A pass killed between a folder's last file and its rmdir leaves an empty folder with a fresh mtime.
    An old date takes no new results, so the next pass removes it; an empty folder of today stays (a job
    may be about to publish into it) until it is min_age_hours old."""
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    (out / "2026-02-01" / "u07").mkdir(parents=True)  # emptied just now by a killed pass
    today = time.strftime("%Y-%m-%d")
    (out / today / "ann").mkdir(parents=True)  # a job's folder, made a moment before it publishes
    result = janitor.run_pass(cfg)
    assert result.ok, result.problems
    assert sorted(p.name for p in out.iterdir()) == [today]
    assert (out / today / "ann").is_dir()
