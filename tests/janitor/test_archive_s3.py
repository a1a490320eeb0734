"""Archiving to S3 against a real S3-compatible server: `rclone serve s3` on 127.0.0.1, started and stopped here by
PID. Objects appear as plain files under the served folder, so the bytes are compared directly. Faults are real:
the server killed before and in the middle of an upload, wrong keys, a bucket that does not exist."""

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
from daemon.commands import restore
from daemon.janitor import archive
from daemon.janitor.report import render_text
from tests.archive_support import SECRET, RcloneS3, archived_output, sha256
from tests.janitor_support import HttpSink, kept_logging, make_config

pytest.importorskip("boto3", reason="boto3 is the S3 client (lipsyncd[s3]; dev.sh installs it)")

DATE = "2026-11-20"
BUCKET = "videos"
MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[RcloneS3]:
    server = RcloneS3(tmp_path / "s3")
    (server.root / BUCKET).mkdir(parents=True)
    with server:
        yield server


def config_for(tmp_path: Path, s3: RcloneS3, **archive_keys: object):
    return make_config(tmp_path / "data", janitor={"archive": s3.archive_settings(BUCKET, **archive_keys)})


def stored(s3: RcloneS3, name: str) -> Path:
    return s3.root / BUCKET / "lipsync" / DATE / "alice" / name


def test_outputs_go_to_the_bucket_verified_then_the_local_video_goes(tmp_path: Path, s3: RcloneS3) -> None:
    cfg = config_for(tmp_path, s3)
    files = archived_output(cfg.paths.outputs, DATE, "alice", "promo", 3, size=200_000)
    original = {suffix: path.read_bytes() for suffix, path in files.items()}
    with kept_logging():
        result = janitor.run_pass(cfg)
    assert result.ok, result.problems
    for suffix, data in original.items():
        assert stored(s3, f"promo{suffix}").read_bytes() == data
    assert not files[".mp4"].exists() and files[".jpg"].exists()
    record = json.loads(files[".json"].read_text())["archived"]
    assert record["url"] == f"s3://{BUCKET}/lipsync/{DATE}/alice/promo.mp4"
    assert record["sha256"] == sha256(stored(s3, "promo.mp4")) and record["bytes"] == 200_000
    assert SECRET not in render_text(result.to_dict()) and SECRET not in json.dumps(result.to_dict())

    done = restore.restore(cfg, DATE, "alice", "promo")  # `lipsyncd restore 2026-11-20/alice/promo`
    assert done["url"] == record["url"] and files[".mp4"].read_bytes() == original[".mp4"]


def test_a_large_video_goes_in_parts_each_checked(tmp_path: Path, s3: RcloneS3) -> None:
    cfg = config_for(tmp_path, s3)
    files = archived_output(cfg.paths.outputs, DATE, "alice", "long", 3, size=11 * MIB + 123)
    data = files[".mp4"].read_bytes()
    target = archive.S3Target(cfg.janitor.archive, part_size=5 * MIB)
    sent: list[int] = []
    target.client.meta.events.register("before-send.s3.UploadPart",
                                       lambda request, **_: sent.append(int(request.headers["Content-Length"])))
    report = archive.Archiver(cfg, time.time(), target=target).run()
    assert report.failures == [] and len(report.archived) == 1
    assert sorted(sent) == [MIB + 123, 5 * MIB, 5 * MIB], "three parts of the bounded size"
    assert stored(s3, "long.mp4").read_bytes() == data
    assert not files[".mp4"].exists()


def test_a_server_that_is_down_keeps_everything_and_the_next_pass_archives(tmp_path: Path, s3: RcloneS3) -> None:
    cfg = config_for(tmp_path, s3)
    files = archived_output(cfg.paths.outputs, DATE, "alice", "promo", 3)
    second = archived_output(cfg.paths.outputs, DATE, "alice", "other", 3)
    s3.kill()
    with kept_logging():
        result = janitor.run_pass(cfg)
    assert files[".mp4"].exists() and second[".mp4"].exists()
    assert [f["failure"] for f in result.archive.failures] == ["unreachable"], "one try, then the pass stops"
    assert f"cannot reach the S3 server {s3.endpoint}" in result.problems[0]
    assert "archived" not in json.loads(files[".json"].read_text())
    s3.start()
    with kept_logging():
        again = janitor.run_pass(cfg)
    assert again.ok, again.problems
    assert not files[".mp4"].exists() and stored(s3, "promo.mp4").exists() and stored(s3, "other.mp4").exists()


def test_a_server_killed_mid_upload_leaves_no_object_that_counts(tmp_path: Path, s3: RcloneS3) -> None:
    cfg = config_for(tmp_path, s3)
    files = archived_output(cfg.paths.outputs, DATE, "alice", "long", 3, size=11 * MIB)
    before = files[".mp4"].read_bytes()
    target = archive.S3Target(cfg.janitor.archive, part_size=5 * MIB)
    parts: list[int] = []

    def kill_on_second_part(**_: object) -> None:
        parts.append(1)
        if len(parts) == 2:
            s3.kill()

    target.client.meta.events.register("before-send.s3.UploadPart", kill_on_second_part)
    report = archive.Archiver(cfg, time.time(), target=target).run()
    assert [f["failure"] for f in report.failures] == ["unreachable"], report.failures
    assert files[".mp4"].read_bytes() == before
    assert "archived" not in json.loads(files[".json"].read_text())
    assert not stored(s3, "long.mp4").exists(), "an unfinished multipart upload is no object"
    s3.start()
    with kept_logging():
        again = janitor.run_pass(cfg)
    assert again.ok, again.problems
    assert stored(s3, "long.mp4").read_bytes() == before and not files[".mp4"].exists()


