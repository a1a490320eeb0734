"""Archiving to a NAS folder (file://): a real second filesystem (a tmpfs mount), real ENOSPC, real files
changed under the janitor's feet. The local video goes only after its copy is verified; nothing else does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from daemon import janitor
from daemon.janitor import archive
from daemon.janitor.report import render_text
from tests.archive_support import archived_output, sha256
from tests.janitor_support import HttpSink, fill, kept_logging, make_config, mounted_tmpfs

DATE, OLD_DATE = "2026-11-20", "2026-11-01"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def nas(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "nas", "8m") as mount:
        (mount / "lipsync").mkdir()
        yield mount / "lipsync"


def config_for(tmp_path: Path, nas: Path, **archive_keys: object):
    return make_config(tmp_path / "data", janitor={"archive": {"url": f"file://{nas}", **archive_keys}})


def test_old_outputs_are_copied_verified_and_only_then_their_local_video_goes(tmp_path: Path, nas: Path) -> None:
    cfg = config_for(tmp_path, nas)
    out = cfg.paths.outputs
    old = archived_output(out, DATE, "alice", "promo", 3, size=300_000)
    young = archived_output(out, DATE, "alice", "fresh", 1)
    pinned = archived_output(out, DATE, "bob", "keeper", 5)
    (out / DATE / "bob" / "keeper.mp4.keep").touch()
    original = {suffix: path.read_bytes() for suffix, path in old.items()}
    record_mtime = old[".json"].stat().st_mtime_ns

    with kept_logging():
        result = janitor.run_pass(cfg)
    assert result.ok, result.problems
    copy = nas / DATE / "alice"
    for suffix, data in original.items():  # the same relative path as under outputs/, the same bytes
        assert (copy / f"promo{suffix}").read_bytes() == data
    assert not old[".mp4"].exists(), "the verified video's local copy is removed"
    assert old[".jpg"].exists() and old[".json"].exists()
    record = json.loads(old[".json"].read_text())
    assert record["job"] == "job-promo"  # the rest of the record is kept
    assert record["archived"]["url"] == f"file://{nas}/{DATE}/alice/promo.mp4"
    assert record["archived"]["sha256"] == sha256(copy / "promo.mp4")
    assert record["archived"]["bytes"] == 300_000 and record["archived"]["at"].endswith("Z")
    assert old[".json"].stat().st_mtime_ns == record_mtime, "noting the copy must not restart the output's age"
    assert young[".mp4"].exists() and not (nas / DATE / "alice" / "fresh.mp4").exists()
    assert pinned[".mp4"].exists(), "a pinned output is archived but never removed locally"
    assert (nas / DATE / "bob" / "keeper.mp4").read_bytes() == pinned[".mp4"].read_bytes()
    assert "archived" in json.loads(pinned[".json"].read_text())
    assert not [p for p in nas.rglob(".*")], "no temp file is left on the NAS"
    text = render_text(result.to_dict())
    assert f"-> file://{nas}/{DATE}/alice/promo.mp4" in text

    stamp = (nas / DATE / "bob" / "keeper.mp4").stat().st_mtime_ns
    with kept_logging():
        again = janitor.run_pass(cfg)
    assert again.ok and again.archive.archived == [], "an archived output is not uploaded again"
    assert (nas / DATE / "bob" / "keeper.mp4").stat().st_mtime_ns == stamp
    assert pinned[".mp4"].exists()


def test_a_full_nas_keeps_the_local_video_says_so_alerts_once_and_retries(tmp_path: Path, nas: Path) -> None:
    fill(nas.parent, leave_bytes=0)
    with HttpSink() as sink:
        cfg = config_for(tmp_path, nas)
        cfg_path = tmp_path / "lipsyncd.yaml"
        cfg_path.write_text(yaml.safe_dump({**json.loads(json.dumps(cfg)),
                                            "notify": {"urls": [f"json://127.0.0.1:{sink.port}/"]}}))
        files = archived_output(cfg.paths.outputs, DATE, "alice", "promo", 3, size=500_000)
        before = files[".mp4"].read_bytes()

        def janitor_cli() -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(cfg_path), "janitor"],
                                  capture_output=True, text=True, cwd=REPO, timeout=120,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})

        first = janitor_cli()
        assert first.returncode == 1, first.stdout + first.stderr  # the pass did not do all it had to
        assert files[".mp4"].read_bytes() == before
        assert "archived" not in json.loads(files[".json"].read_text())
        assert f"NOT ARCHIVED {files['.mp4']}: the archive folder {nas} is full" in first.stdout
        assert "kept" in first.stdout and "retried next pass" in first.stdout
        assert f"could not archive {files['.mp4']}" in first.stderr  # the journal (stderr without journald)
        assert not list(nas.rglob(".*.part")), "a failed copy leaves no temp file behind"
        assert len(sink.requests) == 1 and "is full" in sink.json_bodies()[0]["message"]

        second = janitor_cli()
        assert second.returncode == 1 and "is full" in second.stdout
        assert len(sink.requests) == 1, "the same failure is not announced every pass"

        for filler in nas.parent.glob("filler-*"):
            filler.unlink()
        third = janitor_cli()
        assert third.returncode == 0, third.stdout + third.stderr
        assert not files[".mp4"].exists() and (nas / DATE / "alice" / "promo.mp4").read_bytes() == before


class _ChangingTarget(archive.FolderTarget):
    """A real folder target; between writing a copy and reading it back, something changes a file."""

    def __init__(self, url: str, change: str, local: Path) -> None:
        super().__init__(url)
        self.change, self.local = change, local

    def _check(self, dest: str, size: int, digest: str) -> None:
        if dest.endswith(".mp4"):
            if self.change == "local":
                with open(self.local, "r+b") as handle:  # someone re-renders the output in place
                    handle.write(b"new bytes")
            else:
                with open(dest, "r+b") as handle:  # the NAS corrupts the copy
                    handle.write(b"\xff" * 16)
        super()._check(dest, size, digest)


@pytest.mark.parametrize(("change", "failure"), [("local", "changed"), ("copy", "mismatch")])
def test_a_file_changed_between_upload_and_verify_keeps_the_local_video(tmp_path: Path, nas: Path, change: str,
                                                                        failure: str) -> None:
    cfg = config_for(tmp_path, nas)
    files = archived_output(cfg.paths.outputs, DATE, "alice", "promo", 3, size=100_000)
    target = _ChangingTarget(cfg.janitor.archive.url, change, files[".mp4"])
    report = archive.Archiver(cfg, time.time(), target=target).run()
    assert files[".mp4"].exists()
    assert "archived" not in json.loads(files[".json"].read_text())
    assert [f["failure"] for f in report.failures] == [failure], report.failures
    assert report.archived == [] and report.removed == []


def test_an_unmounted_nas_holds_expired_videos_until_they_are_archived(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "mnt" / "nas" / "lipsync"  # the share is not mounted: the folder is not there
    cfg = make_config(tmp_path / "data", janitor={"retention": {"default_days": 7},
                                                  "archive": {"url": f"file://{missing}"}})
    expired = archived_output(cfg.paths.outputs, OLD_DATE, "alice", "old", 30)
    with kept_logging():
        result = janitor.run_pass(cfg)
    assert all(path.exists() for path in expired.values()), "retention waits for the archive"
    assert not missing.exists(), "nothing is written onto the local disk in the share's place"
    assert not result.ok and "is the NAS share mounted?" in result.problems[0]
    assert result.plan.awaiting_archive["files"] == 3
    assert "Kept past retention until archived: 3 files" in render_text(result.to_dict())

    from daemon.commands.doctor import Report, check_archive

    check_archive(Report(), cfg)
    assert "FAIL  archive file://" in capsys.readouterr().out
    missing.mkdir(parents=True)
    check_archive(Report(), cfg)
    assert capsys.readouterr().out.startswith(f"OK    archive file://{missing}: {missing} exists")
    with kept_logging():
        janitor.run_pass(cfg)
        assert (missing / OLD_DATE / "alice" / "old.mp4").exists() and not expired[".mp4"].exists()
        final = janitor.run_pass(cfg)  # the archived output now expires as usual: its record and poster go
    assert not expired[".json"].exists() and not expired[".jpg"].exists(), final.plan.actions()


def test_a_rules_archive_days_and_a_dry_run(tmp_path: Path, nas: Path) -> None:
    cfg = make_config(tmp_path / "data", janitor={
        "retention": {"rules": [{"match": "*/bob/*", "days": 30, "archive_days": 0.5}]},
        "archive": {"url": f"file://{nas}", "after_days": 5}})
    out = cfg.paths.outputs
    bob = archived_output(out, DATE, "bob", "quick", 1)
    alice = archived_output(out, DATE, "alice", "slow", 1)
    with kept_logging():
        dry = janitor.run_pass(cfg, dry_run=True)
    assert [w["path"] for w in dry.archive.would] == [str(bob[".mp4"])]
    assert "  archive " in render_text(dry.to_dict()) and str(bob[".mp4"]) in render_text(dry.to_dict())
    assert bob[".mp4"].exists() and not list(nas.rglob("*.mp4")), "a dry run changes nothing"
    with kept_logging():
        janitor.run_pass(cfg)
    assert not bob[".mp4"].exists() and alice[".mp4"].exists()
    assert (nas / DATE / "bob" / "quick.mp4").exists()


# -- the critical watermark with archiving on --------------------------------------------------------------

def critical_outputs(tmp_path: Path, fs: Path, nas_url: str, sink: HttpSink, **archive_keys: object):
    """A 20 MiB outputs filesystem filled past critical with 1 MiB videos 2..17 days old (none due for archiving
    by age: after_days is 30), and the config archiving them to *nas_url*."""
    cfg = make_config(fs, janitor={"retention": {"default_days": 365}, "disk": {"target_free_percent": 30},
                                   "archive": {"url": nas_url, "after_days": 30, **archive_keys}},
                      notify={"urls": [f"json://127.0.0.1:{sink.port}/"]})
    outs = [archived_output(cfg.paths.outputs, "2026-11-01", "uma", f"clip{age:02d}", age, MIB)
            for age in range(2, 18)]
    st = os.statvfs(fs)
    with open(fs / "ballast", "wb") as handle:  # real blocks up to 95% used
        handle.write(b"\0" * int(st.f_bavail * st.f_frsize - st.f_blocks * st.f_frsize * 0.05))
    assert free_percent(fs) <= 6, "setup should fill the tmpfs past critical"
    return cfg, outs


MIB = 1024 * 1024


def free_percent(path: Path) -> float:
    st = os.statvfs(path)
    return 100 * st.f_bavail / st.f_blocks


def test_at_critical_the_oldest_are_archived_then_removed_first(tmp_path: Path, nas: Path) -> None:
    with mounted_tmpfs(tmp_path / "fs", "20m") as fs, HttpSink() as sink, kept_logging():
        cfg, outs = critical_outputs(tmp_path, fs, f"file://{nas}", sink)
        result = janitor.run_pass(cfg)
        assert result.ok, result.problems
        removed = [o for o in outs if not o[".mp4"].exists()]
        assert removed and removed == outs[len(outs) - len(removed):], "oldest first"
        for o in removed:
            assert (nas / "2026-11-01" / "uma" / o[".mp4"].name).stat().st_size == MIB
            assert "archived" in json.loads(o[".json"].read_text()) and o[".jpg"].exists()
        assert free_percent(fs) >= 29.9  # the target (30%), less the janitor state saved on the same tmpfs after it
        assert not [g for g in result.plan.deletions if g.has_video], "nothing unarchived was deleted"


def test_at_critical_unarchivable_outputs_are_kept_when_archive_is_required(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    with mounted_tmpfs(tmp_path / "fs", "20m") as fs, HttpSink() as sink, kept_logging():
        cfg, outs = critical_outputs(tmp_path, fs, f"file://{missing}", sink)
        result = janitor.run_pass(cfg)
        assert all(o[".mp4"].exists() for o in outs), "better a full-disk alert than a lost video"
        assert result.plan.shortfall and result.plan.shortfall["unarchived"] > 0
        told = "\n".join(body["message"] for body in sink.json_bodies())
        assert "kept because they are not archived (janitor.archive.required is true)" in told


def test_at_critical_unarchivable_outputs_go_only_when_not_required_and_the_alert_names_them(
        tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    with mounted_tmpfs(tmp_path / "fs", "20m") as fs, HttpSink() as sink, kept_logging():
        cfg, outs = critical_outputs(tmp_path, fs, f"file://{missing}", sink, required=False)
        result = janitor.run_pass(cfg)
        gone = [o for o in outs if not o[".mp4"].exists()]
        assert gone and gone == outs[len(outs) - len(gone):]
        assert free_percent(fs) >= 29.9
        details = [a["detail"] for a in result.plan.actions() if a["reason"] == "watermark"]
        assert details and all("NOT ARCHIVED" in d for d in details)
        told = "\n".join(body["message"] for body in sink.json_bodies())
        assert "outputs that were NOT archived were deleted" in told
        assert all(str(o[".mp4"]) in told for o in gone), "the alert says which"


# -- restore, status, metrics, the time budget -------------------------------------------------------------

def cli(cfg_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(cfg_path), *argv],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_restore_brings_the_verified_video_back_and_the_janitor_does_not_upload_it_twice(
        tmp_path: Path, nas: Path) -> None:
    cfg = config_for(tmp_path, nas)
    cfg_path = tmp_path / "lipsyncd.yaml"
    cfg_path.write_text(yaml.safe_dump({**json.loads(json.dumps(cfg)),
                                        "metrics": {"textfile": str(tmp_path / "lipsyncd.prom")}}))
    files = archived_output(cfg.paths.outputs, DATE, "alice", "promo", 3, size=50_000)
    waiting = archived_output(cfg.paths.outputs, DATE, "carol", "later", 1)
    data = files[".mp4"].read_bytes()
    sent = sum(path.stat().st_size for path in files.values())
    assert cli(cfg_path, "janitor").returncode == 0
    assert not files[".mp4"].exists()
    prom = (tmp_path / "lipsyncd.prom").read_text()
    assert f"lipsyncd_archive_bytes_total {sent}\n" in prom  # .mp4 + .json (as sent) + .jpg
    assert "lipsyncd_archive_failures 0" in prom
    age = float(prom.split("\nlipsyncd_archive_oldest_unarchived_age_seconds ")[1].split()[0])
    assert 0.9 * 86400 < age < 1.1 * 86400, "carol's day-old output is the oldest without a copy"
    status = cli(cfg_path, "status")
    assert f"Archive to file://{nas}: backlog 0 outputs" in status.stdout, status.stdout

    done = cli(cfg_path, "restore", f"{DATE}/alice/promo")
    assert done.returncode == 0, done.stderr
    assert files[".mp4"].read_bytes() == data and "sha256 checked" in done.stdout
    assert cli(cfg_path, "restore", str(files[".json"])).stdout.startswith(f"{files['.mp4']} is already there")
    stamp = (nas / DATE / "alice" / "promo.mp4").stat().st_mtime_ns
    assert cli(cfg_path, "janitor").returncode == 0
    assert files[".mp4"].exists(), "a restored video stays for after_days"
    assert (nas / DATE / "alice" / "promo.mp4").stat().st_mtime_ns == stamp
    assert waiting[".mp4"].exists()

    never = cli(cfg_path, "restore", f"{DATE}/carol/later")
    assert never.returncode == 1 and "records no archived copy" in never.stderr
    bad = cli(cfg_path, "restore", "alice/promo")
    assert bad.returncode == 2 and "write DATE/USER/STEM" in bad.stderr


def test_a_restore_refuses_a_copy_that_changed_on_the_nas(tmp_path: Path, nas: Path) -> None:
    cfg = config_for(tmp_path, nas)
    cfg_path = tmp_path / "lipsyncd.yaml"
    cfg_path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    files = archived_output(cfg.paths.outputs, DATE, "alice", "promo", 3)
    assert cli(cfg_path, "janitor").returncode == 0
    (nas / DATE / "alice" / "promo.mp4").write_bytes(b"tampered")
    done = cli(cfg_path, "restore", f"{DATE}/alice/promo")
    assert done.returncode == 1 and "differs from what was archived" in done.stderr
    assert not files[".mp4"].exists() and not list(files[".mp4"].parent.glob(".*"))


def test_a_pass_out_of_time_starts_no_new_upload_and_holds_the_rest(tmp_path: Path, nas: Path) -> None:
    cfg = config_for(tmp_path, nas)
    files = archived_output(cfg.paths.outputs, DATE, "alice", "promo", 3)
    report = archive.Archiver(cfg, time.time(), budget=-1).run()
    assert report.out_of_time and report.archived == [] and report.backlog["outputs"] == 1
    assert files[".mp4"].exists() and not list(nas.rglob("*.mp4"))
    assert "time budget" in "\n".join(archive.render_lines(report.to_dict()))


def test_a_file_bind_mounted_onto_an_output_is_never_archived_nor_removed(tmp_path: Path, nas: Path) -> None:
    from tests.janitor.test_mounts import bind_mounted

    cfg = config_for(tmp_path, nas)
    decoy = tmp_path / "precious.mp4"
    decoy.write_bytes(b"someone else's video")
    os.utime(decoy, (time.time() - 5 * 86400,) * 2)  # old enough to be archived
    files = archived_output(cfg.paths.outputs, DATE, "mallory", "clip", 3)
    with bind_mounted(decoy, files[".mp4"]):
        report = archive.Archiver(cfg, time.time()).run()
        assert decoy.read_bytes() == b"someone else's video" and files[".mp4"].exists()
    assert not (nas / DATE / "mallory" / "clip.mp4").exists()
    assert "archived" not in json.loads(files[".json"].read_text())
    assert [f["why"] for f in report.failures] == ["clip.mp4 is a mount point: never archived"]
