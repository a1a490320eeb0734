"""What the janitor leaves alone and what it tidies beyond the outputs themselves: names that are not in the
layout, pins as reported, and empty folders."""

from __future__ import annotations

from pathlib import Path

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
