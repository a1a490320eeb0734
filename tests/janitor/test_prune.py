"""The janitor's pruning on real folders: retention rules, pins, failed/, temps in flight, what it never touches,
and that --dry-run prints exactly what a real pass then does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from daemon import janitor
from tests.janitor_support import kept_logging, make_config, mounted_tmpfs, output, put

DATE_OLD, DATE_MID, DATE_NEW = "2026-09-01", "2026-11-10", "2026-11-26"


def _paths(plan_actions: list[dict]) -> set[str]:
    return {a["path"] for a in plan_actions}


def _run(cfg, **kw) -> janitor.PassResult:
    result = janitor.run_pass(cfg, **kw)
    assert result.ok, result.problems
    return result


def test_retention_first_matching_rule_wins_and_outputs_go_together(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, janitor={"retention": {"default_days": 7, "rules": [
        {"match": "*/alice/*", "days": 30},       # alice keeps 30 days...
        {"match": "*/*/draft-*", "days": 2},      # ...even her drafts: the first rule wins
        {"match": "*/bob", "days": 60},           # a user's folder
    ]}})
    out = cfg.paths.outputs
    alice_20 = output(out, DATE_MID, "alice", "talk", 20)
    alice_draft = output(out, DATE_MID, "alice", "draft-1", 20)
    alice_40 = output(out, DATE_OLD, "alice", "talk", 40)
    carol_draft = output(out, DATE_NEW, "carol", "draft-x", 3)
    carol_5 = output(out, DATE_NEW, "carol", "final", 5)
    carol_8 = output(out, DATE_MID, "carol", "final", 8)
    bob_40 = output(out, DATE_OLD, "bob", "talk", 40)

    result = _run(cfg)
    deleted = {Path(p) for p in _paths(result.plan.actions()) if Path(p).suffix}
    assert deleted == {*alice_40, *carol_draft, *carol_8}
    for kept in (*alice_20, *alice_draft, *carol_5, *bob_40):
        assert kept.exists()
    for gone in deleted:
        assert not gone.exists()
    details = {a["path"]: a["detail"] for a in result.plan.actions()}
    assert "rule '*/*/draft-*'" in details[str(carol_draft[0])]
    assert "rule '*/alice/*'" in details[str(alice_40[0])]
    assert "default_days" in details[str(carol_8[0])]


def test_an_output_is_as_old_as_its_newest_file(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    files = output(out, DATE_MID, "dan", "talk", 20)
    put(files[1], age_days=1)  # the record was rewritten yesterday: the output is kept, all three files
    _run(cfg)
    assert all(f.exists() for f in files)


def test_never_younger_than_min_age_hours(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, janitor={"retention": {"default_days": 0}, "min_age_hours": 24})
    out = cfg.paths.outputs
    young = output(out, DATE_NEW, "erin", "fresh", 0.5)
    old = output(out, DATE_NEW, "erin", "older", 1.5)
    result = _run(cfg)
    assert all(f.exists() for f in young) and not any(f.exists() for f in old)
    assert result.plan.young["files"] == 3


def test_keep_markers_pin_files_and_folders(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    by_file = output(out, DATE_OLD, "fay", "a", 30)
    put(out / DATE_OLD / "fay" / "a.mp4.keep", 30, 0)          # <file>.keep pins the whole output
    by_stem = output(out, DATE_OLD, "fay", "b", 30)
    put(out / DATE_OLD / "fay" / "b.keep", 30, 0)              # <stem>.keep too
    loose = output(out, DATE_OLD, "fay", "c", 30)
    in_user = output(out, DATE_OLD, "gus", "a", 30)
    put(out / DATE_OLD / "gus" / ".keep", 30, 0)               # .keep in the user folder
    in_date = output(out, DATE_MID, "hal", "a", 30)
    put(out / DATE_MID / ".keep", 30, 0)                       # .keep in the date folder
    result = _run(cfg)
    assert all(f.exists() for f in (*by_file, *by_stem, *in_user, *in_date))
    assert not any(f.exists() for f in loose)
    assert (out / DATE_OLD / "fay" / "a.mp4.keep").exists()
    assert result.plan.pinned["files"] == 12
    markers = result.plan.pinned["markers"]
    assert str(out / DATE_MID / ".keep") in markers and str(out / DATE_OLD / "gus" / ".keep") in markers


def test_keep_marker_in_outputs_root_pins_everything(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, janitor={"keep_marker": ".pin"})
    out = cfg.paths.outputs
    files = output(out, DATE_OLD, "ivy", "a", 90)
    put(out / ".pin", 90, 0)
    result = _run(cfg)
    assert all(f.exists() for f in files) and result.plan.actions() == []


def test_failed_entries_expire_after_failed_days_and_empty_folders_go(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, janitor={"failed_days": 14})
    failed = cfg.paths.failed
    out = cfg.paths.outputs
    old = failed / DATE_OLD / "jo" / "talk"
    put(old / "talk.wav", 20)
    put(old / "error.txt", 20)
    put(old / "sub" / "deeper.txt", 20)
    os.symlink("/etc/passwd", old / "a-link")  # a link inside an entry is removed, never followed
    when = time.time() - 20 * 86400
    os.utime(old / "a-link", (when, when), follow_symlinks=False)
    recent = failed / DATE_NEW / "jo" / "talk"
    put(recent / "error.txt", 5)
    pinned = failed / DATE_OLD / "kim" / "talk"
    put(pinned / "error.txt", 20)
    put(pinned / ".keep", 20, 0)
    output(out, DATE_OLD, "jo", "x", 30)

    result = _run(cfg)
    assert not old.exists() and not (failed / DATE_OLD / "jo").exists()
    assert recent.exists() and pinned.exists()
    assert Path("/etc/passwd").exists()
    assert not (out / DATE_OLD).exists()  # emptied date and user folders are removed
    entry = next(a for a in result.plan.actions() if a["path"] == str(old))
    assert entry["reason"] == "failed-expired" and entry["files"] == 4 and entry["size"] == 3000 + len("/etc/passwd")


def test_temps_in_flight_are_left_alone_abandoned_ones_go(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    spool = cfg.paths.spool
    folder = out / DATE_MID / "lee"
    fresh = put(folder / ".talk.20261127-101010-aaaaaa.part", 0.1)
    running_job = "20261120-101010-bbbbbb"
    (spool / running_job).mkdir()
    slow = put(folder / f".long.{running_job}.part", 3)       # its job is still in the spool
    abandoned = put(folder / ".gone.20261101-101010-cccccc.part", 3)
    json_tmp = put(folder / ".talk.json.x1y2z3.tmp", 3)
    result = _run(cfg)
    assert fresh.exists() and slow.exists()
    assert not abandoned.exists() and not json_tmp.exists()
    assert result.plan.in_flight == 2
    assert {a["reason"] for a in result.plan.actions() if "gone" in a["path"]} == {"abandoned-temp"}


def test_never_through_symlinks_or_outside_the_roots(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    victim = output(outside, DATE_OLD, "mia", "talk", 90)
    cfg = make_config(tmp_path / "data")
    out = cfg.paths.outputs
    inbox = cfg.paths.inbox
    dropped = put(inbox / "mia" / "talk.wav", 90)
    os.symlink(outside / DATE_OLD, out / DATE_OLD)                       # a date folder that is a link
    (out / DATE_MID).mkdir(parents=True)
    os.symlink(outside / DATE_OLD / "mia", out / DATE_MID / "mia")       # a user folder that is a link
    put(out / DATE_NEW / "ned" / "keep.mp4", 90)
    os.symlink(victim[0], out / DATE_NEW / "ned" / "link.mp4")           # a file that is a link
    result = _run(cfg)
    assert all(f.exists() for f in victim) and dropped.exists()
    assert (out / DATE_NEW / "ned" / "link.mp4").is_symlink()
    refused = {r["path"] for r in result.plan.refused}
    assert {str(out / DATE_OLD), str(out / DATE_MID / "mia"), str(out / DATE_NEW / "ned" / "link.mp4")} <= refused
    assert all(a["path"].startswith(str(out) + "/") for a in result.plan.actions())


def test_a_symlinked_root_is_a_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = tmp_path / "real-outputs"
    output(real, DATE_OLD, "ola", "talk", 90)
    cfg = make_config(tmp_path / "data")
    out = cfg.paths.outputs
    out.rmdir()
    os.symlink(real, out)
    with kept_logging():
        assert janitor.main(cfg) == 2
    err = capsys.readouterr().err
    assert "paths.outputs" in err and "symlink" in err and str(real) in err
    assert (real / DATE_OLD / "ola" / "talk.mp4").exists()


def test_outputs_overlapping_the_inbox_is_a_configuration_error(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config(tmp_path, paths={"inbox": str(tmp_path / "outputs" / "inbox")})
    with kept_logging():
        assert janitor.main(cfg) == 2
    assert "overlaps paths.inbox" in capsys.readouterr().err


def test_unmanaged_things_are_left_alone(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    stray = [put(out / "notes.txt", 90), put(out / "archive" / "old.mp4", 90),
             put(out / DATE_OLD / "pat" / "sub" / "x.mp4", 90)]
    result = _run(cfg)
    assert all(f.exists() for f in stray)
    assert len(result.plan.unmanaged) == 3
    assert (out / DATE_OLD / "pat").exists()  # not empty: it holds an unmanaged folder


def test_never_across_a_filesystem_boundary(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    mount = out / DATE_OLD
    with mounted_tmpfs(mount, "4m"):
        files = output(out, DATE_OLD, "quin", "talk", 90)
        failed_mount = cfg.paths.failed / DATE_OLD / "quin" / "talk" / "mnt"
        put(cfg.paths.failed / DATE_OLD / "quin" / "talk" / "error.txt", 90)
        with mounted_tmpfs(failed_mount, "1m"):
            inner = put(failed_mount / "inner.txt", 90)
            result = _run(cfg)
            assert inner.exists()
        assert all(f.exists() for f in files)
        why = {r["path"]: r["why"] for r in result.plan.refused}
        assert "another filesystem" in why[str(mount)]
        assert "another filesystem" in why[str(failed_mount)]


def test_dry_run_prints_exactly_what_the_real_pass_does(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, janitor={"retention": {"default_days": 7, "rules": [{"match": "*/vip/*", "days": 60}]}})
    out = cfg.paths.outputs
    for i, age in enumerate((2, 9, 30, 70, 100)):
        for user in ("vip", "rex", "张三"):
            output(out, f"2026-0{i + 1}-01", user, f"clip{i}", age)
    put(cfg.paths.failed / DATE_OLD / "rex" / "bad" / "error.txt", 30)
    config_file = tmp_path / "lipsyncd.yaml"
    config_file.write_text(yaml.safe_dump(json.loads(json.dumps(cfg)), allow_unicode=True), encoding="utf-8")
    before = sorted(str(p) for p in tmp_path.rglob("*"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config_file), "janitor", *args],
                              capture_output=True, text=True, encoding="utf-8")

    dry_json = cli("--dry-run", "--json")
    dry_text = cli("--dry-run")
    assert dry_json.returncode == 0 and dry_text.returncode == 0, dry_json.stderr
    after_dry = sorted(str(p) for p in tmp_path.rglob("*") if "state" not in p.parts)
    assert after_dry == [p for p in before if "state" not in Path(p).parts]  # a dry run changes nothing
    plan = json.loads(dry_json.stdout)
    assert plan["dry_run"] is True and plan["actions"]
    for action in plan["actions"]:
        assert set(action) >= {"path", "size", "reason"}
        assert action["path"] in dry_text.stdout
    assert plan["totals"]["files"] == sum(a.get("files", 1) for a in plan["actions"] if a["reason"] != "empty-folder")

    real = cli("--json")
    assert real.returncode == 0, real.stderr
    done = json.loads(real.stdout)
    assert done["dry_run"] is False
    assert done["actions"] == plan["actions"]
    assert done["done"]["errors"] == [] and done["done"]["skipped"] == []
    assert done["done"]["files"] == plan["totals"]["files"]
    assert done["done"]["folders"] == plan["totals"]["folders"] > 0  # each emptied folder removed once
    for action in plan["actions"]:
        assert not os.path.lexists(action["path"])
    assert "张三" in real.stdout


def test_a_deletion_that_fails_makes_the_pass_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    files = output(out, DATE_OLD, "sam", "talk", 30)
    output(out, DATE_OLD, "sam", "other", 30)
    if subprocess.run(["chattr", "+i", str(files[0])], capture_output=True).returncode != 0:
        pytest.skip("chattr +i (immutable file) is not supported on this filesystem")
    try:
        with kept_logging():
            code = janitor.main(cfg)
    finally:
        subprocess.run(["chattr", "-i", str(files[0])], check=True)
    assert code == 1
    captured = capsys.readouterr()
    assert f"could not delete {out / DATE_OLD / 'sam'}" in captured.err
    assert not (out / DATE_OLD / "sam" / "other.mp4").exists()  # the rest of the pass went on


def test_state_survives_and_a_second_pass_finds_nothing(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    output(out, DATE_OLD, "tom", "talk", 30)
    first = _run(cfg)
    assert first.outcome is not None and first.outcome.files == 3
    second = _run(cfg, now=time.time() + 60)
    assert second.plan.actions() == []
    state = json.loads((cfg.paths.state / "janitor.json").read_text())
    assert state["freed_total"] >= 1500


def test_files_changed_after_planning_are_not_deleted(tmp_path: Path) -> None:
    from daemon.janitor import delete as safedelete
    from daemon.janitor import plan as prune

    cfg = make_config(tmp_path)
    out = cfg.paths.outputs
    replaced = output(out, DATE_OLD, "uli", "talk", 30)
    swapped = output(out, DATE_OLD, "vera", "talk", 30)
    planner = prune.Planner(cfg, time.time(), None)
    steps = list(planner.steps())  # the whole plan first: each step then opens its folder again from the root
    plan = planner.plan
    assert len(plan.deletions) == 2 and all(step.fd is None for step in steps)
    # After the plan: a new record renamed over talk.json, and vera's folder swapped for a symlink.
    put(tmp_path / "new.json", 0)
    os.replace(tmp_path / "new.json", replaced[1])
    elsewhere = tmp_path / "elsewhere"
    os.rename(out / DATE_OLD / "vera", elsewhere)
    os.symlink(elsewhere, out / DATE_OLD / "vera")
    outcome = safedelete.carry_out(plan, steps)
    assert outcome.files == 0 and outcome.errors == []
    whys = {item["path"]: item["why"] for item in outcome.skipped}
    assert "changed since the plan was made" in whys[str(out / DATE_OLD / "uli" / "talk")]
    assert "symlink" in whys[str(out / DATE_OLD / "vera" / "talk")]
    assert all(f.exists() for f in replaced)  # the output stays whole
    assert all((elsewhere / f.name).exists() for f in swapped)
