"""The sync score: the builtin engine's output is in sync, the unprocessed input is not, shifts are found; the
mouth is measured where the lips are (a dark blob on the chin does not count), wherever an engine puts it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon.commands.samples import FACE_CENTRE, WINDOW
from pipeline.engines import EngineError
from pipeline.face import FaceTracker
from pipeline.media import audio as audiomod
from pipeline.mouthfinder import MouthFinder, lower_face, patch_to_frame
from pipeline.syncscore import LOUDNESS_RANGE_DB, MAX_OFFSET_FRAMES, sync_score
from tests import media
from tests.lipsync_support import decode, plain_reencode, talking

# The astronaut's lips in the 512x512 photo, found by inspection (the photo enlarged 10x under a pixel grid):
# mouth corners at x 203 and 243, the upper lip's top at y 139, the lower lip's bottom at y 154.
LIPS_CENTRE = (223.0, 146.5)
LIP_HEIGHT = 15.0  # upper lip's top to lower lip's bottom, photo pixels
CLIP_SIZE = 320  # media.face_frames' default frame size
PEOPLE = Path(__file__).resolve().parents[1] / "fixtures" / "people"  # real clips of people talking, if collected


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


def _window(index: int, count: int, pan_pixels: int = 24) -> tuple[int, int]:
    """Top-left corner of frame *index*'s window over the photo: media.face_frames' arithmetic (checked below)."""
    t = index / max(1, count - 1)
    dx, dy = round(pan_pixels * np.sin(2 * np.pi * t)), round(pan_pixels / 2 * np.sin(np.pi * t))
    x0 = int(np.clip(FACE_CENTRE[0] - WINDOW // 2 + dx, 0, 512 - WINDOW))
    y0 = int(np.clip(FACE_CENTRE[1] - WINDOW // 2 + dy, 0, 512 - WINDOW))
    return x0, y0


def _to_frame(index: int, count: int, x: float, y: float) -> tuple[float, float]:
    """A photo position in frame *index* of a face clip (window moved, then scaled to CLIP_SIZE)."""
    x0, y0 = _window(index, count)
    scale = CLIP_SIZE / WINDOW
    return (x - x0 + 0.5) * scale - 0.5, (y - y0 + 0.5) * scale - 0.5


def _blob_clip(path: Path, speech: Path, below_lips: float) -> Path:
    """The astronaut clip under *speech*, a dark mouth-sized blob painted *below_lips* photo pixels under the lips'
    centre, its height following the speech's loudness (as an engine's mouth opening would)."""
    fps = 25.0
    sound = audiomod.load_audio(speech, "audio")
    count = audiomod.frame_count(len(sound.samples) / audiomod.SAMPLE_RATE, fps)
    loudness = audiomod.frame_loudness(sound.samples, fps, count).astype(np.float64)
    loudness = np.maximum(loudness, loudness.max() - LOUDNESS_RANGE_DB)
    level = (loudness - loudness.min()) / (loudness.max() - loudness.min())
    photo = media.astronaut()

    def frames():
        for index in range(count):
            painted = photo.copy()
            centre = (round(LIPS_CENTRE[0] * 4), round((LIPS_CENTRE[1] + below_lips) * 4))  # 2 fraction bits
            axes = (15 * 4, round((0.5 + 6.0 * level[index]) * 4))
            cv2.ellipse(painted, centre, axes, 0, 0, 360, (40, 20, 20), -1, cv2.LINE_AA, shift=2)
            x0, y0 = _window(index, count)
            yield cv2.resize(painted[y0:y0 + WINDOW, x0:x0 + WINDOW], (CLIP_SIZE, CLIP_SIZE),
                             interpolation=cv2.INTER_AREA)

    return media.write_video(path, frames(), fps, (CLIP_SIZE, CLIP_SIZE), audio=speech)


def test_a_blob_on_the_chin_is_not_a_mouth(tmp_path: Path, speech_wav: Path) -> None:
    """Issue 12: a mouth opening drawn one lip-height below the lips scored 'in sync' because the score measured
    the same fixed proportions of the face box as the engine; the lips are located now."""
    between = sync_score(_blob_clip(tmp_path / "between.mp4", speech_wav, 0.0))
    below = sync_score(_blob_clip(tmp_path / "below.mp4", speech_wav, LIP_HEIGHT))
    assert between.verdict == "in sync" and abs(between.offset) <= 1
    assert between.mouth_frames == between.frames  # the opening blob does not hide the mouth
    assert below.verdict != "in sync"
    assert below.correlation < between.correlation - 0.5
    assert below.to_dict()["mouth_frames"] == below.mouth_frames == below.frames


def test_the_mouth_is_located_on_the_lips(face_mp4: Path) -> None:
    """Within half a lip-height of the lips' centre (found by inspection) in every frame of the panned clip."""
    frames = np.stack(list(media.face_frames(3.0)))
    count = len(frames)
    photo = media.astronaut()
    for index in (0, count // 3, count - 1):  # _window() is face_frames' own arithmetic: same pixels
        x0, y0 = _window(index, count)
        expected = cv2.resize(photo[y0:y0 + WINDOW, x0:x0 + WINDOW], (CLIP_SIZE, CLIP_SIZE),
                              interpolation=cv2.INTER_AREA)
        assert np.array_equal(frames[index], expected)
    faces = FaceTracker(5).update(frames)
    finder = MouthFinder(25.0, 5)
    for frame, face in zip(frames, faces, strict=True):
        finder.add(lower_face(frame, face) if face is not None else None)
    errors = []
    for index, face in enumerate(faces):
        mouth = finder.mouth(index)
        assert face is not None and mouth is not None, f"frame {index}: no mouth"
        located = patch_to_frame(mouth, face)
        true_x, true_y = _to_frame(index, count, *LIPS_CENTRE)
        errors.append(np.hypot(located.cx - true_x, located.cy - true_y))
    half_lip = LIP_HEIGHT / 2 * CLIP_SIZE / WINDOW
    assert max(errors) < half_lip, f"worst error {max(errors):.1f} px, allowed {half_lip:.1f}"


def _people() -> list:
    clips = sorted(PEOPLE.glob("*.mp4"))
    if not clips:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no real clips in {PEOPLE}"))]
    return [pytest.param(clip, id=clip.stem) for clip in clips]


@pytest.mark.parametrize("clip", _people())
def test_the_mouth_is_located_in_real_footage(clip: Path) -> None:
    """Beard, lipstick, glasses, darker skin, a head turn, a drawing: the mouth is found in nearly every frame
    with a face, on the face's centre line and in its lower part (not the nose, not the chin)."""
    frames = decode(clip)
    faces = FaceTracker(5).update(frames)
    finder = MouthFinder(25.0, 5)
    for frame, face in zip(frames, faces, strict=True):
        finder.add(lower_face(frame, face) if face is not None else None)
    with_face = located = 0
    for index, face in enumerate(faces):
        mouth = finder.mouth(index)
        if face is None:
            continue
        with_face += 1
        if mouth is None:
            continue
        located += 1
        where = patch_to_frame(mouth, face)
        assert abs(where.cx - face.center[0]) < 0.15 * face.w, f"frame {index}: mouth off the centre line"
        assert 0.70 < (where.cy - face.y) / face.h < 0.92, f"frame {index}: mouth at {where.cy:.0f}, face {face}"
    assert with_face >= 0.9 * len(frames)
    assert located >= 0.9 * with_face, f"mouth located in {located} of {with_face} frames with a face"


def test_a_one_second_output_gets_a_score(media_dir: Path, face_mp4: Path, speech_wav: Path, tmp_path: Path) -> None:
    """Issue 13.8: outputs shorter than the 2 s detrend window are valid; the window shrinks to fit the clip."""
    output, _ = talking(media_dir, face_mp4, speech_wav)
    short = tmp_path / "short.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(output), "-t", "1", "-c:v", "libx264", "-preset",
                    "ultrafast", "-c:a", "aac", str(short)], check=True)
    score = sync_score(short)
    assert 20 <= score.frames <= 26
    assert score.mouth_frames >= 10
    assert np.isfinite(score.correlation) and np.isfinite(score.confidence)
    assert set(score.correlations) == set(range(-MAX_OFFSET_FRAMES, MAX_OFFSET_FRAMES + 1))
