"""Disk alert levels with hysteresis, and when each notification target must hear about them.

A level is announced once when entered (or raised), repeated every notify.repeat_hours while it lasts,
and followed by a recovery message when usage falls below clear_percent. What each target was last told
is kept per target, so a target that could not be reached is simply told on the next pass, and a usage
that flaps around a threshold does not produce a message every few minutes.

decide_pass is the whole decision of a pass, and only a decision: the janitor (run.py) sends the messages
it returns, marks the targets that accepted them, and saves the state it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from daemon import disk
from daemon.config import Config, DiskConfig
from daemon.disk import FsUsage
from daemon.notify.messages import disk_message
from daemon.notify.send import Target, targets

OK, WARN, CRITICAL = "ok", "warn", "critical"
RANK = {OK: 0, WARN: 1, CRITICAL: 2}
# What a target is sent.
ENTER, REPEAT, CLEAR = "enter", "repeat", "clear"


def level_for(percent: float, previous: str, disk: DiskConfig) -> str:
    """The alert level for *percent* used, given the level of the previous pass.

    At or above critical_percent: critical; at or above warn_percent: warn. Below warn_percent an
    alert that was raised stays (as warn) until usage is below clear_percent.
    """
    if percent >= disk.critical_percent:
        return CRITICAL
    if percent >= disk.warn_percent:
        return WARN
    if previous in (WARN, CRITICAL) and percent >= disk.clear_percent:
        return WARN
    return OK


def decide(level: str, told: dict[str, Any] | None, now: float, repeat_hours: float) -> str | None:
    """ENTER, REPEAT, CLEAR or None for one target, from what it was last told ({"level", "at"})."""
    told_level = (told or {}).get("level", OK)
    told_at = float((told or {}).get("at", 0.0))
    if level == OK:
        return CLEAR if told_level != OK else None
    if RANK[level] > RANK.get(told_level, 0):
        return ENTER
    if now - told_at >= repeat_hours * 3600:
        return REPEAT
    return None


def told(level: str, now: float) -> dict[str, Any]:
    """What to remember about a target after it accepted a message about *level*."""
    return {"level": level, "at": now}


class Message(NamedTuple):
    """One disk message to send to *targets*; each target that accepts it has then been told *told*."""

    mount: str
    kind: str  # ENTER, REPEAT or CLEAR
    title: str
    body: str
    targets: list[Target]
    told: dict[str, Any]


class Decision(NamedTuple):
    """What a pass announces: the messages to send, the janitor state to save once the targets that accepted
    are marked (delivered), and one record per filesystem for --json (its "notifications" filled by the sender)."""

    messages: list[Message]
    state: dict[str, Any]
    filesystems: list[dict[str, Any]]


def decide_pass(config: Config, state: Mapping[str, Any], before: list[FsUsage], after: list[FsUsage],
                freed: Mapping[int, int], facts: Mapping[str, Any], now: float) -> Decision:
    """Decide, per filesystem and per target, what to announce after a pass; sends nothing, changes nothing.

    *state* is the previous janitor state (left as it is), *freed* the bytes the pass gave back per
    filesystem (st_dev), *facts* what the messages tell about the pass (run.py's _facts). The level comes
    from the usage after the pass. A disk that reached a higher level before the pass and was brought down
    by pruning (results deleted before their time) is still announced once to each target not yet told of
    that level, with both figures ("95.0% → 70.0%"); the target is then remembered at the level after the
    pass, so no recovery message follows for an alert that never lasted.
    """
    disk_cfg = config.janitor.disk
    send_to = targets(config) if "disk" in config.notify.events else []
    lang = config.notify.language
    repeat = config.notify.repeat_hours
    known = {mount: dict(fst) for mount, fst in state.get("filesystems", {}).items()}
    new_state = {**state, "freed_total": int(state.get("freed_total", 0)) + sum(freed.values()),
                 "filesystems": known}
    percent_before = {fs.dev: fs.percent for fs in before}
    messages: list[Message] = []
    records: list[dict[str, Any]] = []
    for fs in after:
        fst = known.setdefault(fs.mount, {})
        previous = fst.get("level", OK)
        level = level_for(fs.percent, previous, disk_cfg)  # the usage the pass leaves
        peak = level_for(percent_before.get(fs.dev, fs.percent), previous, disk_cfg)  # before its pruning
        pruned_from = peak if RANK[peak] > RANK[level] else None
        freed_total = int(fst.get("freed_total", 0)) + freed.get(fs.dev, 0)
        growth = disk.growth(fst.get("samples", []), now, fs.used, freed_total)
        told_before = fst.get("told", {})
        wanted: dict[tuple[str, str, str], list[Target]] = {}  # (kind, level told of, level remembered)
        for target in send_to:
            was = told_before.get(target.key)
            if pruned_from and RANK[pruned_from] > RANK.get((was or {}).get("level", OK), 0):
                wanted.setdefault((ENTER, pruned_from, level), []).append(target)
                continue
            kind = decide(level, was, now, repeat)
            if kind:
                wanted.setdefault((kind, level, OK if kind == CLEAR else level), []).append(target)
        fs_facts = {**facts, "growth": growth, "percent_before": percent_before.get(fs.dev),
                    "shortfall": facts.get("shortfall") if "outputs" in fs.folders else None}
        for (kind, shown, remembered), group in wanted.items():
            title, body = disk_message(lang, kind, shown, fs, fs_facts)
            messages.append(Message(fs.mount, kind, title, body, group, told(remembered, now)))
        records.append({**fs.to_dict(), "percent_before": round(percent_before.get(fs.dev, 0.0), 2),
                        "level": level, "previous_level": previous, "level_number": RANK[level],
                        "pruned_from_level": pruned_from,
                        "growth": growth.to_dict(fs.avail) if growth else None, "notifications": []})
        fst.update(level=level, freed_total=freed_total, told=dict(told_before),
                   samples=disk.record_sample(fst.get("samples", []), now, fs.used, freed_total))
        if level != previous:
            fst["since"] = now
    return Decision(messages, new_state, records)


def delivered(state: dict[str, Any], message: Message, target: Target) -> None:
    """Remember in *state* (a Decision's) that *target* accepted *message*."""
    state["filesystems"][message.mount]["told"][target.key] = message.told
