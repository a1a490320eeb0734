"""Hostile and broken drops through the real daemon (issue 13): each fails as that drop's own plain error,
naming the user's files, never as an internal error or with the spool's names."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import media
from tests.daemon_harness import Daemon, failures, wait_for, write_config

pytestmark = pytest.mark.timeout(300)

BUILTIN = {"engine": "builtin", "allowed_engines": ["builtin", "command"]}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    return media.tone(folder / "a.wav", seconds=1.0), media.color_clip(folder / "v.mp4", seconds=1.0)


def _drop(folder: Path, files: dict[str, bytes]) -> None:
    """Write the drop's files (the manifest last, as people save it after the media)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.mark.parametrize(("engine", "options", "words"), [
    ("builtin", "{detect_every: .inf}", "detect_every must be a whole number from 1 to 100, not inf"),
    ("builtin", "{mouth_gain: x}", "mouth_gain must be a number from 0 to 4, not 'x'"),
    ("command", "{mouth_gain: 1.2}", "'mouth_gain' is not an option of the command engine"),
])
def test_a_bad_manifest_option_is_the_drops_plain_error(tmp_path: Path, pair, engine: str, options: str,
                                                        words: str) -> None:
    """Issue 13.6: `detect_every: .inf` was reported as "internal error ... This is a bug"."""
    config = write_config(tmp_path, pipeline=BUILTIN)
    manifest = f"audio: take.wav\nvideo: face.mp4\nengine: {engine}\noptions: {options}\n".encode()
    with Daemon(config):
        _drop(tmp_path / "inbox" / "dana", {"take.wav": pair[0].read_bytes(), "face.mp4": pair[1].read_bytes(),
                                            "promo.job.yaml": manifest})
        [failed] = wait_for(lambda: failures(tmp_path), 120, "the failure")
    text = (failed / "error.txt").read_text()
    assert "the job's options cannot be used" in text and words in text
    assert "internal error" not in text and "bug" not in text
    assert sorted(p.name for p in failed.iterdir() if p.name not in ("error.txt", "job.json")) == [
        "face.mp4", "promo.job.yaml", "take.wav"]


def test_audio_longer_than_max_seconds_fails_before_any_engine_runs(tmp_path: Path, pair) -> None:
    """Issue 13.7: a 3-hour silent m4a (0.7 MB) is refused from the probe in the verify stage, whatever the engine
    (here the command engine, which would have muxed it happily)."""
    config = write_config(tmp_path)
    long_audio = media.long_silence(tmp_path / "talk.m4a")
    with Daemon(config):
        _drop(tmp_path / "inbox" / "dana", {"talk.mp4": pair[1].read_bytes(), "talk.m4a": long_audio.read_bytes()})
        [failed] = wait_for(lambda: failures(tmp_path), 120, "the failure")
    text = (failed / "error.txt").read_text()
    assert "lasts 3:00:00; this server renders at most 30:00 of sound in one job (pipeline.max_seconds)" in text
    assert not list((tmp_path / "outputs").rglob("*.mp4"))


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 45% of a faststart MP4 whose container says 6 s: an interrupted copy."""
    folder = tmp_path_factory.mktemp("cut")
    clip = media.no_face_clip(folder / "clip.mp4", seconds=6.0, size=(160, 120))
    return media.truncated(media.faststart(clip, folder / "whole.mp4", "-c", "copy"), folder / "cut.mp4")


@pytest.mark.parametrize(("case", "words"), [
    ("junk", "the video 'notes.mp4' is not a readable media file (notes.mp4: "),
    ("cut", "the video notes.mp4 is cut short: only "),
    ("long", "the audio notes.m4a lasts 3:00:00"),
])
def test_error_txt_names_the_users_own_files(tmp_path: Path, pair, cut_video: Path, case: str, words: str) -> None:
    """Issue 13.5: error.txt said 'video.mp4' and file:/…/spool/<job>/video.mp4, the spool's names for the files."""
    config = write_config(tmp_path, pipeline=BUILTIN)
    video = {"junk": b"this is not a video\n" * 200, "cut": cut_video.read_bytes()}.get(case, pair[1].read_bytes())
    files = {"notes.mp4": video}
    if case == "long":
        files["notes.m4a"] = media.long_silence(tmp_path / "long.m4a").read_bytes()
    else:
        files["notes.wav"] = media.tone(tmp_path / "five.wav", seconds=5.0).read_bytes()
    with Daemon(config):
        _drop(tmp_path / "inbox" / "dana", files)
        [failed] = wait_for(lambda: failures(tmp_path), 120, "the failure")
    text = (failed / "error.txt").read_text()
    assert words in text
    spool = str(tmp_path / "spool")
    assert "video.mp4" not in text and "audio." not in text and spool not in text and "file:" not in text
    assert "video.mp4" not in (failed / "job.json").read_text().split('"error"')[1].split("\n")[0]
