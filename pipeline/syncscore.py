"""How well a video's mouth follows its audio: a score any engine's output can be checked with.

The score knows nothing about the engine that made the video. For every frame it measures the mouth's
*state* (how open it is), not its motion:

- the main face is tracked (pipeline.face.FaceTracker) and the mouth is *located* in it
  (pipeline.mouthfinder: OpenCV's mouth cascade on the lower face every few frames, the median of the
  detections within a second, kept relative to the face box so it moves with the face in between).
  It is not placed by fixed proportions of the face box: the builtin engine places its mouth that way,
  and a score measuring the same place agreed with the engine when both were wrong (issue 12: an
  opening drawn on the chin scored "in sync"). Frames where the mouth is not located count as missing
  (NaN), nothing is guessed; SyncScore.mouth_frames says how many were located;
- openness = how much of the lips' area (LIPS_AREA around the located mouth) is dark compared with the
  face's own skin (the open mouth's inside is dark whatever the lighting, teeth and lips are not), minus
  its 2-second moving average, so slow changes of light or pose do not count either; the area is
  about the lips' own height, so a dark patch a lip-height above or below them stays out of it;
- the sound's loudness per frame (dBFS, floored 40 dB under its peak) is compared with it by Pearson
  correlation, with the picture shifted against the sound by -10..+10 frames.

The result: the best offset (positive: the picture lags the sound), the correlation there, and the
confidence = that peak minus the median over all offsets (a real peak stands out; chance does not).

What it shares with the engines is code, never results: the video's own file is decoded again (scaled
down by ffmpeg), its faces tracked again, its sound decoded again. Those stages overlap as the builtin
engine's do (pipeline.media.threads): the sound is decoded in a thread while the picture is analysed,
and the next batch of frames is decoded while this one is tracked.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import EngineError
from pipeline.face import FaceTracker
from pipeline.media import audio as audiomod
from pipeline.media import decode as videomod
from pipeline.media import threads
from pipeline.mouthfinder import PATCH_AREA, PATCH_FACE_PIXELS, Mouth, MouthFinder, lower_face

MAX_OFFSET_FRAMES = 10
ANALYSIS_MAX_SIDE = 480  # frames are scaled down to this for analysis
LIPS_AREA = (0.30, 0.15)  # measured: the located mouth's centre +- these many widths of its box (x, y): the lips
SKIN_AREA = (0.30, 0.70, 0.45, 0.65)  # cheeks and nose (fractions of the face box): the face's own brightness
DARK_RATIO = (0.35, 0.60)  # a pixel darker than 0.35 x skin counts fully as "open", above 0.6 not at all
DETREND_SECONDS = 2.0
LOUDNESS_RANGE_DB = 40.0
MIN_FACE_FRAMES = 10
GOOD_CONFIDENCE = 0.3
WEAK_CONFIDENCE = 0.15


@dataclass
class SyncScore:
    offset: int  # frames; positive: the mouth moves after the sound (picture late)
    correlation: float  # Pearson correlation of mouth openness and loudness at that offset
    confidence: float  # correlation at the best offset minus the median over all offsets
    fps: float
    frames: int  # frames compared
    face_frames: int  # of those, frames with a face
    mouth_frames: int = 0  # of those, frames where the mouth was located (only these are compared)
    correlations: dict[int, float] = field(default_factory=dict)  # offset -> correlation

    @property
    def offset_ms(self) -> float:
        return 1000.0 * self.offset / self.fps if self.fps else 0.0

    @property
    def verdict(self) -> str:
        if self.confidence >= GOOD_CONFIDENCE and self.correlation > 0:
            return "in sync" if abs(self.offset) <= 1 else "follows the audio, but shifted"
        if self.confidence >= WEAK_CONFIDENCE and self.correlation > 0:
            return "weak"
        return "no sync"

    def to_dict(self) -> dict[str, Any]:
        return {
            "offset_frames": self.offset,
            "offset_ms": round(self.offset_ms, 1),
            "correlation": round(self.correlation, 4),
            "confidence": round(self.confidence, 4),
            "verdict": self.verdict,
            "fps": round(self.fps, 3),
            "frames": self.frames,
            "face_frames": self.face_frames,
            "mouth_frames": self.mouth_frames,
            "correlations": {str(k): round(v, 4) for k, v in self.correlations.items()},
        }

    def describe(self) -> str:
        if self.offset == 0:
            where = "at offset 0"
        else:
            side = "lags" if self.offset > 0 else "leads"
            where = f"the picture {side} the sound by {abs(self.offset)} frame(s) ({abs(self.offset_ms):.0f} ms)"
        return (f"sync: {self.verdict}: correlation {self.correlation:.2f} {where}, confidence {self.confidence:.2f} "
                f"(peak minus median over +-{MAX_OFFSET_FRAMES} frames); {self.face_frames} of {self.frames} "
                f"frames had a face, {self.mouth_frames} a located mouth")


def sync_score(video: str | Path, audio: str | Path | None = None, *, max_offset: int = MAX_OFFSET_FRAMES,
               detect_every: int = 5, batch_frames: int = 32) -> SyncScore:
    """Score *video*'s mouth against *audio* (default: the video's own sound track)."""
    video = Path(video)
    info = videomod.open_video(video)
    fps = float(info.fps)
    with ThreadPoolExecutor(1, thread_name_prefix="syncscore-sound") as sound_thread:
        decoding = sound_thread.submit(audiomod.load_audio, audio if audio is not None else video,
                                       "audio" if audio is not None else "video")
        try:
            openness, faces = _mouth_openness(info, fps, detect_every, batch_frames)
        except EngineError:
            decoding.result()  # a file without sound says so first, as when the sound was decoded first
            raise
        sound = decoding.result()
    samples = sound.samples
    if audio is None and info.start_time > 0:  # the picture starts later than the sound in this file
        samples = samples[round(info.start_time * audiomod.SAMPLE_RATE):]

    frames = min(len(openness), audiomod.frame_count(len(samples) / audiomod.SAMPLE_RATE, fps))
    openness, faces = openness[:frames], faces[:frames]
    loudness = audiomod.frame_loudness(samples, fps, frames).astype(np.float64)
    if loudness.max() < audiomod.SILENCE_DBFS:
        raise EngineError(f"the sound of {Path(audio or video).name!r} is silent; there is nothing to compare "
                          "the mouth with")
    loudness = np.maximum(loudness, loudness.max() - LOUDNESS_RANGE_DB)
    face_frames, mouth_frames = int(faces.sum()), int(np.isfinite(openness).sum())
    if face_frames < MIN_FACE_FRAMES:
        raise EngineError(f"a face was found in only {face_frames} frame(s) of {video.name!r}; the sync score "
                          "needs a video of one person facing the camera")
    if mouth_frames < MIN_FACE_FRAMES:
        raise EngineError(f"the mouth was found in only {mouth_frames} of the {face_frames} frame(s) with a face in "
                          f"{video.name!r}; the sync score needs a frontal face with the lips in view")
    openness = _detrend(openness, max(3, round(DETREND_SECONDS * fps)))

    correlations = {offset: _pearson_at(openness, loudness, offset) for offset in range(-max_offset, max_offset + 1)}
    best = max(correlations, key=lambda offset: (correlations[offset], -abs(offset)))
    peak = correlations[best]
    return SyncScore(offset=best, correlation=peak, confidence=peak - float(np.median(list(correlations.values()))),
                     fps=fps, frames=frames, face_frames=face_frames, mouth_frames=mouth_frames,
                     correlations=correlations)


def mouth_openness(patch: np.ndarray, mouth: Mouth) -> float:
    """How open *mouth* looks in a lower-face patch: the dark share of the lips' area, relative to the skin."""
    face_w = PATCH_FACE_PIXELS

    def area(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        height, width = patch.shape[:2]
        left, right, top, bottom = (int(round(v)) for v in (x0, x1, y0, y1))
        return patch[max(0, top):min(height, bottom), max(0, left):min(width, right)]

    half_w, half_h = (fraction * mouth.width for fraction in LIPS_AREA)
    lips = area(mouth.cx - half_w, mouth.cx + half_w, mouth.cy - half_h, mouth.cy + half_h)
    sx0, sx1, sy0, sy1 = SKIN_AREA
    px0, py0 = PATCH_AREA[0], PATCH_AREA[2]
    skin = area((sx0 - px0) * face_w, (sx1 - px0) * face_w, (sy0 - py0) * face_w, (sy1 - py0) * face_w)
    if lips.size == 0 or skin.size == 0:
        return float("nan")
    skin_level = max(float(np.median(skin)), 1.0)
    low, high = DARK_RATIO
    darkness = np.clip((high - lips.astype(np.float32) / skin_level) / (high - low), 0.0, 1.0)
    return float(darkness.mean())


def _mouth_openness(info: videomod.VideoInfo, fps: float, detect_every: int,
                    batch_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Openness of every frame (NaN without a located mouth), and which frames had a face."""
    tracker = FaceTracker(detect_every)
    finder = MouthFinder(fps, detect_every)
    pending: deque[np.ndarray | None] = deque()  # patches of frames whose mouth is not settled yet
    values: list[float] = []

    def measure() -> None:
        patch, mouth = pending.popleft(), finder.mouth(len(values))
        values.append(mouth_openness(patch, mouth) if patch is not None and mouth is not None else float("nan"))

    faces: list[bool] = []
    for frames in threads.prefetch(videomod.read_frames(info, batch_frames, max_side=ANALYSIS_MAX_SIDE)):
        for frame, face in zip(frames, tracker.update(frames), strict=True):
            patch = lower_face(frame, face) if face is not None else None
            faces.append(patch is not None)
            finder.add(patch)
            pending.append(patch)
        while pending and finder.settled(len(values)):
            measure()
    while pending:
        measure()
    return np.asarray(values, dtype=np.float64), np.asarray(faces, dtype=bool)


def _detrend(values: np.ndarray, window: int) -> np.ndarray:
    """Subtract a centred moving average (over frames with a face only).

    The window never exceeds the clip: np.convolve(mode="same") returns max(len(values), window) values, so a
    clip shorter than the window (outputs under 2 s) would not line up with its own average.
    """
    window = max(1, min(window, len(values)))
    valid = np.isfinite(values)
    filled = np.where(valid, values, 0.0)
    kernel = np.ones(window)
    sums = np.convolve(filled, kernel, mode="same")
    counts = np.convolve(valid.astype(np.float64), kernel, mode="same")
    average = sums / np.maximum(counts, 1.0)
    return np.where(valid, values - average, np.nan)


def _pearson_at(openness: np.ndarray, loudness: np.ndarray, offset: int) -> float:
    """Correlation of openness[t] with loudness[t - offset] over frames where both exist."""
    if offset >= 0:
        mouth, sound = openness[offset:], loudness[:len(loudness) - offset]
    else:
        mouth, sound = openness[:offset], loudness[-offset:]
    valid = np.isfinite(mouth) & np.isfinite(sound)
    if valid.sum() < 3:
        return 0.0
    mouth, sound = mouth[valid], sound[valid]
    if mouth.std() < 1e-9 or sound.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(mouth, sound)[0, 1])