@pytest.mark.parametrize(("settings", "failure", "words"), [
    ({"secret_access_key": "not-the-secret"}, "credentials", "refused the credentials"),
    ({"url": "s3://no-such-bucket/lipsync"}, "no-bucket", "the bucket 'no-such-bucket' does not exist"),
])
def test_wrong_keys_or_a_missing_bucket_keep_the_video_alert_once_and_print_no_secret(
        tmp_path: Path, s3: RcloneS3, settings: dict[str, str], failure: str, words: str) -> None:
    with HttpSink() as sink:
        cfg = config_for(tmp_path, s3, **settings)
        cfg_path = tmp_path / "lipsyncd.yaml"
        cfg_path.write_text(yaml.safe_dump({**json.loads(json.dumps(cfg)),
                                            "notify": {"urls": [f"json://127.0.0.1:{sink.port}/"]}}))
        files = archived_output(cfg.paths.outputs, DATE, "alice", "promo", 3)
        runs = [subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(cfg_path), "janitor", *extra],
                               capture_output=True, text=True, cwd=REPO, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(REPO)}) for extra in ([], ["--json"])]
        assert [run.returncode for run in runs] == [1, 1]
        assert files[".mp4"].exists() and "archived" not in json.loads(files[".json"].read_text())
        assert words in runs[0].stdout and "retried next pass" in runs[0].stdout
        assert words in runs[0].stderr  # the journal's line (stderr where there is no journald)
        assert json.loads(runs[1].stdout)["archive"]["failures"][0]["failure"] == failure
        assert len(sink.requests) == 1, "told once, not every pass"
        told = sink.json_bodies()[0]["message"]
        assert words in told
        for text in (told, *(run.stdout + run.stderr for run in runs), (tmp_path / "data" / "state").as_posix()):
            assert SECRET not in text and "not-the-secret" not in text
        state = (tmp_path / "data" / "state" / "janitor.json").read_text()
        assert SECRET not in state and "not-the-secret" not in state


KILLED_PASS = """
import os, signal, sys, time
from daemon import config as configmod
from daemon.janitor import archive
cfg = configmod.load(sys.argv[1])
target = archive.S3Target(cfg.janitor.archive, part_size=5 * 1024 * 1024)
parts = []
def die_on_second_part(**_):
    parts.append(1)
    if len(parts) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # the janitor killed in the middle of an upload
target.client.meta.events.register("before-send.s3.UploadPart", die_on_second_part)
archive.Archiver(cfg, time.time(), target=target).run()
"""


def test_a_janitor_killed_mid_upload_leaves_nothing_that_counts_as_archived(tmp_path: Path, s3: RcloneS3) -> None:
    cfg = config_for(tmp_path, s3)
    cfg_path = tmp_path / "lipsyncd.yaml"
    cfg_path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    files = archived_output(cfg.paths.outputs, DATE, "alice", "long", 3, size=11 * MIB)
    before = files[".mp4"].read_bytes()
    killed = subprocess.run([sys.executable, "-c", KILLED_PASS, str(cfg_path)], cwd=REPO, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -9
    assert files[".mp4"].read_bytes() == before and "archived" not in json.loads(files[".json"].read_text())
    assert stored(s3, "long.json").exists(), "the upload had started"
    assert not stored(s3, "long.mp4").exists(), "half a video is no object"
    with kept_logging():
        again = janitor.run_pass(cfg)
    assert again.ok, again.problems
    assert stored(s3, "long.mp4").read_bytes() == before and not files[".mp4"].exists()


def test_doctor_checks_the_bucket_and_the_keys(tmp_path: Path, s3: RcloneS3,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.commands.doctor import Report, check_archive

    cases = [({}, "OK    archive s3://videos/lipsync: bucket 'videos'"),
             ({"url": "s3://missing/x"}, "FAIL  archive s3://missing/x: the bucket 'missing' does not exist"),
             ({"secret_access_key": "wrong"}, "FAIL  archive s3://videos/lipsync: the S3 server")]
    for n, (settings, line) in enumerate(cases):
        report = Report()
        check_archive(report, config_for(tmp_path / f"case{n}", s3, **settings))
        out = capsys.readouterr().out
        assert out.startswith(line), out
        assert report.failed == (n > 0) and SECRET not in out


@pytest.mark.parametrize("size", [200_000, 11 * MIB])  # one PUT, and multipart
def test_a_copy_that_changes_on_the_server_before_it_is_verified_keeps_the_video(tmp_path: Path, s3: RcloneS3,
                                                                                 size: int) -> None:
    cfg = config_for(tmp_path, s3)
    files = archived_output(cfg.paths.outputs, DATE, "alice", "promo", 3, size=size)
    target = archive.S3Target(cfg.janitor.archive, part_size=5 * MIB)

    def corrupt_the_stored_video(request: object, **_: object) -> None:
        if str(getattr(request, "url", "")).endswith("promo.mp4"):
            with open(stored(s3, "promo.mp4"), "r+b") as handle:  # the bytes on the server's disk go bad
                handle.write(b"\xff" * 64)

    target.client.meta.events.register("before-send.s3.HeadObject", corrupt_the_stored_video)
    report = archive.Archiver(cfg, time.time(), target=target).run()
    assert [f["failure"] for f in report.failures] == ["mismatch"], report.failures
    assert files[".mp4"].exists() and "archived" not in json.loads(files[".json"].read_text())
