"""Publishing comes first: the video and a complete record appear in outputs/ as soon as the video is made;
the sync score and the poster follow, and the record is replaced in one rename (never seen partial).
Their failing after the video is out never fails the job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests import media
from tests.daemon_harness import MUX_ARGV, Daemon, drop_pair, failures, finished, outputs, wait_for, write_config

pytestmark = pytest.mark.timeout(240)

PUBLISHED_KEYS = {"job_id", "user", "name", "engine", "device", "worker", "inputs", "frames", "fps", "timings",
                  "output_bytes", "finished"}


class Watcher(threading.Thread):
    """Polls one outputs folder (every millisecond) and keeps each distinct state seen: the names there, and
    the record's text as read at that moment."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.states: list[tuple[frozenset[str], str | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.001):
            try:
                names = frozenset(os.listdir(self.folder))
            except FileNotFoundError:
                continue
            text = None
            for name in names:
                if name.endswith(".json") and not name.startswith("."):
                    try:
                        text = (self.folder / name).read_text(encoding="utf-8")
                    except FileNotFoundError:
                        continue
            state = (frozenset(n for n in names if not n.startswith(".")), text)
            if not self.states or self.states[-1] != state:
                self.states.append(state)


def _records(watcher: Watcher) -> list[tuple[frozenset[str], dict[str, Any]]]:
    seen = []
    for names, text in watcher.states:
        if text is not None:
            seen.append((names, json.loads(text)))  # a partial record would not parse
    return seen


def _ffmpeg_for_stills(tmp_path: Path, action: str) -> Path:
    """A folder to put first in PATH: its ffmpeg runs *action* (sh) when asked for a JPEG still (-q:v, as
    the poster is taken), then, unless *action* exits, the real ffmpeg."""
    tools = tmp_path / "bin"
    tools.mkdir()
    wrapper = tools / "ffmpeg"
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" -q:v "*) {action};; esac\nexec {shutil.which("ffmpeg")} "$@"\n')
    wrapper.chmod(0o755)
    return tools


def test_video_and_complete_record_first_then_score_and_poster(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    config = write_config(root)
    audio = media.tone(tmp_path / "a.wav", seconds=4.0)
    video = media.no_face_clip(tmp_path / "v.mp4", seconds=4.0)
    folder = root / "outputs" / time.strftime("%Y-%m-%d") / "ann"
    watcher = Watcher(folder)
    watcher.start()
    try:
        with Daemon(config):
            drop_pair(root / "inbox" / "ann", "talk", audio, video)
            [out] = wait_for(lambda: finished(root), 60, "the finished record")
    finally:
        watcher.stop.set()
        watcher.join()
    seen = _records(watcher)
    assert seen, "the watcher saw no record"
    first_names, first = seen[0]
    assert {"talk.mp4", "talk.json"} <= first_names and "talk.jpg" not in first_names, \
        f"the record came before the video, or the poster before the record: {sorted(first_names)}"
    assert first.keys() >= PUBLISHED_KEYS
    assert first["pending"] == ["sync_score", "poster"] and first["sync_score"] is None
    assert "score" not in first["timings"]
    last_names, last = seen[-1]
    assert "pending" not in last and "talk.jpg" in last_names
    assert last["sync_score"] and "error" in last["sync_score"]  # no face in this clip: said, not left out
    assert last["timings"]["score"] > 0 and last["timings"]["poster"] > 0
    assert {k: v for k, v in last.items() if k not in ("sync_score", "timings")} == \
        {k: v for k, v in first.items() if k not in ("sync_score", "timings", "pending")}
    # Once the record is complete it is not replaced again; exactly two versions were ever published.
    assert len({json.dumps(record, sort_keys=True) for _, record in seen}) == 2
    assert out.with_suffix(".jpg").read_bytes()[:2] == b"\xff\xd8"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temp file was left behind"
    assert not list((root / "spool").glob("2*")), "the job folder was left in the spool"


def test_score_and_poster_failing_after_publishing_leave_a_done_job(tmp_path: Path) -> None:
    """No face in the video (no score) and an ffmpeg that cannot take stills (no poster; a wrapper first in PATH
    fails when asked for one frame as JPEG): the job is done all the same, its record says why there is no
    score, and nothing goes to failed/."""
    root = tmp_path / "srv"
    root.mkdir()
    tools = _ffmpeg_for_stills(tmp_path, 'echo "no stills today" >&2; exit 1')
    config = write_config(root)
    audio = media.tone(tmp_path / "a.wav", seconds=1.0)
    video = media.no_face_clip(tmp_path / "v.mp4", seconds=1.0)
    with Daemon(config, env={"PATH": f"{tools}:{os.environ['PATH']}"}) as daemon:
        drop_pair(root / "inbox" / "ann", "talk", audio, video)
        [out] = wait_for(lambda: finished(root), 60, "the job to finish")
        wait_for(lambda: "done talk" in daemon.log(), 30, "the done line")
        log = daemon.log()
    record = json.loads(out.with_suffix(".json").read_text())
    assert "error" in record["sync_score"], record["sync_score"]
    assert "no poster for" in log and not out.with_suffix(".jpg").exists()
    assert log.index("published talk") < log.index("no poster for"), "the video was held back for the poster"
    assert not failures(root) and outputs(root) == [out]
    assert not list((root / "spool").glob("2*")), "the job folder was left in the spool"
    assert "Traceback" not in log


def test_a_worker_killed_between_publishing_and_scoring_leaves_a_job_the_next_one_finishes(tmp_path: Path) -> None:
    """SIGKILL while the poster is being made (an ffmpeg that takes 4 s for stills): the video and its record
    are out; the restarted worker does not render or publish again, it adds the score and the poster."""
    root = tmp_path / "srv"
    root.mkdir()
    tools = _ffmpeg_for_stills(tmp_path, "sleep 4")
    renders = tmp_path / "renders"
    argv = ["sh", "-c", f'echo render >> {renders} && exec "$0" "$@"', *MUX_ARGV]
    config = write_config(root, queue={"lease_seconds": 2}, pipeline={"command": {"argv": argv}})
    audio = media.tone(tmp_path / "a.wav", seconds=1.0)
    video = media.no_face_clip(tmp_path / "v.mp4", seconds=1.0)
    with Daemon(config, env={"PATH": f"{tools}:{os.environ['PATH']}"}) as daemon:
        drop_pair(root / "inbox" / "ann", "talk", audio, video)
        [out] = wait_for(lambda: outputs(root), 60, "the video to be published", interval=0.005)
        assert json.loads(out.with_suffix(".json").read_text())["pending"]
        [beat] = (root / "spool" / ".workers").glob("*.json")
        os.kill(int(beat.stem.rsplit("-", 1)[1]), signal.SIGKILL)
        assert wait_for(lambda: finished(root), 90, "the next worker to finish the job") == [out]
        wait_for(lambda: not list((root / "spool").glob("2*")), 30, "the job folder to go")
        log = daemon.log()
    assert renders.read_text().count("render") == 1, "the job was rendered again"
    # Published once: killed after job.json said so, the next worker says "was already published"; killed
    # just before, it finds the published video by its record (filing.publish) and logs the publish itself.
    assert log.count("published talk ->") == 1, log
    record = json.loads(out.with_suffix(".json").read_text())
    assert "error" in record["sync_score"] and record["timings"]["poster"] > 3
    assert out.with_suffix(".jpg").read_bytes()[:2] == b"\xff\xd8"
    assert outputs(root) == [out] and not failures(root)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temp file was left behind"
