"""pipeline.face: Haar detection, tracking between detections, smoothing, main face, frames without a face."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.face import FaceBox, FaceDetector, FaceTracker
from tests import media

SIZE = 320
FPS = 25.0
SECONDS = 3.0


@pytest.fixture(scope="module")
def panned() -> np.ndarray:
    return np.stack(list(media.face_frames(SECONDS, FPS, (SIZE, SIZE))))


def _expected_centres(count: int) -> np.ndarray:
    """Where media.face_frames puts the face centre (photo face centre 224.5, 113.5; 300 px window)."""
    scale = SIZE / 300
    centres = []
    for i in range(count):
        t = i / max(1, count - 1)
        x0 = 225 - 150 + round(24 * np.sin(2 * np.pi * t))
        y0 = max(0, 130 - 150 + round(12 * np.sin(np.pi * t)))
        centres.append(((224.5 - x0) * scale, (113.5 - y0) * scale))
    return np.array(centres)


def _track(frames: np.ndarray, detect_every: int, batch: int) -> tuple[list[FaceBox | None], FaceTracker]:
    tracker = FaceTracker(detect_every)
    boxes: list[FaceBox | None] = []
    for start in range(0, len(frames), batch):
        got = tracker.update(frames[start:start + batch])
        assert len(got) == len(frames[start:start + batch])
        boxes += got
    return boxes, tracker


def test_detector_finds_the_astronaut() -> None:
    found = FaceDetector().detect(media.astronaut())
    assert len(found) == 1
    x, y, w, h = found[0].as_ints()
    assert abs(x - 177) <= 5 and abs(y - 66) <= 5 and abs(w - 95) <= 8 and abs(h - 95) <= 8


def test_tracker_follows_a_pan_between_detections(panned: np.ndarray) -> None:
    boxes, tracker = _track(panned, detect_every=5, batch=32)
    assert all(box is not None for box in boxes)
    assert tracker.detections_run < len(panned) / 3  # really detecting every few frames only
    centres = np.array([box.center for box in boxes if box is not None])
    error = centres - _expected_centres(len(panned))
    error -= error.mean(axis=0)  # a constant offset between Haar's box and our guess is fine
    assert np.abs(error).max() < 2.5  # pixels, on a ~100 px face panned by ~26 px
    sizes = np.array([box.w for box in boxes if box is not None])
    assert sizes.std() < 1.5  # smoothed: Haar's size steps (10%) do not show


def test_mouth_region_lies_on_the_mouth() -> None:
    box = FaceDetector().detect(media.astronaut())[0]
    mouth = box.mouth()
    # Measured on the photo: lips from y 138 to 156, mouth corners at x 203 and 244, chin at y 178.
    assert 140 <= mouth.cy <= 152 and 215 <= mouth.cx <= 235
    x0, y0, x1, y1 = mouth.bounds(512, 512)
    assert x0 < 203 and x1 > 244 and y0 < 138 and y1 > 178
    assert (x0, y0, x1, y1) == mouth.bounds(512, 512)  # ints, stable


def test_frames_without_a_face_are_none_exactly(panned: np.ndarray) -> None:
    frames = panned[:60].copy()
    frames[23:41] = 128  # 18 frames of plain grey in the middle
    for batch in (7, 16, 60):
        boxes, tracker = _track(frames, detect_every=5, batch=batch)
        missing = [i for i, box in enumerate(boxes) if box is None]
        assert missing == list(range(23, 41)), batch
        assert tracker.faces_seen == 60 - 18


def test_main_face_is_the_largest_and_the_track_stays_on_it() -> None:
    photo = media.astronaut()
    import cv2

    face = photo[20:220, 125:325]
    canvas = np.full((300, 520, 3), 90, dtype=np.uint8)
    canvas[40:240, 20:220] = face  # the big one
    canvas[90:210, 360:480] = cv2.resize(face, (120, 120), interpolation=cv2.INTER_AREA)
    boxes, _ = _track(np.stack([canvas] * 12), detect_every=3, batch=5)
    for box in boxes:
        assert box is not None and box.x < 220 and box.w > 60
