"""Shared fixtures. Media is generated with real tools (ffmpeg, espeak-ng, scikit-image's astronaut)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import media

pytest_plugins = ["tests.access_support"]  # real accounts for the private-folder tests (people, shared_root)

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "lipsyncd" / "numba"))


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def speech_wav(media_dir: Path) -> Path:
    """About 7 s of espeak-ng speech."""
    return media.speech(media_dir / "speech.wav")


@pytest.fixture(scope="session")
def face_mp4(media_dir: Path) -> Path:
    """3 s, 25 fps, 320x320 clip of a real face, panned slowly, no audio."""
    return media.face_clip(media_dir / "face.mp4", seconds=3.0)


@pytest.fixture(scope="session")
def small_mp4(media_dir: Path) -> Path:
    """A tiny 2 s gray clip for daemon tests that do not look at faces."""
    return media.color_clip(media_dir / "small.mp4")


@pytest.fixture(scope="session")
def short_wav(media_dir: Path) -> Path:
    """A 1.5 s tone."""
    return media.tone(media_dir / "short.wav", seconds=1.5)
