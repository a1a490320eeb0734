"""How well a video's mouth follows its audio: a score any engine's output can be checked with.

The score knows nothing about the engine that made the video. For every frame it measures the mouth's
*state* (how open it is), not its motion:

- the main face is tracked (pipeline.face.FaceTracker); the mouth area is taken relative to the face
  box (centre half of the face's width, from 0.70 to 1.05 of its height), so head motion and camera
  pans move the measuring window with the face and do not count;
- openness = how much of that area is dark compared with the face's own skin (the open mouth's
  inside is dark whatever the lighting, teeth and lips are not), minus its 2-second moving average,
  so slow changes of light or pose do not count either;
- the sound's loudness per frame (dBFS, floored 40 dB under its peak) is compared with it by Pearson
  correlation, with the picture shifted against the sound by -10..+10 frames.

The result: the best offset (positive: the picture lags the sound), the correlation there, and the
confidence = that peak minus the median over all offsets (a real peak stands out; chance does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import EngineError
from pipeline.face import FaceBox, FaceTracker
from pipeline.media import audio as audiomod
from pipeline.media import decode as videomod

MAX_OFFSET_FRAMES = 10
ANALYSIS_MAX_SIDE = 480  # frames are scaled down to this for analysis
MOUTH_AREA = (0.25, 0.75, 0.70, 1.05)  # x0, x1, y0, y1 as fractions of the face box
SKIN_AREA = (0.30, 0.70, 0.45, 0.65)  # cheeks and nose: the face's own brightness
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
                "frames had a face")


def sync_score(video: str | Path, audio: str | Path | None = None, *, max_offset: int = MAX_OFFSET_FRAMES,
               detect_every: int = 5, batch_frames: int = 32) -> SyncScore:
    """Score *video*'s mouth against *audio* (default: the video's own sound track)."""
    video = Path(video)
    info = videomod.open_video(video)
    sound = audiomod.load_audio(audio if audio is not None else video, "audio" if audio is not None else "video")
    fps = float(info.fps)
    samples = sound.samples
    if audio is None and info.start_time > 0:  # the picture starts later than the sound in this file
        samples = samples[round(info.start_time * audiomod.SAMPLE_RATE):]

    openness = _mouth_openness(info, detect_every, batch_frames)
    frames = min(len(openness), audiomod.frame_count(len(samples) / audiomod.SAMPLE_RATE, fps))
    openness = openness[:frames]
    loudness = audiomod.frame_loudness(samples, fps, frames).astype(np.float64)
    if loudness.max() < audiomod.SILENCE_DBFS:
        raise EngineError(f"the sound of {Path(audio or video).name!r} is silent; there is nothing to compare "
                          "the mouth with")
    loudness = np.maximum(loudness, loudness.max() - LOUDNESS_RANGE_DB)
    face_frames = int(np.isfinite(openness).sum())
    if face_frames < MIN_FACE_FRAMES:
        raise EngineError(f"a face was found in only {face_frames} frame(s) of {video.name!r}; the sync score "
                          "needs a video of one person facing the camera")
    openness = _detrend(openness, max(3, round(DETREND_SECONDS * fps)))

    correlations = {offset: _pearson_at(openness, loudness, offset) for offset in range(-max_offset, max_offset + 1)}
    best = max(correlations, key=lambda offset: (correlations[offset], -abs(offset)))
    peak = correlations[best]
    return SyncScore(offset=best, correlation=peak, confidence=peak - float(np.median(list(correlations.values()))),
                     fps=fps, frames=frames, face_frames=face_frames, correlations=correlations)


def mouth_openness(frame: np.ndarray, face: FaceBox) -> float:
    """How open the mouth in *face* looks: the dark share of the mouth area, relative to the skin."""
    import cv2

    height, width = frame.shape[:2]

    def area(fractions: tuple[float, float, float, float]) -> np.ndarray:
        x0, x1, y0, y1 = fractions
        left, right = int(round(face.x + x0 * face.w)), int(round(face.x + x1 * face.w))
        top, bottom = int(round(face.y + y0 * face.h)), int(round(face.y + y1 * face.h))
        return frame[max(0, top):min(height, bottom), max(0, left):min(width, right)]

    mouth, skin = area(MOUTH_AREA), area(SKIN_AREA)
    if mouth.size == 0 or skin.size == 0:
        return float("nan")
    mouth_gray = cv2.cvtColor(np.ascontiguousarray(mouth), cv2.COLOR_RGB2GRAY).astype(np.float32)
    skin_level = max(float(np.median(cv2.cvtColor(np.ascontiguousarray(skin), cv2.COLOR_RGB2GRAY))), 1.0)
    low, high = DARK_RATIO
    darkness = np.clip((high - mouth_gray / skin_level) / (high - low), 0.0, 1.0)
    return float(darkness.mean())


def _mouth_openness(info: videomod.VideoInfo, detect_every: int, batch_frames: int) -> np.ndarray:
    """Openness of every frame (NaN without a face), decoding at analysis size."""
    tracker = FaceTracker(detect_every)
    values: list[float] = []
    for frames in videomod.read_frames(info, batch_frames, max_side=ANALYSIS_MAX_SIDE):
        for frame, face in zip(frames, tracker.update(frames), strict=True):
            values.append(mouth_openness(frame, face) if face is not None else float("nan"))
    return np.asarray(values, dtype=np.float64)


def _detrend(values: np.ndarray, window: int) -> np.ndarray:
    """Subtract a centred moving average (over frames with a face only)."""
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
