"""`lipsyncd status`: the queue, running jobs with progress, workers, recent failures, disk use.

Reads only files (spool, failed/, heartbeats) and the queue, so it works while the daemon runs, when
it is stopped, and from any host of a farm.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from daemon import names
from daemon.config import Config, layout_problems
from daemon.disk import filesystems
from daemon.jobs import spool
from daemon.jobs.workers import describe, worker_table
from daemon.names import ERROR_FILE, JOB_FILE

RECENT_FAILURES = 10
RECENT_RESULTS = 20


def collect(config: Config, user: str | None = None) -> dict[str, Any]:
    """Everything status shows; with *user*, only that person's queue, failures and results."""
    now = time.time()
    lease_seconds = config.queue.lease_seconds
    queued, running = [], []
    try:
        entries = list(spool.jobs(config.paths.spool))
    except PermissionError:  # access.mode private locks the spool: other people's jobs are in it
        entries, unreadable = [], f"the spool ({config.paths.spool}) cannot be read by this account; an admin " \
            "(access.admin_group) or the service sees the queue"
    else:
        unreadable = None
    for entry in entries:
        job = entry.job
        if user is not None and (job is None or job.user != user):
            continue
        item = {"job": entry.id, "user": names.escape(job.user) if job else None,
                "name": names.escape(job.stem) if job else None,
                "attempts": job.attempts if job else None, "age_seconds": round(now - job.created, 1) if job else None}
        if entry.lease is not None and entry.lease_age is not None and entry.lease_age < lease_seconds:
            item.update({k: entry.lease.get(k) for k in ("worker", "host", "device", "stage", "progress")})
            running.append(item)
        else:
            item["lease_stale_seconds"] = round(entry.lease_age, 1) if entry.lease_age is not None else None
            if entry.waiting is not None:  # rendered, but the server cannot take the output now
                item["waiting"] = {k: entry.waiting.get(k) for k in ("reason", "since", "stage")}
            queued.append(item)
    queue_info: dict[str, Any] = {"queued": len(queued), "running": len(running)}
    if unreadable:
        queue_info["error"] = unreadable
    try:
        from daemon.jobs.queue import JobQueue

        job_queue = JobQueue(config)
        queue_info.update({"backend": job_queue.where, "pending_messages": job_queue.depth()})
        job_queue.close()
    except Exception as exc:  # noqa: BLE001 - status must still show the rest
        queue_info["error"] = "; ".join(filter(None, (queue_info.get("error"), str(exc))))
    try:
        workers = worker_table(config.paths.spool, now)
    except PermissionError:
        workers = []
    problems = [str(problem) for problem in layout_problems(config)]  # what run and the janitor refuse
    status = {"config_problems": problems, "queue": queue_info, "running": running, "queued": queued,
              "workers": workers, "recent_failures": recent_failures(config.paths.failed, user=user),
              "disk": [fs.to_dict() for fs in filesystems(config.paths.folders())], "time": now,
              "archive": archive_backlog(config)}
    if user is not None:
        status["user"] = names.escape(user)
        status["results"] = results(config.paths.outputs, user, config.janitor.keep_marker)
    return status


def archive_backlog(config: Config) -> dict[str, Any] | None:
    """What the last janitor pass left to archive (janitor.json), or None when archiving is off."""
    if not config.janitor.archive.url:
        return None
    info: dict[str, Any] = {"url": config.janitor.archive.url, "outputs": None, "bytes": None, "oldest": None,
                            "failures": None, "last_failure": None}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        state = json.loads((config.paths.state / "janitor.json").read_text(encoding="utf-8")).get("archive") or {}
        backlog = state.get("backlog") or {}
        info.update(outputs=backlog.get("outputs"), bytes=backlog.get("bytes"), oldest=backlog.get("oldest"),
                    failures=state.get("failures"), last_failure=state.get("last_failure"),
                    bytes_total=state.get("bytes_total"))
    return info


def results(outputs: Path, user: str, marker: str, limit: int = RECENT_RESULTS) -> list[dict[str, Any]]:
    """One person's results, newest first: a group is <stem>.mp4 with its .json/.jpg, and any of them may be
    gone (the owner deleted the video by hand, the janitor archived it): what is left is shown as it is."""
    found = []
    for day in sorted(_children(outputs), reverse=True):
        folder = day / names.printable(user)
        try:
            entries = {e.name: e for e in os.scandir(folder) if e.is_file(follow_symlinks=False)}
        except OSError:
            continue
        stems = {name.rsplit(".", 1)[0] for name in entries if name.endswith((".mp4", ".json"))
                 and not name.startswith(".")}
        for stem in sorted(stems):
            video = entries.get(f"{stem}.mp4")
            record: dict[str, Any] = {}
            if f"{stem}.json" in entries:
                with contextlib.suppress(OSError, ValueError):
                    record = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
            archived = isinstance(record, dict) and bool(record.get("archived"))
            state = "ready" if video else "archived" if archived else "deleted"
            found.append({"date": day.name, "name": names.escape(stem), "state": state,
                          "bytes": video.stat(follow_symlinks=False).st_size if video else 0,
                          "pinned": f"{stem}.mp4{marker}" in entries or marker in entries,
                          "path": names.escape(str(folder / f"{stem}.mp4"))})
            if len(found) >= limit:
                return found
    return found


