"""The janitor's plain-text report: one line per path it deletes (or would), then what it kept and saw.

Rendered from the same document as --json, so a dry run and a real pass print the same plan lines
(a real pass only the first REAL_PASS_LINES of them, to keep the journal readable).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import islice
from typing import Any, TextIO

from daemon.janitor.archive import render_lines as archive_lines
from daemon.notify.messages import human

# A real pass (run by the timer, read in the journal) lists this many paths; a dry run lists them all.
REAL_PASS_LINES = 50
# Entries left alone (not in the layout) named one a line; the rest only counted.
UNMANAGED_LINES = 10


def render_text(doc: dict[str, Any], actions: Iterable[dict[str, Any]] | None = None) -> str:
    """*doc* is PassResult.to_dict(); *actions* the plan's paths when doc leaves them out."""
    if doc.get("skipped_busy"):
        return BUSY
    lines = [head(doc["dry_run"])]
    lines += archive_lines(doc.get("archive"))  # archiving comes first in a pass
    listed = 0
    for action in islice(doc["actions"] if actions is None else actions, None if doc["dry_run"] else REAL_PASS_LINES):
        listed += 1
        lines.append(action_line(action))
    return "\n".join(lines) + "\n" + render_tail(doc, listed)


BUSY = "lipsyncd janitor: another pass is running; this one did nothing\n"


def head(dry_run: bool) -> str:
    return "lipsyncd janitor: dry run, nothing was changed; a real pass would do this:" if dry_run \
        else "lipsyncd janitor:"


def action_line(action: dict[str, Any]) -> str:
    if action["reason"] == "empty-folder":
        return f"  rmdir   {'':>10}  {action['path']}  ({action['detail']})"
    return f"  delete  {human(action['size']):>10}  {action['path']}  [{action['reason']}: {action['detail']}]"


class Stream:
    """Writes the report while the pass runs: each step's paths as the plan makes it (Plan.listener), the
    rest once the pass is done. Nothing per path is kept, so the report of a tree of any size costs the same."""

    def __init__(self, out: TextIO, dry_run: bool, as_json: bool) -> None:
        self.out, self.dry_run, self.as_json = out, dry_run, as_json
        self.count = 0  # paths written
        self.limit = None if dry_run or as_json else REAL_PASS_LINES

    def paths(self, actions: Iterable[dict[str, Any]]) -> None:
        """One step's paths (Plan.listener): a real pass prints the first REAL_PASS_LINES, --json all of them,
        one a line (through json's C encoder: with an indent json takes its pure-Python encoder, whose
        closures are reference cycles left to the paused cycle collector)."""
        if self.as_json:
            for action in actions:
                self.out.write(('{\n  "actions": [\n    ' if not self.count else ",\n    ")
                               + json.dumps(action, ensure_ascii=False))
                self.count += 1
            return
        if self.limit is not None and self.count >= self.limit:
            return
        for action in islice(actions, None if self.limit is None else self.limit - self.count):
            if not self.count:
                self.out.write(head(self.dry_run) + "\n")
            self.out.write(action_line(action) + "\n")
            self.count += 1

    def finish(self, doc: dict[str, Any]) -> None:
        """Everything after the paths: *doc* is PassResult.to_dict(actions=False)."""
        if self.as_json:
            if not self.count:
                self.out.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
                return
            rest = {key: value for key, value in doc.items() if key != "actions"}
            self.out.write("\n  ],\n" + json.dumps(rest, ensure_ascii=False, indent=2)[2:] + "\n")
        elif doc.get("skipped_busy"):
            self.out.write(BUSY)
        else:
            if not self.count:
                self.out.write(head(self.dry_run) + "\n")
            archived = archive_lines(doc.get("archive"))  # made before the plan; said after its paths
            if archived:
                self.out.write("\n".join(archived) + "\n")
            self.out.write(render_tail(doc, self.count))


