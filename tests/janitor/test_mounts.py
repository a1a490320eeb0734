"""Bind mounts inside the roots: a bind mount shares st_dev with the folder it is mounted on, so only the mount
table tells it apart. The janitor must never enter one, never delete through one, and say which it skipped."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from daemon import janitor
from daemon.janitor.report import render_text
from tests.janitor_support import make_config, mounted, output, put

DATE = "2026-09-01"


def bind_mounted(source: Path, target: Path) -> contextlib.AbstractContextManager[Path]:
    """A real `mount --bind source target`."""
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    return mounted(["--bind", str(source)], target, "a bind mount")


def test_a_bind_mount_inside_the_roots_is_never_entered(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "data")
    out, failed = cfg.paths.outputs, cfg.paths.failed
    decoy = tmp_path / "decoy"                     # someone's precious files, on the same filesystem
    decoy_files = [*output(decoy, "x", "y", "talk", 90)]
    decoy_files += [put(decoy / "x" / "y" / "sub" / "deep.mp4", 90), put(decoy / "notes.mp4", 90)]
    lone = put(tmp_path / "lone.mp4", 90)          # a single file, bind mounted onto an output's name
    own_old = output(out, DATE, "bob", "talk", 90)  # the root's own old files still go
    own_failed = put(failed / DATE / "bob" / "talk" / "error.txt", 90)
    put(failed / DATE / "eve" / "talk" / "error.txt", 90)
    with contextlib.ExitStack() as mounts:
        user_mount = mounts.enter_context(bind_mounted(decoy / "x" / "y", out / DATE / "mallory"))
        date_mount = mounts.enter_context(bind_mounted(decoy / "x", out / "2026-09-02"))
        sub_mount = mounts.enter_context(bind_mounted(decoy / "x" / "y", out / DATE / "bob" / "mnt"))
        file_mount = mounts.enter_context(bind_mounted(lone, out / DATE / "carol" / "clip.mp4"))
        put(out / DATE / "carol" / "clip.json", 90)
        failed_mount = mounts.enter_context(bind_mounted(decoy, failed / DATE / "eve" / "talk" / "mnt"))
        failed_user_mount = mounts.enter_context(bind_mounted(decoy, failed / DATE / "mallory"))
        result = janitor.run_pass(cfg)
        assert result.ok, result.problems  # no EBUSY: nothing was tried through a mount point
        assert all(f.exists() for f in decoy_files) and lone.exists()
        assert not any(f.exists() for f in own_old) and not own_failed.exists()
        why = {r["path"]: r["why"] for r in result.plan.refused}
        for point in (user_mount, date_mount, sub_mount, file_mount, failed_mount, failed_user_mount):
            assert "mount point" in why[str(point)], (point, why)
        text = render_text(result.to_dict())
        assert f"Refused: {user_mount}: " in text and "mount point" in text
        assert all("decoy" not in a["path"] for a in result.plan.actions())
        assert user_mount.is_dir() and (out / DATE).is_dir()  # the folders holding a mount are not removed


def test_a_bind_mount_made_after_planning_is_not_deleted_through(tmp_path: Path) -> None:
    from daemon.janitor.delete import Executor
    from daemon.janitor.plan import Planner, Step

    cfg = make_config(tmp_path / "data")
    failed = cfg.paths.failed
    decoy = [put(tmp_path / "decoy" / "precious.txt", 90)]
    put(failed / DATE / "eve" / "talk" / "error.txt", 90)
    (failed / DATE / "eve" / "talk" / "sub").mkdir()
    os.utime(failed / DATE / "eve" / "talk", (1e9, 1e9))
    plan = Planner(cfg, 2e9, None).build()
    assert [g.name for g in plan.deletions] == ["talk"]
    with bind_mounted(tmp_path / "decoy", failed / DATE / "eve" / "talk" / "sub"):
        executor = Executor(plan)
        for group in plan.deletions:
            executor.do(Step(group.root, group.folder, [group]))
        assert all(f.exists() for f in decoy)
        assert not executor.outcome.errors
        assert any("mount point" in s["why"] for s in executor.outcome.skipped), executor.outcome.skipped