def recent_failures(failed: Path, limit: int = RECENT_FAILURES, user: str | None = None) -> list[dict[str, Any]]:
    found = []
    for day in _children(failed):
        # One person's folder by name: in access.mode private a date folder can be traversed, not listed.
        for user_folder in _children(day) if user is None else [day / names.printable(user)]:
            for entry in _children(user_folder):
                error = entry / ERROR_FILE
                try:
                    mtime = error.stat().st_mtime
                except OSError:
                    continue
                found.append((mtime, entry))
    found.sort(reverse=True)
    out = []
    for mtime, entry in found[:limit]:
        reason = ""
        with contextlib.suppress(OSError, ValueError):
            reason = json.loads((entry / JOB_FILE).read_text(encoding="utf-8")).get("error", "")
        out.append({"folder": names.escape(str(entry)), "user": names.escape(entry.parent.name),
                    "name": names.escape(entry.name), "time": mtime,
                    "reason": names.escape(reason.strip().splitlines()[0]) if reason.strip() else ""})
    return out


def _children(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def render_text(status: dict[str, Any]) -> str:
    q = status["queue"]
    backend = f"  ({q['backend']})" if "backend" in q else ""
    lines = [f"Configuration problem: {problem}" for problem in status.get("config_problems", [])]
    if lines:
        lines.append("  (lipsyncd run and the janitor refuse to work until it is fixed; see lipsyncd doctor)")
    lines.append(f"Queue: {q['queued']} waiting, {q['running']} running{backend}")
    if "error" in q:
        lines.append(f"  queue unreachable: {q['error']}")
    for job in status["running"]:
        lines.append(f"  running  {job['job']}  {job['user']}/{job['name']}  {job.get('stage')} "
                     f"{100 * float(job.get('progress') or 0):.0f}%  on {job.get('host')} {job.get('device')}")
    for job in status["queued"][:20]:
        lines.append(f"  waiting  {job['job']}  {job['user']}/{job['name']}")
        if job.get("waiting"):
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(job["waiting"].get("since") or 0)))
            what = {"publish": "rendered, cannot be published",
                    "finish": "published, its poster and sync score cannot be added",
                    "fail": "failed, cannot be filed under failed/"}.get(job["waiting"].get("stage") or "", "waits")
            lines.append(f"           {what} since {since}: {job['waiting'].get('reason')}")
    if len(status["queued"]) > 20:
        lines.append(f"  ... and {len(status['queued']) - 20} more")
    lines.append("Workers:" if status["workers"] else "Workers: none has reported yet")
    lines += [f"  {describe(row)}" for row in status["workers"]]
    lines.append("Recent failures:" if status["recent_failures"] else "Recent failures: none")
    for f in status["recent_failures"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(f["time"]))
        lines.append(f"  {when}  {f['user']}/{f['name']}: {f['reason']}")
        lines.append(f"           {f['folder']}")
    if "results" in status:
        lines.append(f"Results of {status['user']}:" if status["results"] else f"Results of {status['user']}: none")
        for r in status["results"]:
            what = {"ready": _bytes(r["bytes"]), "archived": "archived", "deleted": "video deleted"}[r["state"]]
            lines.append(f"  {r['date']}  {r['name']}  {what}" + ("  pinned" if r["pinned"] else ""))
    lines.append("Disk:")
    for fs in status["disk"]:
        lines.append(f"  {fs['mount']}: {fs['percent']:.1f}% used, {_bytes(fs['avail'])} free "
                     f"({', '.join(fs['folders'])})")
    archive = status.get("archive")
    if archive:
        if archive["outputs"] is None:
            lines.append(f"Archive to {archive['url']}: no janitor pass has recorded it yet")
        else:
            oldest = time.strftime("%Y-%m-%d", time.localtime(archive["oldest"])) if archive["oldest"] else "-"
            lines.append(f"Archive to {archive['url']}: backlog {archive['outputs']} outputs "
                         f"({_bytes(archive['bytes'] or 0)}), oldest from {oldest}; "
                         f"{archive['failures'] or 0} failures in the last pass")
            if archive["last_failure"]:
                lines.append(f"  last failure: {archive['last_failure']}")
    return "\n".join(lines)


def main(config: Config, as_json: bool = False, user: str | None = None) -> int:
    status = collect(config, user)
    if as_json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        print(render_text(status))
    return 0
