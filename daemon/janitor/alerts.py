"""Disk alert levels with hysteresis, and when each notification target must hear about them.

A level is announced once when entered (or raised), repeated every notify.repeat_hours while it lasts,
and followed by a recovery message when usage falls below clear_percent. What each target was last told
is kept per target, so a target that could not be reached is simply told on the next pass, and a usage
that flaps around a threshold does not produce a message every few minutes.
"""

from __future__ import annotations

from typing import Any

OK, WARN, CRITICAL = "ok", "warn", "critical"
RANK = {OK: 0, WARN: 1, CRITICAL: 2}
# What a target is sent.
ENTER, REPEAT, CLEAR = "enter", "repeat", "clear"


def level_for(percent: float, previous: str, disk: dict[str, Any]) -> str:
    """The alert level for *percent* used, given the level of the previous pass.

    At or above critical_percent: critical; at or above warn_percent: warn. Below warn_percent an
    alert that was raised stays (as warn) until usage is below clear_percent.
    """
    if percent >= disk["critical_percent"]:
        return CRITICAL
    if percent >= disk["warn_percent"]:
        return WARN
    if previous in (WARN, CRITICAL) and percent >= disk["clear_percent"]:
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
