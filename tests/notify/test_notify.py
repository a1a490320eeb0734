"""Notifications through Apprise to real servers on 127.0.0.1: e-mail (aiosmtpd), json:// webhooks (http.server),
and DingTalk's signed markdown payload, captured by the local HTTP server instead of DingTalk's."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import janitor
from daemon.notify import send as notify
from tests.janitor_support import HttpSink, SmtpSink, free_port, make_config, subject, text_parts

DINGTALK_SECRET = "SECabc123def456"
DINGTALK_TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        yield sink


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


def test_job_failed_by_email_in_chinese(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    cfg = make_config(tmp_path, notify={"urls": [smtp_sink.url(to="oncall@example.com")], "language": "zh",
                                        "events": ["job_failed"]})
    ok = notify.notify_job(cfg, "job_failed", "张三", "产品介绍", "20261127-201530-3fa9c2",
                           "视频里没有找到人脸：请换一个正面清晰的视频\nTraceback (most recent call last): ...")
    assert ok is True
    assert len(smtp_sink.messages) == 1
    message = smtp_sink.messages[0]
    assert subject(message) == "[lipsyncd] 任务失败：张三/产品介绍"
    assert smtp_sink.envelopes[0].rcpt_tos == ["oncall@example.com"]
    parts = text_parts(message)
    html = parts["text/html"]
    assert "张三" in html and "视频里没有找到人脸：请换一个正面清晰的视频" in html
    assert "Traceback" not in html  # only the error's first line
    assert "<li>" in html  # Markdown became a readable HTML list
    assert "JOB_ID=20261127-201530-3fa9c2" in parts["text/plain"]


def test_job_done_only_when_enabled(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    cfg = make_config(tmp_path, notify={"urls": [smtp_sink.url()], "events": ["disk", "job_failed"]})
    assert notify.notify_job(cfg, "job_done", "ann", "intro", "j1", "/outputs/2026-11-27/ann/intro.mp4") is True
    assert smtp_sink.messages == []  # job_done is not in notify.events: nothing sent
    cfg = make_config(tmp_path, notify={"urls": [smtp_sink.url()], "events": ["job_done"]})
    assert notify.notify_job(cfg, "job_done", "ann", "intro", "j1", "/outputs/2026-11-27/ann/intro.mp4") is True
    assert subject(smtp_sink.messages[0]) == "[lipsyncd] Job done: ann/intro"
    assert "/outputs/2026-11-27/ann/intro.mp4" in text_parts(smtp_sink.messages[0])["text/plain"]


def test_json_webhook_and_unknown_event(tmp_path: Path, http_sink: HttpSink) -> None:
    cfg = make_config(tmp_path, notify={"urls": [f"json://127.0.0.1:{http_sink.port}/hook"]})
    assert notify.notify_job(cfg, "job_failed", "bo", "talk", "j2", "ffmpeg exited with status 1") is True
    body = http_sink.json_bodies()[0]
    assert http_sink.requests[0]["path"] == "/hook"
    assert body["title"] == "[lipsyncd] Job failed: bo/talk"
    assert "- Error: ffmpeg exited with status 1" in body["message"]
    assert notify.notify_job(cfg, "job_exploded", "bo", "talk", "j2", "x") is False
    assert len(http_sink.requests) == 1


def test_a_failed_job_notification_never_raises_and_is_retried_by_the_janitor(tmp_path: Path) -> None:
    port = free_port()
    cfg = make_config(tmp_path, notify={"urls": [f"json://127.0.0.1:{port}/", "not a url at all"]})
    assert notify.notify_job(cfg, "job_failed", "cy", "talk", "j3", "out of memory") is False
    parked = list((cfg.paths.state / "notify-pending").glob("*.json"))
    assert len(parked) == 1
    with HttpSink(port=port) as late:
        result = janitor.run_pass(cfg)
        assert result.pending == {"sent": 0, "pending": 1, "dropped": 0}  # the bad URL still fails
        assert late.json_bodies()[0]["title"] == "[lipsyncd] Job failed: cy/talk"
    cfg = make_config(tmp_path, notify={"urls": [f"json://127.0.0.1:{port}/"]})  # the person fixed the config
    assert janitor.run_pass(cfg).pending == {"sent": 1, "pending": 0, "dropped": 0}
    assert list((cfg.paths.state / "notify-pending").glob("*.json")) == []


def test_old_parked_notifications_are_dropped(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, notify={"urls": [f"json://127.0.0.1:{free_port()}/"]})
    assert notify.notify_job(cfg, "job_failed", "di", "talk", "j4", "boom") is False
    later = time.time() + notify.PENDING_MAX_AGE_SECONDS + 60
    assert notify.retry_pending(cfg, later) == {"sent": 0, "pending": 0, "dropped": 1}


def test_validate_names_unusable_targets_without_sending(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, notify={"urls": ["json://127.0.0.1:9/", "nonsense://x"],
                                        "apprise_config": str(tmp_path / "missing.yml")})
    problems = notify.validate(cfg)
    assert len(problems) == 2
    assert "notify.urls" in problems[0] and "nonsense://" in problems[0]
    assert "missing.yml" in problems[1]


def test_apprise_config_file_target(tmp_path: Path, http_sink: HttpSink) -> None:
    config_file = tmp_path / "apprise.yml"
    config_file.write_text(f"urls:\n  - json://127.0.0.1:{http_sink.port}/from-config\n")
    cfg = make_config(tmp_path, notify={"apprise_config": str(config_file)})
    assert notify.notify_job(cfg, "job_failed", "ed", "talk", "j5", "bad audio") is True
    assert http_sink.requests[0]["path"] == "/from-config"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_dingtalk_signed_markdown_payload(tmp_path: Path, http_sink: HttpSink, lang: str) -> None:
    """The README's DingTalk URL is accepted; the real plugin builds, signs and posts the payload, which the
    local server receives instead of oapi.dingtalk.com (the only change: the plugin's notify_url)."""
    url = f"dingtalk://{DINGTALK_SECRET}@{DINGTALK_TOKEN}/"
    cfg = make_config(tmp_path, notify={"urls": [url], "language": lang})
    target = notify.targets(cfg)[0]
    assert DINGTALK_SECRET not in target.label and DINGTALK_TOKEN not in target.label
    apobj = notify.build(target)
    plugin = apobj[0]
    assert type(plugin).__name__ == "NotifyDingTalk"
    assert plugin.notify_url.startswith("https://oapi.dingtalk.com/robot/send")
    plugin.notify_url = f"http://127.0.0.1:{http_sink.port}/robot/send?access_token={{token}}"
    from daemon.notify import messages

    title, body = messages.job_message(lang, "job_failed", "张三", "talk", "j6", "找不到人脸 / no face found", "gpu1")
    assert notify.deliver(apobj, title, body, target.label) is True

    request = http_sink.requests[0]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request["path"]).query)
    assert query["access_token"] == [DINGTALK_TOKEN]
    timestamp = query["timestamp"][0]
    digest = hmac.new(DINGTALK_SECRET.encode(), f"{timestamp}\n{DINGTALK_SECRET}".encode(), hashlib.sha256).digest()
    # Decoded once (as DingTalk's server does) the sign is the base64 HMAC itself: sent URL-encoded once, not
    # twice as Apprise alone does (notify._sign_once); a double-encoded one still holds "%" here.
    assert query["sign"] == [base64.b64encode(digest).decode()]
    assert "%25" not in request["path"]
    assert abs(int(timestamp) / 1000 - time.time()) < 60
    payload = json.loads(request["body"])
    assert payload["msgtype"] == "markdown"
    assert payload["markdown"]["title"] == title
    text = payload["markdown"]["text"]
    assert text.startswith(f"# {title}\n") and "- " in text and "张三" in text and "找不到人脸 / no face found" in text
    assert len(request["body"]) < 20000  # DingTalk's limit


