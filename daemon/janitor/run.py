"""`lipsyncd janitor`: one pass that keeps the disk from filling, run by lipsyncd-janitor.timer.

The pass, top to bottom (run_pass): measure the filesystems, archive old outputs when janitor.archive.url
is set (archive.py: copy, verify, then remove the local video), make the prune plan folder by folder
(plan.py) and carry out each folder's step as it comes (delete.py) unless --dry-run, measure again,
decide the disk alerts (alerts.py) and send them (notify/), retry parked job notifications, save the
state (paths.state/janitor.json) and write the metrics textfile. It is safe at any moment: while the
daemon works (files in flight are left alone), while the disk is full (deleting needs no space; state
is written last), and beside another pass (a lock makes the second one stop politely).

Imports only the standard library and lipsyncd's own light modules: never torch, cv2, librosa or
numpy, and Apprise only when a message is actually sent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from daemon import disk
from daemon import log as logsetup
from daemon.config import Config, ConfigError, check_layout
from daemon.files import write_atomic
from daemon.janitor import alerts, spoolreport
from daemon.janitor import delete as safedelete
from daemon.janitor import plan as prune
from daemon.janitor.report import Stream
from daemon.names import Exit
from daemon.notify import send as notify

log = logging.getLogger("lipsyncd.janitor")

STATE_FILE = "janitor.json"
USAGE_FILE = "disk-history.jsonl"  # one line per pass: the web page's disk chart (daemon/web)
USAGE_MAX_BYTES, USAGE_KEEP_LINES = 1 << 20, 4000  # past the size, only the newest lines are kept
LOCK_FILE = "janitor.lock"
STATE_VERSION = 1
TOP_N = 5


@dataclass
class PassResult:
    """Everything a pass did or would do; to_dict() is the --json document."""

    dry_run: bool
    started: float
    duration: float = 0.0
    plan: prune.Plan | None = None
    outcome: safedelete.Outcome | None = None
    filesystems: list[dict[str, Any]] = field(default_factory=list)
    spool: spoolreport.SpoolReport | None = None
    log_file: dict[str, Any] | None = None
    pending: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped_busy: bool = False
    archive: Any = None  # archive.Report when janitor.archive.url is set

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self, actions: bool = True) -> dict[str, Any]:
        """The --json document; without *actions* the per-path list is left out (text output streams it)."""
        plan = self.plan
        return {
            "dry_run": self.dry_run,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "duration_seconds": round(self.duration, 3),
            "ok": self.ok,
            "problems": self.problems,
            "skipped_busy": self.skipped_busy,
            "actions": plan.actions() if plan and actions else [],
            "action_count": plan.action_count() if plan else 0,
            "totals": plan.totals() if plan else {},
            "done": self.outcome.to_dict() if self.outcome else None,
            "kept": {"pinned": plan.pinned, "young": plan.young, "in_flight": plan.in_flight,
                     "awaiting_archive": plan.awaiting_archive} if plan else {},
            "refused": plan.refused if plan else [],
            "refused_count": plan.refused_count if plan else 0,
            "unmanaged": plan.unmanaged if plan else [],
            "unmanaged_count": plan.unmanaged_count if plan else 0,
            "watermark": plan.watermark if plan else {},
            "shortfall": plan.shortfall if plan else None,
            "users": {u: {"bytes": b, "files": f} for u, (b, f) in sorted(plan.users.items())} if plan else {},
            "jobs": self.jobs(),
            "stale_spool": self.spool.stale if self.spool else [],
            "dead_workers": self.spool.dead_workers if self.spool else [],
            "filesystems": self.filesystems,
            "log_file": self.log_file,
            "pending_notifications": self.pending,
            "archive": self.archive.to_dict() if self.archive else None,
        }

    def jobs(self) -> dict[str, int]:
        counts = dict(self.spool.states) if self.spool else {}
        if self.plan:
            counts["failed"] = self.plan.failed_entries
            counts["done"] = self.plan.outputs_left
        return counts


def main(config: Config, dry_run: bool = False, as_json: bool = False) -> int:
    """One janitor pass. Exit status: 0 ok (alerts included), 1 the pass failed, 2 configuration error."""
    logsetup.setup(config.logging, service=True)
    try:
        check_layout(config)
    except ConfigError as exc:
        print(f"lipsyncd janitor: configuration error: {exc}", file=sys.stderr)
        return Exit.USAGE
    stream = Stream(sys.stdout, dry_run, as_json)  # each path as the plan reaches it: nothing per path is kept
    try:
        result = run_pass(config, dry_run=dry_run, listener=stream.paths)
    except Exception as exc:  # noqa: BLE001 - report in plain words, exit 1
        log.exception("the janitor pass failed")
        print(f"lipsyncd janitor: the pass failed: {exc}", file=sys.stderr)
        if as_json and stream.count:  # close the document the paths were written into
            stream.finish({"dry_run": dry_run, "ok": False, "problems": [f"the pass failed: {exc}"]})
        sys.stdout.flush()
        return Exit.FAILED
    stream.finish(result.to_dict(actions=False))
    sys.stdout.flush()
    for problem in result.problems:
        print(f"lipsyncd janitor: {problem}", file=sys.stderr)
    return Exit.OK if result.ok else Exit.FAILED


@contextlib.contextmanager
def _pass_lock(state_dir: str | os.PathLike[str], dry_run: bool) -> Iterator[bool]:
    """An exclusive lock per state folder; yields False when another pass holds it. Dry runs take none."""
    if dry_run:
        yield True
        return
    os.makedirs(state_dir, exist_ok=True)
    fd = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def run_pass(config: Config, *, dry_run: bool = False, now: float | None = None,
             listener: Callable[[Iterator[dict[str, Any]]], None] | None = None) -> PassResult:
    """The pass itself (no printing): measure, plan, carry out (unless a dry run), measure, alerts, state.

    *listener* is handed each step's planned paths as the plan makes it, and the plan then keeps none (memory stays
    flat in the size of the tree); without one the plan keeps every step (result.plan.actions()).
    *now* is for tests that need a fixed clock."""
    started = time.time() if now is None else now
    clock = time.monotonic()
    result = PassResult(dry_run=dry_run, started=started)
    paths = config.paths
    with _pass_lock(paths.state, dry_run) as acquired:
        if not acquired:
            log.warning("another janitor pass is running (lock %s); this one does nothing",
                        os.path.join(paths.state, LOCK_FILE))
            result.skipped_busy = True
            return result
        state = load_state(paths.state)
        before = disk.filesystems(paths.folders())
        outputs_fs = next((fs for fs in before if "outputs" in fs.folders), None)
        hold = None
        if config.janitor.archive.url:  # copy, verify, then remove local videos, before the prune plan is made
            outputs_fs, hold = _archive(config, result, started, dry_run, outputs_fs)
        planner = prune.Planner(config, started, outputs_fs, hold=hold, listener=listener)
        with _no_cyclic_gc():
            if dry_run:
                planner.build()  # every step made and recorded, none carried out: main() prints the plan
            else:
                result.outcome = safedelete.carry_out(planner.plan, planner.steps())  # each folder as it is read
                result.problems += [f"could not delete {error['path']}: {error['error']}"
                                    for error in result.outcome.errors]
                if result.outcome.error_count > len(result.outcome.errors):
                    result.problems.append(f"... and {result.outcome.error_count - len(result.outcome.errors)} "
                                           "more could not be deleted")
        result.plan = planner.plan
        if planner.plan.unmanaged:  # once per pass, however many there are
            log.info("left alone %d entries not in the outputs/failed layout, e.g. %r",
                     planner.plan.unmanaged_count, planner.plan.unmanaged[0])
        freed = _freed_by_dev(planner.plan, result.outcome)
        after = _estimate_after(before, freed) if dry_run else disk.filesystems(paths.folders())
        result.spool = spoolreport.scan(paths.spool, started, config.queue.lease_seconds)
        try:
            result.spool.dead_workers = spoolreport.dead_workers(str(paths.spool), started,
                                                                 config.queue.lease_seconds, remove=not dry_run)
        except OSError as exc:
            result.problems.append(f"cannot remove dead workers' heartbeat files in {paths.spool}: "
                                   f"{exc.strerror or exc}")
        result.log_file = log_file_size(config.logging.file)
        decision = alerts.decide_pass(config, state, before, after, freed, _facts(config, result), started)
        result.filesystems = decision.filesystems
        _announce(decision, after, dry_run)
        if dry_run:  # nothing sent, nothing saved
            result.duration = time.monotonic() - clock
            return result
        result.pending = notify.retry_pending(config, started)
        if result.archive is not None:
            _archive_alert(config, state, decision.state, result)
        _save(paths.state, decision.state, result, time.monotonic() - clock)
        _record_usage(paths.state, result)
        result.duration = time.monotonic() - clock
        if config.metrics.textfile:
            _write_metrics(config.metrics.textfile, result, decision.state)
    return result


def _archive(config: Config, result: PassResult, started: float, dry_run: bool,
             outputs_fs: disk.FsUsage | None) -> tuple[disk.FsUsage | None, prune.ArchiveHold]:
    """The archive part of a pass (archive.py); the outputs filesystem as it is after it, and what the prune plan
    must hold back. At the critical watermark, younger outputs are archived and their videos removed first."""
    from daemon.janitor import archive

    critical: float | None = None
    if outputs_fs is not None and outputs_fs.percent >= config.janitor.disk.critical_percent:
        critical = config.janitor.disk.target_free_percent
    report = archive.Archiver(config, started, dry_run=dry_run, critical=critical).run()
    result.archive = report
    if report.failures:
        first = report.failures[0]
        result.problems.append(f"could not archive {len(report.failures)} outputs to {report.url} (first: "
                               f"{first['path']}: {first['why']}); the local files are kept and retried next pass")
    if report.removed and outputs_fs is not None:
        outputs_fs = next((fs for fs in disk.filesystems(config.paths.folders()) if "outputs" in fs.folders),
                          outputs_fs)
    return outputs_fs, prune.ArchiveHold(report.archived_videos, config.janitor.archive.required)


def _archive_alert(config: Config, prior: dict[str, Any], state: dict[str, Any], result: PassResult) -> None:
    """Archive trouble told once per kind, and videos the watermark deleted unarchived; kept in the state."""
    from daemon.janitor import archive

    plan = result.plan
    unarchived = [plan.path_of(g, g.name + ".mp4") for g in plan.deletions if g.unarchived] if plan else []
    held = (plan.shortfall or {}).get("unarchived", 0) if plan else 0
    state["archive"] = archive.alert(config, prior.get("archive", {}), result.archive, unarchived, held)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cycle collector while the tree is read: each folder's plan is many small tuples and lists
    that hold no cycles, and the collector's repeated walks over them cost as much as the scan itself."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            # Move what the pass allocated straight to the oldest generation: enabling the collector with
            # them all still "young" makes its next run walk every one of them (~20 ms for 100k files).
            gc.freeze()
            gc.enable()
            gc.unfreeze()


def _freed_by_dev(plan: prune.Plan, outcome: safedelete.Outcome | None) -> dict[int, int]:
    """Bytes given back per filesystem (st_dev): what the pass freed, or (dry run) what it would."""
    freed: dict[int, int] = {}
    by_root = outcome.freed_by_root if outcome is not None else plan.freed_by_root
    for root, size in by_root.items():
        freed[plan.devs[root]] = freed.get(plan.devs[root], 0) + size
    return freed


def _estimate_after(before: list[disk.FsUsage], freed: dict[int, int]) -> list[disk.FsUsage]:
    """What a real pass would leave (dry run): the planned bytes moved from used to available."""
    return [disk.FsUsage(fs.mount, fs.dev, list(fs.folders), max(0, fs.used - freed.get(fs.dev, 0)),
                         fs.avail + freed.get(fs.dev, 0)) for fs in before]


def _facts(config: Config, result: PassResult) -> dict[str, Any]:
    """What a disk message tells about this pass (alerts.decide_pass adds each filesystem's own)."""
    plan = result.plan
    if result.outcome is not None:
        freed = {"bytes": result.outcome.bytes, "files": result.outcome.files, "by_reason": result.outcome.by_reason}
    else:
        totals = plan.totals()
        freed = {"bytes": totals["bytes"], "files": totals["files"],
                 "by_reason": {r: v["bytes"] for r, v in totals["by_reason"].items()}}
    users = sorted(((u, v[0]) for u, v in plan.users.items() if v[0] > 0), key=lambda x: -x[1])[:TOP_N]
    dates = sorted(((d, b) for d, b in plan.dates.items() if b > 0), key=lambda x: -x[1])[:TOP_N]
    return {"host": os.uname().nodename,  # = socket.gethostname(), without importing socket at start-up
            "disk": config.janitor.disk, "freed": freed, "shortfall": plan.shortfall,
            "top_users": users, "top_dates": dates, "pinned": plan.pinned,
            "keep_marker": config.janitor.keep_marker, "min_age_hours": config.janitor.min_age_hours,
            "stale_spool": len(result.spool.stale) if result.spool else 0, "log_file": result.log_file}


def _announce(decision: alerts.Decision, after: list[disk.FsUsage], dry_run: bool) -> None:
    """Send the decided messages (a dry run only lists them), mark who accepted, log what changed."""
    for fs, record in zip(after, decision.filesystems, strict=True):
        for message in decision.messages:
            if message.mount != fs.mount:
                continue
            sent = {} if dry_run else notify.send(message.targets, message.title, message.body)
            for target in message.targets:
                ok = sent.get(target.key, False)
                record["notifications"].append({"target": target.label, "kind": message.kind,
                                                "title": message.title, "sent": ok, "would_send": dry_run})
                if ok:
                    alerts.delivered(decision.state, message, target)
                elif not dry_run:
                    log.warning("disk %s message for %s could not be sent to %s; it is retried next pass",
                                message.kind, fs.mount, target.label)
        if dry_run:
            continue
        if record.get("pruned_from_level"):
            log.warning("disk %s reached %s (%.1f%% used); the pass pruned it to %.1f%%: %s -> %s", fs.mount,
                        record["pruned_from_level"], record["percent_before"], fs.percent, record["previous_level"],
                        record["level"])
        elif record["level"] != record["previous_level"]:
            log.warning("disk %s: %s -> %s (%.1f%% used)", fs.mount, record["previous_level"], record["level"],
                        fs.percent)


def _save(state_dir: str | os.PathLike[str], state: dict[str, Any], result: PassResult, duration: float) -> None:
    state["last_run"] = {"started": result.started, "duration": duration,
                         "freed": result.outcome.freed if result.outcome else 0}
    try:
        save_state(state_dir, state)
    except OSError as exc:
        result.problems.append(f"cannot save the janitor state in {state_dir}: {exc.strerror or exc}")
        log.error("cannot save the janitor state in %s: %s", state_dir, exc)


def _record_usage(state_dir: str | os.PathLike[str], result: PassResult) -> None:
    """Append this pass's disk usage to USAGE_FILE, bounded: a chart needs no more than the newest lines."""
    point = {"time": round(result.started), "filesystems": [
        {k: fs.get(k) for k in ("mount", "used", "avail", "percent", "level")} for fs in result.filesystems]}
    path = os.path.join(state_dir, USAGE_FILE)
    try:
        with open(path, "a+", encoding="utf-8") as handle:
            handle.write(json.dumps(point, ensure_ascii=False) + "\n")
            if handle.tell() > USAGE_MAX_BYTES:
                handle.seek(0)
                write_atomic(path, "".join(handle.readlines()[-USAGE_KEEP_LINES:]))
    except OSError as exc:
        result.problems.append(f"cannot record disk usage in {path}: {exc.strerror or exc}")


def log_file_size(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """logging.file's size, plus its rotated copies (name.1, name.2.gz, name-20261127...) beside it."""
    if not path:
        return None
    folder, name = os.path.split(os.path.abspath(path))
    current = rotated = 0
    copies = 0
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.name == name:
                    current = entry.stat(follow_symlinks=False).st_size
                elif entry.name.startswith((name + ".", name + "-")):
                    rotated += entry.stat(follow_symlinks=False).st_size
                    copies += 1
    except OSError as exc:
        return {"path": str(path), "bytes": None, "error": exc.strerror or str(exc)}
    return {"path": str(path), "bytes": current + rotated, "current_bytes": current, "rotated_bytes": rotated,
            "rotated_files": copies}


def load_state(state_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = os.path.join(state_dir, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        if isinstance(state, dict) and state.get("version") == STATE_VERSION:
            return state
        log.warning("%s is from another version; starting a new janitor state", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); starting a new janitor state", path, exc)
    return {"version": STATE_VERSION}


def save_state(state_dir: str | os.PathLike[str], state: dict[str, Any]) -> None:
    os.makedirs(state_dir, exist_ok=True)
    write_atomic(os.path.join(state_dir, STATE_FILE), json.dumps(state, ensure_ascii=False, indent=1))


def _write_metrics(path: str | os.PathLike[str], result: PassResult, state: dict[str, Any]) -> None:
    from daemon.janitor import metrics

    plan = result.plan
    outcome = result.outcome
    failures = sum(1 for fs in result.filesystems for n in fs["notifications"] if not n["sent"])
    data = metrics.janitor_metrics(
        filesystems=[{**fs, "level": fs["level_number"]} for fs in result.filesystems],
        users=plan.users if plan else {}, jobs=result.jobs(),
        freed=outcome.bytes if outcome else 0, deleted_files=outcome.files if outcome else 0,
        pinned_bytes=plan.pinned["bytes"] if plan else 0, freed_total=int(state.get("freed_total", 0)),
        log_file_bytes=(result.log_file or {}).get("bytes"), started=result.started, duration=result.duration,
        success=result.ok, notify_failures=failures + result.pending.get("pending", 0))
    report = result.archive
    if report is not None:
        oldest = report.oldest_unarchived
        data += metrics.archive_metrics(bytes_total=int(state.get("archive", {}).get("bytes_total", 0)),
                                        failures=len(report.failures), backlog_outputs=report.backlog["outputs"],
                                        oldest_unarchived_age=None if oldest is None else result.started - oldest)
    try:
        metrics.write(path, data)
    except OSError as exc:
        result.problems.append(f"cannot write the metrics textfile {path}: {exc.strerror or exc}")
        log.error("cannot write the metrics textfile %s: %s", path, exc)
        if exc.errno == errno.ENOENT:
            log.error("the folder of metrics.textfile does not exist: create it or change metrics.textfile")
