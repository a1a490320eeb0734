"""What the janitor leaves alone and what it tidies beyond the outputs themselves: names that are not in the
layout, pins as reported, and empty folders."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import janitor
from daemon.janitor.report import render_text
from tests.janitor_support import make_config, output, put

DATE = "2026-09-01"


def test_what_is_not_in_the_layout_is_left_alone_and_reported_once(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    no_date = output(out, "2026-13-45", "ann", "talk", 90)     # looks like a date, is none
    feb_30 = output(out, "2026-02-30", "ann", "talk", 90)
    folder = out / DATE / "ann"
    loose = [put(folder / "notes.txt", 90), put(folder / "README", 90), put(folder / ".DS_Store", 90),
             put(folder / "talk.srt", 90), put(folder / ".mp4", 90)]
    own = output(out, DATE, "ann", "talk", 90)                 # the real output beside them goes
    failed_no_date = put(cfg.paths.failed / "2026-00-10" / "ann" / "talk" / "error.txt", 90)
    result = janitor.run_pass(cfg)
    assert result.ok, result.problems
    assert all(f.exists() for f in (*no_date, *feb_30, *loose, failed_no_date))
    assert not any(f.exists() for f in own)
    assert folder.is_dir()  # it still holds what is not an output
    unmanaged = result.plan.unmanaged
    assert len(unmanaged) == len(set(unmanaged))  # once each per pass
    assert set(unmanaged) == {str(out / "2026-13-45"), str(out / "2026-02-30"), *map(str, loose),
                              str(cfg.paths.failed / "2026-00-10")}
    assert all(a["path"] not in unmanaged for a in result.plan.actions())
    text = render_text(result.to_dict())
    assert "Left alone" in text and f"{len(unmanaged)} entries" in text and str(out / "2026-13-45") in text


def test_a_pin_is_reported_by_the_name_it_was_made_with(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    folder = out / DATE / "pia"
    pins = []
    for stem, pinned in (("a", "a.mp4"), ("b", "b.json"), ("c", "c.jpg"), ("d", "d")):
        output(out, DATE, "pia", stem, 90)
        pins.append(put(folder / f"{pinned}.keep", 90, 0))
    result = janitor.run_pass(cfg)
    assert result.ok, result.problems
    assert sorted(result.plan.pinned["markers"]) == sorted(map(str, pins))
    assert all((folder / f"{stem}.mp4").exists() for stem in "abcd")


def _old(path: Path) -> None:
    os.utime(path, (1e9, 1e9))


def _chain(top: Path, depth: int) -> Path:
    """top/a/a/a/... *depth* folders deep, built through descriptors (deeper than PATH_MAX), all old."""
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth - 1):
            os.mkdir("a", dir_fd=fd)
            os.utime(fd, (1e9, 1e9))  # after its folder was made in it
            nfd = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.utime(fd, (1e9, 1e9))
    finally:
        os.close(fd)
    _old(top)
    return top


@pytest.fixture
def deep_ok(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, emptied with rm -rf afterwards: pytest's own clean-up recurses and fails on a 3000-deep tree."""
    yield tmp_path
    subprocess.run(["rm", "-rf", str(tmp_path)], check=False)


def test_empty_nested_folders_are_removed_in_bounded_passes(deep_ok: Path) -> None:
    from daemon.janitor import plan as prune

    tmp_path = deep_ok
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    deep = _chain(out / DATE / "ann" / "deep", 3000)                  # deeper than PATH_MAX
    wide = out / DATE / "bob"
    for i in range(300):
        (wide / f"w{i}" / "x").mkdir(parents=True)
        _old(wide / f"w{i}" / "x")
        _old(wide / f"w{i}")
    _old(wide)
    stray = _chain(out / "scratch", 5)                                 # not in the layout, but empty: goes too
    holding = _chain(out / DATE / "cid" / "sub", 4)
    kept_file = put(holding / "a" / "a" / "keep.txt", 90)              # a file somewhere: the tree stays
    young = out / DATE / "dee" / "new" / "x"
    young.mkdir(parents=True)                                          # younger than min_age_hours: stays
    own = output(out, DATE, "ann", "talk", 90)
    _old(out / DATE / "ann")
    _old(out / DATE)

    dry = janitor.run_pass(cfg, dry_run=True)
    planned = {a["path"] for a in dry.plan.actions() if a["reason"] == "empty-folder"}
    assert str(deep) in planned and str(wide / "w0") in planned and str(stray) in planned
    assert deep.is_dir()

    budget = prune.EMPTY_FOLDERS_PER_PASS
    passes = 0
    while (deep.exists() or wide.exists() or stray.exists()) and passes < 10:
        result = janitor.run_pass(cfg)
        assert result.ok, result.problems
        passes += 1
    assert not deep.exists() and not wide.exists() and not stray.exists()
    assert passes <= -(-(3000 + 600 + 5) // budget) + 1
    assert not (out / DATE / "ann").exists() and not any(f.exists() for f in own)
    assert kept_file.exists() and young.is_dir() and out.is_dir()
    assert str(holding) in result.plan.unmanaged


def test_a_pass_looks_at_a_bounded_number_of_empty_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.janitor import plan as prune

    monkeypatch.setattr(prune, "EMPTY_FOLDERS_PER_PASS", 100)
    cfg = make_config(tmp_path)
    user = cfg.paths.outputs / DATE / "bob"
    for i in range(250):
        (user / f"w{i}").mkdir(parents=True)
        _old(user / f"w{i}")
    _old(user)
    left = []
    for _ in range(3):
        result = janitor.run_pass(cfg)
        assert result.ok, result.problems
        assert result.outcome is not None and result.outcome.folders <= 100 + 2
        left.append(len(os.listdir(user)) if user.exists() else 0)
    assert left == [150, 50, 0] and not user.exists()


def test_paths_left_alone_are_named_up_to_a_bound_and_counted(tmp_path: Path) -> None:
    """A folder full of stray files costs the report a bounded list, not a record per file."""
    from daemon.janitor.plan import LISTED

    cfg = make_config(tmp_path)
    folder = cfg.paths.outputs / DATE / "ann"
    folder.mkdir(parents=True)
    for i in range(LISTED + 50):
        (folder / f"notes{i}.txt").write_bytes(b"x")
    result = janitor.run_pass(cfg)
    assert result.ok, result.problems
    doc = result.to_dict()
    assert len(result.plan.unmanaged) == LISTED and doc["unmanaged_count"] == LISTED + 50
    assert f"{LISTED + 50} entries" in render_text(doc)
    assert len(list(folder.iterdir())) == LISTED + 50