def test_disk_alert_email_from_a_janitor_pass(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    """A real pass on this machine's disk with thresholds set just below its current usage."""
    import os

    st = os.statvfs(tmp_path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    percent = 100 * used / (used + st.f_bavail * st.f_frsize)
    if percent < 4:
        pytest.skip(f"the test disk is almost empty ({percent:.1f}%): cannot put thresholds below it")
    cfg = make_config(tmp_path, notify={"urls": [smtp_sink.url()], "language": "zh"},
                      janitor={"disk": {"clear_percent": 1, "warn_percent": 2, "critical_percent": int(percent) - 1}},
                      logging={"file": str(tmp_path / "lipsyncd.log")})
    (tmp_path / "lipsyncd.log").write_text("x" * 5000)
    (tmp_path / "lipsyncd.log.1").write_text("y" * 3000)
    result = janitor.run_pass(cfg)
    assert result.ok
    assert result.log_file == {"path": str(tmp_path / "lipsyncd.log"), "bytes": 8000, "current_bytes": 5000,
                               "rotated_bytes": 3000, "rotated_files": 1}
    assert len(smtp_sink.messages) == 1
    message = smtp_sink.messages[0]
    assert subject(message).startswith("[lipsyncd] 磁盘严重告警：")
    html = text_parts(message)["text/html"]
    assert "阈值" in html and "本次清理没有释放空间" in html and "7.8 KiB" in html
    assert "<li>" in html
