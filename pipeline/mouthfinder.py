"""Where the lips are in a tracked face: OpenCV's mouth cascade, smoothed over time, for the sync score.

Deliberately independent of every engine (no pipeline.engines, no FaceBox.mouth() proportions): a score
that places the mouth the way an engine does would agree with that engine's mistakes. So the mouth is
*found*, by a second Haar cascade (haarcascade_smile.xml, trained on mouths) that has nothing in common
with the engines' code:

- every frame with a face is cut to a grey, face-normalised patch of the lower face (PATCH_AREA of the
  face box, the face scaled to PATCH_FACE_PIXELS wide); positions below are in patch pixels, i.e.
  relative to the face box, so a mouth found once moves with the face between detections;
- on every `detect_every`-th frame the cascade runs on the patch; of its candidates (nostrils, chin and
  mouth are typical) the one with the highest cascade weight that is centred and mouth-sized is kept;
- a detection far from the median of the last MEDIAN_SECONDS' detections is dropped: the cascade tends
  to miss a wide-open mouth and take the chin below it instead;
- a frame's mouth is the median of the detections within MEDIAN_SECONDS of it (at least MIN_DETECTIONS
  of them), so a stray detection (a dark blob on the chin in some frames) does not move it; a frame
  without enough detections around it has no mouth (None): nothing is guessed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from pipeline.face import FaceBox

CASCADE_FILE = "haarcascade_smile.xml"
PATCH_AREA = (0.05, 0.95, 0.45, 1.30)  # x0, x1, y0, y1 of the face box cut to the patch: cheeks to below the chin
PATCH_FACE_PIXELS = 80  # the patch is scaled so that the face box is this many pixels wide
SCALE_FACTOR = 1.1  # cascade pyramid step
MIN_NEIGHBORS = 3  # cascade hits needed around a candidate
MIN_SIZE = (36, 18)  # the cascade's own window: smaller mouths cannot be found
MOUTH_WIDTHS = (0.35, 0.85)  # a candidate's box is this many face widths wide (the box is wider than the lips)
CENTRE_TOLERANCE = 0.2  # ... and its centre at most this many face widths from the face's centre line
MIN_WEIGHT = 0.5  # ... and the cascade's confidence (level weight) at least this
MEDIAN_SECONDS = 2.0  # a frame's mouth: the median of the detections this close in time ...
MIN_DETECTIONS = 2  # ... of which there must be at least this many
JUMP_WIDTHS = 0.25  # a detection this many box widths from the median of the last MEDIAN_SECONDS is dropped ...
JUMP_HISTORY = 3  # ... once there are this many detections in that time (open mouths are missed, chins are not)


@dataclass(frozen=True)
class Mouth:
    """A located mouth in patch pixels: the centre of the lips and the width of the cascade's box."""

    cx: float
    cy: float
    width: float  # about 1.5 x the lips' width; the box is half as tall as wide


def lower_face(frame: np.ndarray, face: FaceBox) -> np.ndarray:
    """The face-normalised grey patch of *face*'s lower half in an RGB (H, W, 3) or grey (H, W) frame."""
    import cv2

    x0, x1, y0, y1 = PATCH_AREA
    scale = PATCH_FACE_PIXELS / max(face.w, 1.0)
    size = (round((x1 - x0) * PATCH_FACE_PIXELS), round((y1 - y0) * PATCH_FACE_PIXELS * face.h / max(face.w, 1.0)))
    # Only the pixels the patch needs (and a margin for interpolation) are converted to grey.
    height, width = frame.shape[:2]
    left, top = face.x + x0 * face.w, face.y + y0 * face.h
    cut_x, cut_y = max(0, int(left) - 2), max(0, int(top) - 2)
    cut = frame[cut_y:min(height, int(face.y + y1 * face.h) + 3), cut_x:min(width, int(face.x + x1 * face.w) + 3)]
    if cut.size == 0:
        return np.zeros((size[1], size[0]), dtype=np.uint8)
    gray = cut if cut.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(cut), cv2.COLOR_RGB2GRAY)
    warp = np.float32([[scale, 0, -(left - cut_x) * scale], [0, scale, -(top - cut_y) * scale]])
    flags = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.warpAffine(gray, warp, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)


def patch_to_frame(mouth: Mouth, face: FaceBox) -> Mouth:
    """*mouth* (patch pixels of *face*'s patch) in frame pixels."""
    scale = max(face.w, 1.0) / PATCH_FACE_PIXELS
    return Mouth(face.x + PATCH_AREA[0] * face.w + mouth.cx * scale, face.y + PATCH_AREA[2] * face.h + mouth.cy * scale,
                 mouth.width * scale)


class MouthFinder:
    """Mouths of consecutive frames: add() every frame's patch (None without a face), then mouth(i) once settled(i)."""

    def __init__(self, fps: float, detect_every: int = 5) -> None:
        import cv2

        self.cv2 = cv2
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV's {CASCADE_FILE} could not be loaded from {cv2.data.haarcascades}")
        self.detect_every = max(1, detect_every)
        self.window = max(1, round(MEDIAN_SECONDS * fps))
        self.frames = 0  # frames added so far
        self.detections: deque[tuple[int, Mouth]] = deque()  # (frame, mouth), in order; older ones are dropped

    def add(self, patch: np.ndarray | None) -> None:
        """The next frame's patch (lower_face()), or None when the frame has no face."""
        if patch is not None and self.frames % self.detect_every == 0:
            found = self.detect(patch)
            recent = [mouth for frame, mouth in self.detections if frame >= self.frames - self.window]
            if found is not None and len(recent) >= JUMP_HISTORY:
                cx, cy = np.median([(m.cx, m.cy) for m in recent], axis=0)
                if np.hypot(found.cx - cx, found.cy - cy) > JUMP_WIDTHS * found.width:
                    found = None
            if found is not None:
                self.detections.append((self.frames, found))
        self.frames += 1

    def settled(self, index: int) -> bool:
        """Whether every detection that can count for frame *index* has been made."""
        return index + self.window < self.frames

    def mouth(self, index: int) -> Mouth | None:
        """Frame *index*'s mouth: the median of the detections around it. Call with non-decreasing indices."""
        while self.detections and self.detections[0][0] < index - self.window:
            self.detections.popleft()
        near = [mouth for frame, mouth in self.detections if frame <= index + self.window]
        if len(near) < MIN_DETECTIONS:
            return None
        cx, cy, width = np.median(np.array([(m.cx, m.cy, m.width) for m in near]), axis=0)
        return Mouth(float(cx), float(cy), float(width))

    def detect(self, patch: np.ndarray) -> Mouth | None:
        """The cascade's best mouth in one patch, or None."""
        face_w = PATCH_FACE_PIXELS
        centre = (0.5 - PATCH_AREA[0]) * face_w
        largest = round(MOUTH_WIDTHS[1] * face_w)
        boxes, _, weights = self.cascade.detectMultiScale3(patch, SCALE_FACTOR, MIN_NEIGHBORS, minSize=MIN_SIZE,
                                                           maxSize=(largest, largest), outputRejectLevels=True)
        best: Mouth | None = None
        best_weight = MIN_WEIGHT
        for (x, y, w, h), weight in zip(boxes, np.ravel(weights), strict=True):
            mouth = Mouth(x + w / 2, y + h / 2, float(w))
            if not MOUTH_WIDTHS[0] * face_w <= w <= largest or abs(mouth.cx - centre) > CENTRE_TOLERANCE * face_w:
                continue
            if weight > best_weight:
                best, best_weight = mouth, float(weight)
        return best
