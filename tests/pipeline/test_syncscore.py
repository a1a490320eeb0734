"""The sync score: the builtin engine's output is in sync, the unprocessed input is not, shifts are found."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines import EngineError
from pipeline.syncscore import MAX_OFFSET_FRAMES, sync_score
from tests import media
from tests.lipsync_support import plain_reencode, talking


def _shift_audio(video: Path, output: Path, seconds: float) -> Path:
    """Remux *video* with its own sound moved later (seconds > 0) or earlier (< 0); picture untouched."""
    if seconds >= 0:
        args = ["-i", str(video), "-itsoffset", str(seconds), "-i", str(video)]
    else:
        args = ["-i", str(video), "-ss", str(-seconds), "-i", str(video)]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args, "-map", "0:v", "-map", "1:a", "-c", "copy", str(output)],
                   check=True)
    return output


def test_output_is_in_sync_and_beats_the_unprocessed_input(media_dir: Path, face_mp4: Path, speech_wav: Path,
                                                            tmp_path: Path) -> None:
    output, _ = talking(media_dir, face_mp4, speech_wav)
    ours = sync_score(output)
    assert abs(ours.offset) <= 1
    assert ours.face_frames == ours.frames > 200
    # The unprocessed input, looped under the same audio by ffmpeg alone.
    unprocessed = sync_score(plain_reencode(face_mp4, speech_wav, tmp_path / "input.mp4", loop=True))
    assert ours.correlation >= unprocessed.correlation + 0.3
    assert ours.confidence > unprocessed.confidence
    assert ours.verdict == "in sync"


@pytest.mark.parametrize(("seconds", "expected_offset"), [(0.2, -5), (-0.2, 5)])
def test_shifted_audio_peaks_at_the_shift(media_dir: Path, face_mp4: Path, speech_wav: Path, tmp_path: Path,
                                          seconds: float, expected_offset: int) -> None:
    """Sound 5 frames late: the picture leads (offset -5); sound 5 frames early: the picture lags (+5)."""
    output, _ = talking(media_dir, face_mp4, speech_wav)
    shifted = sync_score(_shift_audio(output, tmp_path / "shifted.mp4", seconds))
    assert shifted.offset == expected_offset
    assert shifted.confidence > 0.3


def test_score_against_a_separate_audio_and_its_report(media_dir: Path, face_mp4: Path, speech_wav: Path) -> None:
    output, _ = talking(media_dir, face_mp4, speech_wav)
    score = sync_score(output, audio=speech_wav)
    assert abs(score.offset) <= 1
    data = score.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data["correlations"]) == {str(k) for k in range(-MAX_OFFSET_FRAMES, MAX_OFFSET_FRAMES + 1)}
    assert data["correlation"] == pytest.approx(max(data["correlations"].values()), abs=1e-4)
    median = float(np.median(list(score.correlations.values())))
    assert score.confidence == pytest.approx(score.correlation - median)
    assert "correlation" in score.describe() and "confidence" in score.describe()


def test_score_needs_sound_and_a_face(tmp_path: Path, face_mp4: Path, speech_wav: Path) -> None:
    with pytest.raises(EngineError, match="has no sound track"):
        sync_score(face_mp4)
    pattern = media.no_face_clip(tmp_path / "pattern.mp4", seconds=1.0)
    with pytest.raises(EngineError, match=r"a face was found in only 0 frame\(s\) of 'pattern.mp4'"):
        sync_score(pattern, audio=speech_wav)
