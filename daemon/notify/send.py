"""Sending notifications through Apprise (DingTalk, e-mail, webhooks, ... any Apprise URL or config file).

Apprise is imported only when something is actually sent, so the janitor and the worker start fast.
Every function here logs a failure and returns False instead of raising: a notification that cannot be
sent must never stop a janitor pass or a job. Each entry of notify.urls (and notify.apprise_config) is a
separate target with a stable key, so the caller can remember which targets still need a message.

Job events from workers use notify_job(); one that cannot be delivered is parked in
paths.state/notify-pending/ and retry_pending() (called by every janitor pass) sends it later.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon import names
from daemon.config import Config
from daemon.files import write_atomic
from daemon.notify import messages

log = logging.getLogger(__name__)

JOB_EVENTS = ("job_failed", "job_done")
PENDING_FOLDER = "notify-pending"
# A parked job notification older than this is dropped (with a log line) instead of being sent late.
PENDING_MAX_AGE_SECONDS = 2 * 86400


@dataclass(frozen=True)
class Target:
    """One place to send to: an Apprise URL, or an Apprise configuration file."""

    key: str  # stable id, safe to store and to log (a hash, never the URL: URLs hold secrets)
    label: str  # what logs show: the scheme and the key, or the config file's path
    url: str | None = None
    config_path: str | None = None


def targets(config: Config) -> list[Target]:
    """The configured targets: each notify.urls entry, then notify.apprise_config."""
    out = []
    for url in config.notify.urls:
        key = _digest(url)
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        out.append(Target(key=key, label=f"{scheme}:// #{key[:8]}", url=url))
    path = config.notify.apprise_config
    if path:
        key = _digest(f"config:{path}")
        out.append(Target(key=key, label=f"config {path}", config_path=path))
    return out


def user_targets(config: Config, user: str) -> list[Target]:
    """The person's own targets (notify.users[user]): they hear of their own jobs, and only of those."""
    out = []
    for url in config.notify.users.get(user, ()):
        key = _digest(f"user:{user}:{url}")
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        out.append(Target(key=key, label=f"{names.escape(user)}'s {scheme}:// #{key[:8]}", url=url))
    return out


def _all_targets(config: Config) -> list[Target]:
    """Every target a parked message may be waiting for: ops' and each person's."""
    return targets(config) + [t for user in config.notify.users for t in user_targets(config, user)]


