"""notify.users: each person hears of their own jobs, through a real daemon and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.notify import send as notify
from tests.daemon_harness import Daemon, drop_pair, failures, outputs, wait_for, write_config
from tests.janitor_support import HttpSink, free_port, make_config

pytestmark = pytest.mark.timeout(180)


def test_each_person_hears_of_their_own_jobs_only(tmp_path: Path, short_wav: Path, small_mp4: Path) -> None:
    with HttpSink() as sink:
        hook = f"json://127.0.0.1:{sink.port}"
        config = write_config(tmp_path, notify={"urls": [f"{hook}/ops"], "events": ["job_failed"],
                                                "users": {"ann": [f"{hook}/ann"], "bo": [f"{hook}/bo"]}})
        bad = tmp_path / "noise.wav"
        bad.write_bytes(b"this is not audio\n" * 50)
        with Daemon(config):
            drop_pair(tmp_path / "inbox" / "ann", "ann-secret-talk", short_wav, small_mp4)
            drop_pair(tmp_path / "inbox" / "bo", "bo-private-pitch", bad, small_mp4)
            drop_pair(tmp_path / "inbox" / "cy", "cy-notes", short_wav, small_mp4)  # cy has no targets of her own
            wait_for(lambda: len(outputs(tmp_path)) == 2 and failures(tmp_path), 90, "two results and a failure")
            wait_for(lambda: len(sink.requests) >= 3, 30, "the three messages")
        by_path: dict[str, list[str]] = {}
        for request in sink.requests:
            body = json.loads(request["body"])
            by_path.setdefault(request["path"], []).append(body["title"] + "\n" + body["message"])

    assert sorted(by_path) == ["/ann", "/bo", "/ops"], by_path
    (ann,), (bo,), (ops,) = by_path["/ann"], by_path["/bo"], by_path["/ops"]
    # ann hears her job is done (job_done is not in notify.events: that is for ops), with her result's path
    assert "Job done: ann/ann-secret-talk" in ann and "outputs/" in ann, ann
    # bo hears of his failure; ops hear of it too (job_failed is in events), and of nothing else
    assert "Job failed: bo/bo-private-pitch" in bo and "Job failed: bo/bo-private-pitch" in ops
    for theirs, others in ((ann, ("bo", "cy-notes")), (bo, ("ann", "cy-notes"))):
        for word in others:
            assert word not in theirs, f"{word!r} named in another person's message: {theirs}"


def test_a_persons_message_that_cannot_be_sent_is_retried_for_them_alone(tmp_path: Path) -> None:
    port = free_port()  # nobody listens yet
    cfg = make_config(tmp_path, notify={"users": {"ann": [f"json://127.0.0.1:{port}/ann"]}})
    assert notify.notify_job(cfg, "job_done", "ann", "intro", "j9", "/outputs/2026-12-01/ann/intro.mp4") is False
    assert len(list((cfg.paths.state / "notify-pending").glob("*.json"))) == 1
    with HttpSink(port=port) as sink:
        assert notify.retry_pending(cfg)["sent"] == 1
    assert [r["path"] for r in sink.requests] == ["/ann"]
    assert "ann/intro" in json.loads(sink.requests[0]["body"])["title"]