def render_tail(doc: dict[str, Any], listed: int) -> str:
    """The report after its path lines (*listed* of them were printed)."""
    lines: list[str] = []
    if listed < doc["action_count"]:
        lines.append(f"  ... and {doc['action_count'] - listed} more (--json lists every path)")
    totals = doc["totals"]
    if totals:
        parts = ", ".join(f"{reason} {v['files']} files {human(v['bytes'])}"
                          for reason, v in sorted(totals["by_reason"].items()))
        lines.append(f"Total: {totals['files']} files, {human(totals['bytes'])}"
                     + (f" ({parts})" if parts else "") + f"; {totals['folders']} empty folders")
    done = doc.get("done")
    if done:
        lines.append(f"Done: deleted {done['files']} files ({human(done['bytes'])}, {human(done['freed'])} given back "
                     f"to the filesystem), removed {done['folders']} folders")
        for item in done["skipped"]:
            lines.append(f"  skipped {item['path']}: {item['why']}")
        if done.get("skipped_count", 0) > len(done["skipped"]):
            lines.append(f"  ... and {done['skipped_count'] - len(done['skipped'])} more skipped")
        for item in done["errors"]:
            lines.append(f"  FAILED  {item['path']}: {item['error']}")
        if done.get("error_count", 0) > len(done["errors"]):
            lines.append(f"  ... and {done['error_count'] - len(done['errors'])} more FAILED")
    kept = doc.get("kept") or {}
    if kept:
        pinned, young = kept["pinned"], kept["young"]
        lines.append(f"Kept: pinned {pinned['files']} files ({human(pinned['bytes'])}); younger than min_age_hours "
                     f"{young['files']} files ({human(young['bytes'])}); in flight {kept['in_flight']} temp files")
        waiting = kept.get("awaiting_archive") or {}
        if waiting.get("files"):
            lines.append(f"Kept past retention until archived: {waiting['files']} files ({human(waiting['bytes'])})")
    for item in doc.get("refused", []):
        lines.append(f"Refused: {item['path']}: {item['why']}")
    if doc.get("refused_count", 0) > len(doc.get("refused", [])):
        lines.append(f"Refused: ... and {doc['refused_count'] - len(doc['refused'])} more")
    if doc.get("unmanaged_count"):
        lines.append(f"Left alone (not in the outputs/DATE/USER or failed/DATE/USER/NAME layout): "
                     f"{doc['unmanaged_count']} entries:")
        lines += [f"  {path}" for path in doc["unmanaged"][:UNMANAGED_LINES]]
        if doc["unmanaged_count"] > UNMANAGED_LINES:
            lines.append(f"  ... and {doc['unmanaged_count'] - UNMANAGED_LINES} more (--json lists the first 100)")
    for item in doc.get("stale_spool", []):
        lines.append(f"Stale spool folder (reported, not deleted): {item['path']}: {item['why']}")
    for item in doc.get("dead_workers", []):
        verb = "would remove" if doc["dry_run"] else "removed"
        lines.append(f"Dead worker ({verb} its heartbeat file, silent {item['silent_hours']:g} h): {item['path']}")
    jobs = doc.get("jobs") or {}
    if jobs:
        lines.append("Jobs: " + ", ".join(f"{state} {count}" for state, count in sorted(jobs.items())))
    for fs in doc.get("filesystems", []):
        line = (f"Disk {fs['mount']} ({', '.join(fs['folders'])}): {fs['percent']:.1f}% used, "
                f"{human(fs['avail'])} free, level {fs['level']}")
        growth = fs.get("growth")
        if growth and growth.get("days_until_full") is not None:
            line += f", full in about {growth['days_until_full']:.1f} days"
        lines.append(line)
        for n in fs["notifications"]:
            status = "would send" if n["would_send"] else ("sent" if n["sent"] else "NOT SENT (retried next pass)")
            lines.append(f"  {n['kind']} message to {n['target']}: {status}")
    shortfall = doc.get("shortfall")
    if shortfall:
        lines.append(f"Still short: {human(shortfall['needed'])} more must be freed to reach the free-space target; "
                     f"pinned {human(shortfall['pinned'])}, younger than min_age_hours {human(shortfall['young'])}")
    log_file = doc.get("log_file")
    if log_file:
        size = "unreadable" if log_file.get("bytes") is None else human(log_file["bytes"])
        lines.append(f"Log file {log_file['path']}: {size}")
    return "\n".join(lines) + "\n" if lines else ""