def _digest(text: str) -> str:
    """A short stable key for a target (hashlib is imported here: a pass with nothing to send never needs it)."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def build(target: Target) -> Any:
    """An apprise.Apprise holding just *target*; raises ValueError when Apprise cannot use it."""
    import apprise  # heavy-ish: only when something is sent

    asset = apprise.AppriseAsset(app_id="lipsyncd", app_desc="lipsyncd", storage_mode="memory")
    apobj = apprise.Apprise(asset=asset)
    if target.url is not None:
        if not apobj.add(target.url):
            raise ValueError(f"notify.urls: Apprise does not understand the URL of target {target.label} "
                             "(see https://github.com/caronc/apprise/wiki for the URL forms)")
    else:
        cfg = apprise.AppriseConfig(asset=asset)
        if not cfg.add(target.config_path) or not apobj.add(cfg) or len(apobj) == 0:
            raise ValueError(f"notify.apprise_config: {target.config_path} cannot be read or names no usable URL")
    for plugin in apobj:
        _sign_once(plugin)
    return apobj


def _sign_once(plugin: Any) -> None:
    """Make a signed DingTalk robot's `sign` arrive URL-encoded once, as DingTalk checks it.

    Apprise (2.3) URL-quotes the base64 signature and then hands it to requests as a query parameter,
    which encodes it again: DingTalk receives `%252B...` and answers 310000 "sign not match". The plugin
    still computes the signature; it just gives requests the plain base64 to encode. tests/test_notify.py
    checks the bytes that reach a local server, so an Apprise that changes this is noticed."""
    import urllib.parse

    if type(plugin).__name__ != "NotifyDingTalk" or not getattr(plugin, "secret", None):
        return
    original = plugin.get_signature

    def signature_for_requests() -> tuple[str, str]:
        timestamp, signature = original()
        return timestamp, urllib.parse.unquote(signature)

    plugin.get_signature = signature_for_requests


def deliver(apobj: Any, title: str, body: str, label: str = "") -> bool:
    """Send a Markdown message with a built Apprise object; True when every service accepted it."""
    import apprise

    try:
        ok = bool(apobj.notify(title=title, body=body, body_format=apprise.NotifyFormat.MARKDOWN))
    except Exception as exc:  # noqa: BLE001 - a notifier must never take the caller down
        log.warning("notification to %s failed: %s", label or "target", exc)
        return False
    if not ok:
        log.warning("notification to %s was not accepted (Apprise logs the service's answer at DEBUG level)",
                    label or "target")
    return ok


def send(send_to: list[Target], title: str, body: str) -> dict[str, bool]:
    """Send one message to each target; {target key: delivered}. Never raises."""
    results: dict[str, bool] = {}
    for target in send_to:
        try:
            apobj = build(target)
        except Exception as exc:  # noqa: BLE001
            log.error("cannot send to %s: %s", target.label, exc)
            results[target.key] = False
            continue
        results[target.key] = deliver(apobj, title, body, target.label)
    return results


def validate(config: Config) -> list[str]:
    """Problems with the configured targets, in plain words, without sending anything (for doctor)."""
    problems = []
    for target in targets(config):
        try:
            build(target)
        except Exception as exc:  # noqa: BLE001
            problems.append(str(exc))
    return problems


def notify_job(config: Config, event: str, user: str, stem: str, job_id: str, detail: str) -> bool:
    """Announce a finished or failed job when notify.events asks for it. Never raises.

    detail: the error (its first line is used) for job_failed, the output path for job_done.
    Returns True when every target accepted it, or when there is nothing to send (event not enabled,
    no targets); False when a target failed: the message is then parked for the janitor to retry.
    The job's own person (notify.users[user]) hears of both job events, whatever notify.events says (that is
    for the notify.urls targets); the message is about this one job, so it names no one else's files.
    """
    own = user_targets(config, user) if event in JOB_EVENTS else []
    user, stem = names.escape(user), names.escape(stem)  # from a user: no newline may forge a line of an alert
    try:
        if event not in JOB_EVENTS:
            log.error("notify_job: unknown event %r (known: %s)", event, ", ".join(JOB_EVENTS))
            return False
        send_to = (targets(config) if event in config.notify.events else []) + own
        if not send_to:
            return True
        title, body = messages.job_message(config.notify.language, event, user, stem, job_id, detail,
                                           os.uname().nodename)
        results = send(send_to, title, body)
        failed = [key for key, ok in results.items() if not ok]
        if failed:
            _park(config, f"{job_id}-{event}", title, body, failed)
            log.warning("%s notification for job %s could not be sent to %d target(s); the janitor will retry it",
                        event, job_id, len(failed), extra={"job_id": job_id, "user": user})
        return not failed
    except Exception:  # noqa: BLE001
        log.exception("notify_job failed for job %s", job_id)
        return False


def _pending_dir(config: Config) -> Path:
    return config.paths.state / PENDING_FOLDER


def _park(config: Config, name: str, title: str, body: str, keys: list[str]) -> None:
    folder = _pending_dir(config)
    record = {"title": title, "body": body, "targets": keys, "created": time.time()}
    try:
        os.makedirs(folder, exist_ok=True)
        write_atomic(os.path.join(folder, f"{name}.json"), json.dumps(record, ensure_ascii=False))
    except OSError as exc:
        log.error("cannot park the notification %s in %s for a later retry: %s", name, folder, exc)


def retry_pending(config: Config, now: float | None = None) -> dict[str, int]:
    """Send parked job notifications again; {"sent", "pending", "dropped"}. Never raises."""
    counts = {"sent": 0, "pending": 0, "dropped": 0}
    folder = _pending_dir(config)
    now = time.time() if now is None else now
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return counts
    except OSError as exc:
        log.error("cannot read parked notifications in %s: %s", folder, exc)
        return counts
    by_key = {t.key: t for t in _all_targets(config)}
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
            if now - float(record["created"]) > PENDING_MAX_AGE_SECONDS:
                log.warning("dropping the notification %s: it could not be sent for %.0f hours",
                            name, (now - float(record["created"])) / 3600)
                os.unlink(path)
                counts["dropped"] += 1
                continue
            still = [by_key[k] for k in record["targets"] if k in by_key]
            results = send(still, record["title"], record["body"]) if still else {}
            left = [k for k, ok in results.items() if not ok]
            if left:
                record["targets"] = left
                write_atomic(path, json.dumps(record, ensure_ascii=False))
                counts["pending"] += 1
            else:
                os.unlink(path)
                counts["sent"] += 1
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("parked notification %s is unusable (%s); removing it", path, exc)
            with contextlib.suppress(OSError):
                os.unlink(path)
            counts["dropped"] += 1
    return counts
