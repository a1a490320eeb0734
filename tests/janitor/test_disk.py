"""Disk watermark and alerts on a real size-limited tmpfs (real usage percentages, real ENOSPC), with the
alerts received by a real HTTP server through Apprise's json:// plugin."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import janitor
from tests.janitor_support import HttpSink, free_port, kept_logging, make_config, mounted_tmpfs, output, put

MIB = 1024 * 1024


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "fs", "20m") as mount:
        yield mount


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as server:
        yield server


def used_percent(path: Path) -> float:
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return 100.0 * used / (used + st.f_bavail * st.f_frsize)


def set_usage(mount: Path, percent: float) -> None:
    """Make the filesystem *percent* used with a ballast file (real blocks, not a sparse file)."""
    ballast = mount / "ballast"
    if ballast.exists():
        ballast.unlink()
    st = os.statvfs(mount)
    size = (st.f_blocks) * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    want = int(size * percent / 100) - used
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * max(0, want))
    assert abs(used_percent(mount) - percent) < 1.0


def titles(sink: HttpSink, start: int = 0) -> list[str]:
    return [body["title"] for body in sink.json_bodies()[start:]]


def test_watermark_deletes_oldest_first_until_target_free(fs: Path, sink: HttpSink,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="lipsyncd.janitor")
    cfg = make_config(fs, janitor={"retention": {"default_days": 365},
                                   "disk": {"target_free_percent": 30}},
                      notify={"urls": [f"json://127.0.0.1:{sink.port}/"]})
    out = cfg.paths.outputs
    old = [output(out, "2026-11-01", "uma", f"clip{age:02d}", age, MIB) for age in range(2, 18)]
    pinned = output(out, "2026-10-01", "uma", "oldest", 40, MIB)
    put(out / "2026-10-01" / "uma" / "oldest.keep", 40, 0)
    young = output(out, "2026-11-27", "uma", "new", 0.2, MIB)
    before = used_percent(fs)
    assert before >= 90, f"setup should fill the tmpfs past critical, got {before:.1f}%"

    result = janitor.run_pass(cfg)
    assert result.ok, result.problems
    gone = [files for files in old if not files[0].exists()]
    assert gone, "nothing was pruned"
    for files in gone:
        assert not any(f.exists() for f in files)  # an output goes whole
    # Oldest first: the pruned ones are exactly the oldest of the unpinned, old-enough outputs.
    assert gone == old[len(old) - len(gone):]
    assert all(f.exists() for f in (*pinned, *young))
    after = used_percent(fs)
    assert 100 - after >= 30, f"free space should reach target_free_percent, is {100 - after:.1f}%"
    reasons = {a["reason"] for a in result.plan.actions() if a["reason"] != "empty-folder"}
    assert reasons == {"watermark"}
    # It stopped as soon as the target was reached: one output fewer would not have been enough.
    youngest_pruned = next(g for g in result.plan.deletions if g.name == gone[0][0].stem)
    st = os.statvfs(fs)
    avail, size = st.f_bavail * st.f_frsize, (st.f_blocks - st.f_bfree + st.f_bavail) * st.f_frsize
    assert 100 * (avail - youngest_pruned.freed) / size < 30

    bodies = sink.json_bodies()
    assert len(bodies) == 1 and "CRITICAL" in bodies[0]["title"]
    assert f"{before:.1f}% → {after:.1f}%" in bodies[0]["title"]
    text = bodies[0]["message"]
    assert "Before this pass" in text and "early because the disk was critical" in text
    assert "Pinned: 3 files" in text and "oldest.keep" in text and "Largest users: uma" in text

    # The level is the usage the pass left (below clear_percent): ok, not critical; the message above told
    # both figures, so no recovery message follows, and the log says what happened in the right order.
    (record,) = result.filesystems
    assert (record["level"], record["previous_level"]) == ("ok", "ok")
    assert record["pruned_from_level"] == "critical"
    state = json.loads((cfg.paths.state / "janitor.json").read_text())
    assert state["filesystems"][str(fs)]["level"] == "ok"
    assert f"reached critical ({before:.1f}% used); the pass pruned it to {after:.1f}%: ok -> ok" in caplog.text
    assert "-> critical" not in caplog.text
    janitor.run_pass(cfg, now=time.time() + 600)
    janitor.run_pass(cfg, now=time.time() + 1200)
    assert titles(sink, 1) == []


def test_a_full_disk_real_enospc_is_pruned_and_state_saved(fs: Path) -> None:
    cfg = make_config(fs)
    out = cfg.paths.outputs
    n = 0
    with pytest.raises(OSError) as info:
        while True:
            output(out, "2026-10-01", "vic", f"clip{n}", 30, 512 * 1024)
            n += 1
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as again:
        put(fs / "one-more", 0, 64 * 1024)
    assert again.value.errno == errno.ENOSPC

    result = janitor.run_pass(cfg)
    assert result.ok, result.problems
    assert result.outcome is not None and result.outcome.files >= 3 * (n - 1)
    state = json.loads((cfg.paths.state / "janitor.json").read_text())
    assert state["freed_total"] > 10 * MIB
    assert used_percent(fs) < 10


def test_a_full_disk_that_cannot_be_helped_says_so_plainly(fs: Path, sink: HttpSink,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config(fs, notify={"urls": [f"json://127.0.0.1:{sink.port}/"], "language": "en"})
    out = cfg.paths.outputs
    put(out / ".keep", 0, 0)
    n = 0
    with pytest.raises(OSError):
        while True:
            output(out, "2026-10-01", "wes", f"clip{n}", 30, 512 * 1024)
            n += 1
    with kept_logging():
        code = janitor.main(cfg)
    assert code == 1  # the state could not be saved on the full disk: the pass did not do all it had to
    assert "cannot save the janitor state" in capsys.readouterr().err
    bodies = sink.json_bodies()
    assert len(bodies) == 1, "the alert must go out even though the state cannot be saved"
    assert "CRITICAL" in bodies[0]["title"]
    text = bodies[0]["message"]
    assert "Still not enough" in text and "pinned with .keep" in text and "add disk" in text
    assert "This pass freed nothing" in text


def test_levels_hysteresis_repeat_and_recovery(fs: Path, sink: HttpSink) -> None:
    cfg = make_config(fs, notify={"urls": [f"json://127.0.0.1:{sink.port}/"], "repeat_hours": 6})
    put(cfg.paths.outputs / ".keep", 0, 0)
    t0 = time.time()
    steps = [  # (minutes after t0, percent used, titles expected from this pass)
        (0, 50, []),
        (10, 83, ["Disk warning"]),
        (20, 84, []),
        (7 * 60, 84, ["Still a disk warning"]),
        (7 * 60 + 10, 93, ["Disk CRITICAL"]),
        (7 * 60 + 20, 85, []),            # below critical: warn, but critical was told recently
        (7 * 60 + 30, 78, []),            # below warn, not below clear: still an alert, no message
        (7 * 60 + 40, 70, ["back to normal"]),
        (7 * 60 + 50, 72, []),
        (8 * 60, 83, ["Disk warning"]),   # a new alert after the recovery
    ]
    levels = []
    for minutes, percent, expected in steps:
        set_usage(fs, percent)
        start = len(sink.requests)
        result = janitor.run_pass(cfg, now=t0 + minutes * 60)
        got = titles(sink, start)
        assert len(got) == len(expected), (minutes, percent, got)
        for title, words in zip(got, expected, strict=True):
            assert words in title, (minutes, title)
        levels.append(result.filesystems[0]["level"])
    assert levels == ["ok", "warn", "warn", "warn", "critical", "warn", "warn", "ok", "ok", "warn"]
    state = json.loads((cfg.paths.state / "janitor.json").read_text())
    assert state["filesystems"][str(fs)]["level"] == "warn"


def test_growth_and_days_until_full(fs: Path, sink: HttpSink) -> None:
    cfg = make_config(fs, janitor={"disk": {"warn_percent": 45, "clear_percent": 40}},
                      notify={"urls": [f"json://127.0.0.1:{sink.port}/"]})
    t0 = time.time()
    set_usage(fs, 30)
    janitor.run_pass(cfg, now=t0)
    set_usage(fs, 50)
    result = janitor.run_pass(cfg, now=t0 + 2 * 3600)
    record = result.filesystems[0]
    growth = record["growth"]
    net_per_day = 0.20 * 20 * MIB * 12  # 20 % of 20 MiB in 2 hours
    assert growth["net_bytes_per_day"] == pytest.approx(net_per_day, rel=0.1)
    assert growth["days_until_full"] == pytest.approx(record["avail"] / net_per_day, rel=0.1)
    text = sink.json_bodies()[-1]["message"]
    assert "Full in about" in text and "/day" in text


def test_one_alert_per_filesystem_however_many_folders_it_holds(tmp_path: Path, sink: HttpSink) -> None:
    with mounted_tmpfs(tmp_path / "a", "8m") as a, mounted_tmpfs(tmp_path / "b", "8m") as b:
        cfg = make_config(tmp_path, paths={"outputs": str(a / "outputs"), "failed": str(a / "failed"),
                                           "spool": str(b / "spool"), "inbox": str(b / "inbox"),
                                           "state": str(b / "state")},
                          notify={"urls": [f"json://127.0.0.1:{sink.port}/"]})
        set_usage(a, 85)
        set_usage(b, 20)
        result = janitor.run_pass(cfg)
        by_mount = {r["mount"]: r for r in result.filesystems}
        assert by_mount[str(a)]["folders"] == ["outputs", "failed"]
        assert by_mount[str(b)]["folders"] == ["spool", "inbox", "state"]
        assert by_mount[str(a)]["level"] == "warn" and by_mount[str(b)]["level"] == "ok"
        assert len(result.filesystems) == 3  # a, b, and the one holding avatars/
        bodies = sink.json_bodies()
        assert len(bodies) == 1 and str(a) in bodies[0]["title"]


def test_a_notification_that_cannot_be_sent_is_retried_next_pass(fs: Path) -> None:
    port = free_port()
    cfg = make_config(fs, notify={"urls": [f"json://127.0.0.1:{port}/"]})
    set_usage(fs, 85)
    t0 = time.time()
    first = janitor.run_pass(cfg, now=t0)
    assert first.ok  # an unreachable notifier never fails the pass
    assert [n["sent"] for n in first.filesystems[0]["notifications"]] == [False]
    with HttpSink(port=port) as late:
        second = janitor.run_pass(cfg, now=t0 + 300)
        assert [n["sent"] for n in second.filesystems[0]["notifications"]] == [True]
        assert len(late.requests) == 1 and "Disk warning" in late.json_bodies()[0]["title"]
        janitor.run_pass(cfg, now=t0 + 600)
        assert len(late.requests) == 1


def test_dry_run_sends_nothing_and_saves_nothing(fs: Path, sink: HttpSink) -> None:
    cfg = make_config(fs, notify={"urls": [f"json://127.0.0.1:{sink.port}/"]},
                      metrics={"textfile": str(fs / "lipsyncd.prom")})
    set_usage(fs, 85)
    result = janitor.run_pass(cfg, dry_run=True)
    assert [n["would_send"] for n in result.filesystems[0]["notifications"]] == [True]
    assert sink.requests == []
    assert not (cfg.paths.state / "janitor.json").exists()
    assert not (fs / "lipsyncd.prom").exists()


def test_watermark_goes_date_by_date_and_a_dry_run_plans_exactly_what_the_pass_does(fs: Path) -> None:
    """The watermark reads outputs/ again one date folder at a time, oldest first, holding one date's outputs;
    a dry run counts what the pass would already have deleted (expired outputs, abandoned temps), so its
    plan, folders emptied by the watermark included, is the real pass's."""
    cfg = make_config(fs, janitor={"retention": {"default_days": 365, "rules": [{"match": "*/*/draft-*", "days": 30}]},
                                   "disk": {"target_free_percent": 30}})
    out = cfg.paths.outputs
    output(out, "2026-10-01", "amy", "draft-a", 50, MIB)                 # expired by its rule
    output(out, "2026-10-01", "amy", "a1", 50, MIB)
    put(out / "2026-10-01" / "amy" / ".a2.20261001-101010-aaaaaa.part", 50, MIB)  # an abandoned temp
    output(out, "2026-10-01", "bob", "b1", 49, MIB)
    later = [output(out, "2026-10-15", "amy", f"c{i}", 40 - i, MIB) for i in range(4)]
    latest = [output(out, "2026-11-01", "amy", f"d{i}", 20 - i, MIB) for i in range(10)]
    young = output(out, "2026-11-27", "amy", "new", 0.2, MIB)
    assert used_percent(fs) >= 90
    now = time.time()

    dry = janitor.run_pass(cfg, dry_run=True, now=now)
    real = janitor.run_pass(cfg, now=now)
    assert real.ok, real.problems
    assert dry.plan.actions() == real.plan.actions()
    assert dry.plan.totals() == real.plan.totals() and dry.plan.watermark["outputs"] == real.plan.watermark["outputs"]
    removed = [a["path"] for a in real.plan.actions() if a["reason"] == "empty-folder"]
    day = out / "2026-10-01"
    assert removed == [str(day / "amy"), str(day / "bob"), str(day)]  # emptied by the watermark, then its date
    assert not day.exists()
    taken = [a["path"] for a in real.plan.actions() if a["reason"] == "watermark" and a["path"].endswith(".mp4")]
    assert taken[:2] == [str(day / "amy" / "a1.mp4"), str(day / "bob" / "b1.mp4")]  # the oldest date first
    assert not later[0][0].exists() and all(f.exists() for files in latest for f in files)
    assert all(f.exists() for f in young)
    assert 100 - used_percent(fs) >= 30
