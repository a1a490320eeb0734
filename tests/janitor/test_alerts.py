"""The disk alert decision on its own (daemon/janitor/alerts.py): it returns what to send and the next state,
and sends, logs and changes nothing itself; the janitor marks the targets that accepted."""

from __future__ import annotations

import copy
from pathlib import Path

from daemon.disk import FsUsage
from daemon.janitor import alerts
from tests.janitor_support import make_config

GIB = 1 << 30


def usage(percent: float, dev: int = 7) -> FsUsage:
    used = int(100 * GIB * percent / 100)
    return FsUsage("/srv", dev, ["outputs", "failed"], used, 100 * GIB - used)


def test_the_decision_returns_messages_and_state_and_changes_nothing(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, notify={"urls": ["json://127.0.0.1:9/", "json://127.0.0.1:10/"]})
    facts = {"host": "h", "disk": cfg.janitor.disk, "shortfall": {"needed": 1, "pinned": 0, "young": 0}}
    previous = {"version": 1, "freed_total": 5}
    kept = copy.deepcopy(previous)
    before, after = [usage(96)], [usage(93)]  # saved by early pruning: still announced as critical
    decision = alerts.decide_pass(cfg, previous, before, after, {7: 3 * GIB}, facts, 1000.0)
    assert previous == kept  # the previous state is left as it was
    (message,) = decision.messages  # one message for both targets
    assert (message.mount, message.kind, len(message.targets)) == ("/srv", alerts.ENTER, 2)
    assert "96.0% → 93.0%" in message.title
    (record,) = decision.filesystems
    assert (record["level"], record["previous_level"], record["notifications"]) == ("critical", "ok", [])
    fs_state = decision.state["filesystems"]["/srv"]
    assert decision.state["freed_total"] == 5 + 3 * GIB and fs_state["freed_total"] == 3 * GIB
    assert fs_state["level"] == "critical" and fs_state["told"] == {} and fs_state["since"] == 1000.0

    alerts.delivered(decision.state, message, message.targets[0])  # only the first target accepted
    again = alerts.decide_pass(cfg, decision.state, after, after, {}, facts, 1060.0)
    (retry,) = again.messages
    assert retry.targets == [message.targets[1]]  # the other one is told on the next pass
    assert again.state["filesystems"]["/srv"]["since"] == 1000.0  # still critical: the level's start is kept
