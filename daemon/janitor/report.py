"""The janitor's plain-text report: one line per path it deletes (or would), then what it kept and saw.

Rendered from the same document as --json, so a dry run and a real pass print the same plan lines
(a real pass only the first REAL_PASS_LINES of them, to keep the journal readable).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any

from daemon.janitor.archive import render_lines as archive_lines
from daemon.notify.messages import human

# A real pass (run by the timer, read in the journal) lists this many paths; a dry run lists them all.
REAL_PASS_LINES = 50
# Entries left alone (not in the layout) named one a line; the rest only counted.
UNMANAGED_LINES = 10


def render_text(doc: dict[str, Any], actions: Iterable[dict[str, Any]] | None = None) -> str:
    """*doc* is PassResult.to_dict(); *actions* the plan's paths when doc leaves them out."""
    lines: list[str] = []
    if doc.get("skipped_busy"):
        return "lipsyncd janitor: another pass is running; this one did nothing\n"
    head = "lipsyncd janitor: dry run, nothing was changed; a real pass would do this:" if doc["dry_run"] \
        else "lipsyncd janitor:"
    lines.append(head)
    lines += archive_lines(doc.get("archive"))  # archiving comes first in a pass
    listed = 0
    limit = None if doc["dry_run"] else REAL_PASS_LINES
    for action in islice(doc["actions"] if actions is None else actions, limit):
        listed += 1
        if action["reason"] == "empty-folder":
            lines.append(f"  rmdir   {'':>10}  {action['path']}  ({action['detail']})")
        else:
            lines.append(f"  delete  {human(action['size']):>10}  {action['path']}  "
                         f"[{action['reason']}: {action['detail']}]")
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
        for item in done["errors"]:
            lines.append(f"  FAILED  {item['path']}: {item['error']}")
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
    return "\n".join(lines) + "\n"
