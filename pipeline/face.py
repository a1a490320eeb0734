"""Faces over time: detect every few frames, track in between, smooth, pick the main face, place the mouth.

Public API (shared by the engines and the sync score; keep it stable):

- FaceTracker(detect_every=5).update(frames) -> list[FaceBox | None], one per frame, in order. Feed it
  consecutive RGB batches of one video; it keeps its state between calls (a batch may be any size).
  None means "no face here": engines leave that frame untouched.
- FaceBox(x, y, w, h): a face box in frame pixels (floats; Haar-cascade style: brows to lower lip,
  square). .mouth() places the mouth; .scaled(), .clipped(), .iou(), .as_ints() are helpers.
- MouthRegion: the lip seam's centre, the mouth's half width and the face size; .bounds() is the
  rectangle a mouth edit may change (nose to upper neck, cheek to cheek).
- FaceDetector().detect(frame) -> list[FaceBox], largest first: one frame, no tracking.
- Frames are RGB (H, W, 3); FaceTracker(order="bgr") / FaceDetector(order="bgr") take OpenCV's BGR
  instead, and 2-D frames (H, W) are taken as grey (e.g. the Y plane of YUV video).

How tracking works: the OpenCV Haar cascade (opencv-python-headless, cv2.data.haarcascades) runs on
every `detect_every`-th frame and on the last frame of each batch, on a copy scaled down to at most
DETECT_MAX_SIDE pixels; while a face is tracked, only around it and for about its size (every
FULL_SCAN_EVERY-th detection searches the whole frame). The main face is the detection that overlaps
the tracked one most, else the largest. Haar boxes come in position steps of about 4% of the face
size, so between keypoints the face patch is followed by normalised cross-correlation (sub-pixel) and
Haar's box only pulls the followed position gently (no drift); an alpha-beta filter smooths the centre
(no lag on a steady pan), an exponential average the log size; frames in between are interpolated.
A single missed detection between two hits is bridged; where a face appears or disappears the frames
in between are each run through the detector, so the edge is exact and frames without a face are
reported as None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CASCADE_FILE = "haarcascade_frontalface_default.xml"
DETECT_MAX_SIDE = 480  # detection runs on a copy whose longer side is at most this (speed)
MIN_FACE_FRACTION = 0.12  # ignore faces smaller than this fraction of the frame's shorter side
MIN_FACE_PIXELS = 24  # ... and smaller than this on the detection copy
SCALE_FACTOR = 1.1  # cascade pyramid step: smaller gives finer box sizes, slower
MIN_NEIGHBORS = 6  # higher: fewer false faces, more missed ones
MATCH_IOU = 0.3  # a detection overlapping the tracked face this much continues the track
NEAR_MARGIN = 0.5  # tracking: look this many face sizes around the last face ...
NEAR_SIZES = (0.75, 1.35)  # ... for faces this much smaller / larger than it
NEAR_FACE_PIXELS = 80  # ... on a copy scaled (by halves) so that the face is at most this big
FULL_SCAN_EVERY = 10  # every this many detections the whole frame is searched for a face as big or bigger
PATCH_AREA = (0.15, 0.85, 0.10, 0.95)  # the face patch followed between keypoints (fractions of the box)
PATCH_WIDTH = 48  # ... compared at this width in pixels
PATCH_SEARCH = 0.25  # ... searched for this many face widths around where it is expected
PATCH_MIN_SCORE = 0.6  # normalised cross-correlation below this: the patch is lost, Haar's box is used
ANCHOR_GAIN = 0.15  # the followed position is pulled this much towards Haar's box at each keypoint (no drift)
POSITION_ALPHA = 0.7  # alpha-beta filter on the box centre, gains per frame of time between detections
VELOCITY_BETA = 0.3
SIZE_ALPHA = 0.1  # exponential average of log(size), per frame
RESET_JUMP = 0.5  # a centre jump of more than this many face widths starts a new track (a cut)

# Mouth geometry as fractions of a Haar frontal-face box (measured on frontal faces: the box spans brows
# to lower lip; the lip seam sits at about 0.82 of its height, the chin at about 1.18).
MOUTH_CENTER_X = 0.50
MOUTH_SEAM_Y = 0.82
MOUTH_HALF_WIDTH = 0.22
REGION_TOP = 0.12  # .bounds(): from this far above the seam (below the nose) ...
REGION_BOTTOM = 0.58  # ... to this far below it (upper neck), in face heights
REGION_HALF_WIDTH = 0.50  # ... and this far either side of the centre, in face widths


@dataclass(frozen=True)
class MouthRegion:
    """Where the mouth is in a frame, in pixels."""

    cx: float  # centre of the lip seam
    cy: float
    half_width: float  # half the closed mouth's width
    face_w: float
    face_h: float

    def bounds(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), clipped to a width x height frame: the only pixels a mouth edit may change."""
        x0 = math.floor(self.cx - REGION_HALF_WIDTH * self.face_w)
        x1 = math.ceil(self.cx + REGION_HALF_WIDTH * self.face_w)
        y0 = math.floor(self.cy - REGION_TOP * self.face_h)
        y1 = math.ceil(self.cy + REGION_BOTTOM * self.face_h)
        return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


@dataclass(frozen=True)
class FaceBox:
    """A face in frame pixels (top-left x, y; width, height)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2

    @property
    def area(self) -> float:
        return self.w * self.h

    def mouth(self) -> MouthRegion:
        return MouthRegion(
            cx=self.x + MOUTH_CENTER_X * self.w,
            cy=self.y + MOUTH_SEAM_Y * self.h,
            half_width=MOUTH_HALF_WIDTH * self.w,
            face_w=self.w,
            face_h=self.h,
        )

    def scaled(self, factor: float) -> FaceBox:
        return FaceBox(self.x * factor, self.y * factor, self.w * factor, self.h * factor)

    def clipped(self, width: int, height: int) -> FaceBox:
        x0, y0 = max(0.0, self.x), max(0.0, self.y)
        x1, y1 = min(float(width), self.x + self.w), min(float(height), self.y + self.h)
        return FaceBox(x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0))

    def as_ints(self) -> tuple[int, int, int, int]:
        return round(self.x), round(self.y), round(self.w), round(self.h)

    def iou(self, other: FaceBox) -> float:
        ix = max(0.0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


def lerp(a: FaceBox, b: FaceBox, t: float) -> FaceBox:
    """The box a fraction t of the way from a to b."""
    return FaceBox(a.x + (b.x - a.x) * t, a.y + (b.y - a.y) * t, a.w + (b.w - a.w) * t, a.h + (b.h - a.h) * t)


class FaceDetector:
    """OpenCV's frontal-face Haar cascade on a scaled-down grey copy of an RGB frame."""

    def __init__(self, max_side: int = DETECT_MAX_SIDE, min_face_fraction: float = MIN_FACE_FRACTION,
                 order: str = "rgb") -> None:
        import cv2

        self.cv2 = cv2
        self.to_gray = _gray_code(order)
        self.max_side = max_side
        self.min_face_fraction = min_face_fraction
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV's {CASCADE_FILE} could not be loaded from {cv2.data.haarcascades}; "
                               "reinstall opencv-python-headless")

    def detect(self, frame: np.ndarray, near: FaceBox | None = None,
               larger_than: FaceBox | None = None) -> list[FaceBox]:
        """Faces in one frame (H, W, 3) uint8 in this detector's channel order, or grey (H, W); largest first.

        With *near*, only faces of about that size around it are looked for (much faster: tracking).
        With *larger_than*, only faces at least about that big, anywhere (a new main face?).
        """
        cv2 = self.cv2
        height, width = frame.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        x0 = y0 = 0
        smallest = max(MIN_FACE_PIXELS, round(self.min_face_fraction * min(height, width) * scale))
        largest = 0
        if larger_than is not None:
            smallest = max(smallest, round(NEAR_SIZES[0] * larger_than.w * scale))
        if near is not None:
            margin = NEAR_MARGIN * max(near.w, near.h)
            x0, y0 = max(0, int(near.x - margin)), max(0, int(near.y - margin))
            x1 = min(width, int(near.x + near.w + margin) + 1)
            y1 = min(height, int(near.y + near.h + margin) + 1)
            frame = frame[y0:y1, x0:x1]
            # Halve the scale while the face is bigger than NEAR_FACE_PIXELS: steps of 2 keep the cascade's
            # size steps the same as a full-frame search, so the box size does not jump between the two.
            while near.w * scale > NEAR_FACE_PIXELS:
                scale /= 2.0
            smallest = max(MIN_FACE_PIXELS, round(NEAR_SIZES[0] * near.w * scale))
            largest = round(NEAR_SIZES[1] * near.w * scale)
        if scale < 1.0:  # shrink first (cheaper), then grey
            frame = cv2.resize(frame, (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale))),
                               interpolation=cv2.INTER_AREA)
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, self.to_gray)
        if min(gray.shape) < smallest:
            return []
        found = self.cascade.detectMultiScale(gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                              minSize=(smallest, smallest), maxSize=(largest, largest))
        boxes = [FaceBox(float(x) / scale + x0, float(y) / scale + y0, float(w) / scale, float(h) / scale)
                 for x, y, w, h in found]
        return sorted(boxes, key=lambda box: box.area, reverse=True)


class _Smoother:
    """Alpha-beta filter on the centre, exponential average on log size; reset on a jump."""

    def __init__(self) -> None:
        self.frame: int | None = None
        self.cx = self.cy = self.vx = self.vy = 0.0
        self.log_w = self.log_h = 0.0

    def reset(self) -> None:
        self.frame = None

    def update(self, frame: int, box: FaceBox) -> FaceBox:
        cx, cy = box.center
        if self.frame is None or frame <= self.frame:
            self._start(frame, box)
            return box
        dt = frame - self.frame
        px, py = self.cx + self.vx * dt, self.cy + self.vy * dt
        rx, ry = cx - px, cy - py
        if math.hypot(rx, ry) > RESET_JUMP * box.w:
            self._start(frame, box)
            return box
        alpha, beta, size_alpha = (1.0 - (1.0 - gain) ** dt for gain in (POSITION_ALPHA, VELOCITY_BETA, SIZE_ALPHA))
        self.cx, self.cy = px + alpha * rx, py + alpha * ry
        self.vx += beta * rx / dt
        self.vy += beta * ry / dt
        self.log_w += size_alpha * (math.log(box.w) - self.log_w)
        self.log_h += size_alpha * (math.log(box.h) - self.log_h)
        self.frame = frame
        return self.box()

    def box(self) -> FaceBox:
        w, h = math.exp(self.log_w), math.exp(self.log_h)
        return FaceBox(self.cx - w / 2, self.cy - h / 2, w, h)

    def _start(self, frame: int, box: FaceBox) -> None:
        self.frame = frame
        self.cx, self.cy = box.center
        self.vx = self.vy = 0.0
        self.log_w, self.log_h = math.log(max(box.w, 1.0)), math.log(max(box.h, 1.0))

    def predict(self, frame: int) -> FaceBox | None:
        """Where the face should be at *frame*, from the last position and velocity."""
        if self.frame is None:
            return None
        dt = frame - self.frame
        w, h = math.exp(self.log_w), math.exp(self.log_h)
        return FaceBox(self.cx + self.vx * dt - w / 2, self.cy + self.vy * dt - h / 2, w, h)


class _PatchFollower:
    """Follows the face patch of the last keypoint into the next one: normalised cross-correlation
    (cv2.matchTemplate) at sub-pixel precision. Much steadier than Haar boxes, whose positions come in
    steps of about 4% of the face size."""

    def __init__(self, order: str = "rgb") -> None:
        import cv2

        self.cv2 = cv2
        self.to_gray = _gray_code(order)
        self.template: np.ndarray | None = None
        self.centre = (0.0, 0.0)  # frame position of the patch's centre when it was cut
        self.scale = (1.0, 1.0)

    def reset(self) -> None:
        self.template = None

    def remember(self, frame: np.ndarray, box: FaceBox) -> None:
        """Cut the patch of *box* out of *frame* for the next find()."""
        cut = self._cut(frame, self._patch(box), PATCH_WIDTH / max(1.0, box.w * (PATCH_AREA[1] - PATCH_AREA[0])))
        if cut is None:
            self.template = None
            return
        self.template, self.centre, self.scale = cut

    def find(self, frame: np.ndarray, expected: FaceBox) -> tuple[float, float] | None:
        """How far (dx, dy) the patch moved since remember(), or None when it is not found well enough."""
        if self.template is None:
            return None
        cv2 = self.cv2
        x0, y0, x1, y1 = self._patch(expected)
        margin = PATCH_SEARCH * expected.w
        cut = self._cut(frame, (x0 - margin, y0 - margin, x1 + margin, y1 + margin), self.scale)
        if cut is None:
            return None
        search, (centre_x, centre_y), (scale_x, scale_y) = cut
        height, width = self.template.shape
        if search.shape[0] <= height or search.shape[1] <= width:
            return None
        scores = cv2.matchTemplate(search, self.template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = cv2.minMaxLoc(scores)
        if best < PATCH_MIN_SCORE:
            return None
        fx = bx + _peak_offset(scores[by, bx - 1:bx + 2]) if 0 < bx < scores.shape[1] - 1 else float(bx)
        fy = by + _peak_offset(scores[by - 1:by + 2, bx]) if 0 < by < scores.shape[0] - 1 else float(by)
        # Patch centre in the search image -> frame pixels.
        found_x = centre_x + (fx + width / 2 - search.shape[1] / 2) / scale_x
        found_y = centre_y + (fy + height / 2 - search.shape[0] / 2) / scale_y
        return found_x - self.centre[0], found_y - self.centre[1]

    @staticmethod
    def _patch(box: FaceBox) -> tuple[float, float, float, float]:
        left, right, top, bottom = PATCH_AREA
        return box.x + left * box.w, box.y + top * box.h, box.x + right * box.w, box.y + bottom * box.h

    def _cut(self, frame: np.ndarray, rect: tuple[float, float, float, float],
             scale: float | tuple[float, float]) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]] | None:
        """Grey, scaled copy of *rect* (clipped to the frame), its centre in frame pixels, and the scales used."""
        cv2 = self.cv2
        height, width = frame.shape[:2]
        x0, y0 = max(0, int(math.floor(rect[0]))), max(0, int(math.floor(rect[1])))
        x1, y1 = min(width, int(math.ceil(rect[2]))), min(height, int(math.ceil(rect[3])))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        scale_x, scale_y = scale if isinstance(scale, tuple) else (scale, scale)
        size = (max(8, round((x1 - x0) * scale_x)), max(8, round((y1 - y0) * scale_y)))
        small = cv2.resize(frame[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
        gray = small if small.ndim == 2 else cv2.cvtColor(small, self.to_gray)
        return gray, ((x0 + x1) / 2, (y0 + y1) / 2), (size[0] / (x1 - x0), size[1] / (y1 - y0))


def _gray_code(order: str) -> int:
    import cv2

    codes = {"rgb": cv2.COLOR_RGB2GRAY, "bgr": cv2.COLOR_BGR2GRAY}
    if order not in codes:
        raise ValueError(f"channel order must be 'rgb' or 'bgr', not {order!r}")
    return codes[order]


def _peak_offset(three: np.ndarray) -> float:
    """Sub-pixel position of a peak from three samples around it (parabola), within +-0.5."""
    left, centre, right = (float(v) for v in three)
    curvature = left - 2.0 * centre + right
    if curvature >= 0:
        return 0.0
    return max(-0.5, min(0.5, 0.5 * (left - right) / curvature))

class FaceTracker:
    """The main face of a video, frame by frame, fed in consecutive batches (see the module docstring)."""

    def __init__(self, detect_every: int = 5, detector: FaceDetector | None = None, order: str = "rgb") -> None:
        if detect_every < 1:
            raise ValueError("detect_every must be at least 1")
        self.detect_every = detect_every
        self.order = order
        self.detector = detector or FaceDetector(order=order)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next update() starts a new video."""
        self.frames_seen = 0  # frames passed to update() so far
        self.faces_seen = 0  # of those, frames with a face
        self.detections_run = 0
        self._smoother = _Smoother()
        self._follower = _PatchFollower(self.order)
        self._last_raw: FaceBox | None = None  # the most recent chosen detection (main-face choice)
        self._carry: tuple[int, FaceBox | None] | None = None  # last keypoint of the previous batch

    def update(self, frames: np.ndarray | Sequence[np.ndarray]) -> list[FaceBox | None]:
        """Boxes for the next consecutive frames of the video: a (B, H, W, 3) or grey (B, H, W) array, or a list."""
        count = len(frames)
        if count == 0:
            return []
        first = self.frames_seen
        # 1. Detect on keypoints: every detect_every-th frame of the video and the batch's last frame.
        keys = sorted({i for i in range(count) if (first + i) % self.detect_every == 0} | {count - 1})
        raw: dict[int, FaceBox | None] = {}
        for i in keys:
            raw[first + i] = self._detect(frames[i])
        if self._carry is not None:
            raw[self._carry[0]] = self._carry[1]
        # 2. Bridge single missed detections between two hits.
        ordered = sorted(raw)
        for k in range(1, len(ordered) - 1):
            before, here, after = ordered[k - 1], ordered[k], ordered[k + 1]
            if raw[here] is None and raw[before] is not None and raw[after] is not None and here >= first:
                del raw[here]
        # 3. Where a face appears or disappears between two keypoints, look at every frame in between.
        ordered = sorted(raw)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if (raw[a] is None) != (raw[b] is None) and b - a > 1:
                self._last_raw = raw[a] or raw[b]
                for g in range(max(a + 1, first), b):
                    raw[g] = self._detect(frames[g - first])
        # 4. Smooth the detections in order; a miss ends the track.
        smoothed: dict[int, FaceBox | None] = {}
        for g in sorted(raw):
            if self._carry is not None and g == self._carry[0]:
                smoothed[g] = self._carry[1]
                continue
            box = raw[g]
            if box is None:
                self._smoother.reset()
                self._follower.reset()
                smoothed[g] = None
                continue
            frame = frames[g - first]
            smoothed[g] = self._smoother.update(g, self._measure(frame, g, box))
            self._follower.remember(frame, smoothed[g])
        # 5. Each frame: its keypoint's box, or interpolated between two keypoints with faces.
        points = sorted(smoothed)
        boxes: list[FaceBox | None] = []
        k = 0
        for g in range(first, first + count):
            while k + 1 < len(points) and points[k + 1] <= g:
                k += 1
            a = points[k]
            if a == g:
                boxes.append(smoothed[a])
                continue
            b = points[k + 1]
            box_a, box_b = smoothed[a], smoothed[b]
            both = box_a is not None and box_b is not None
            boxes.append(lerp(box_a, box_b, (g - a) / (b - a)) if both else None)  # type: ignore[arg-type]
        self._carry = (first + count - 1, boxes[-1])
        self.frames_seen += count
        self.faces_seen += sum(box is not None for box in boxes)
        return boxes

    def _measure(self, frame: np.ndarray, index: int, detected: FaceBox) -> FaceBox:
        """Haar's box, its centre replaced by the followed patch's (pulled slightly towards Haar's)."""
        expected = self._smoother.predict(index)
        if expected is None:
            return detected
        moved = self._follower.find(frame, expected)
        if moved is None:
            return detected
        last = self._smoother.box()
        followed_x, followed_y = last.center[0] + moved[0], last.center[1] + moved[1]
        haar_x, haar_y = detected.center
        if math.hypot(haar_x - followed_x, haar_y - followed_y) > RESET_JUMP * detected.w:
            return detected  # they disagree: trust the detector (a cut, or the patch slid off)
        centre_x = followed_x + ANCHOR_GAIN * (haar_x - followed_x)
        centre_y = followed_y + ANCHOR_GAIN * (haar_y - followed_y)
        return FaceBox(centre_x - detected.w / 2, centre_y - detected.h / 2, detected.w, detected.h)

    def _detect(self, frame: np.ndarray) -> FaceBox | None:
        self.detections_run += 1
        reference = self._last_raw
        if reference is not None and self.detections_run % FULL_SCAN_EVERY:
            near = self.detector.detect(frame, near=reference)
            if near:
                choice = max(near, key=lambda box: box.iou(reference))
                self._last_raw = choice
                return choice
        found = self.detector.detect(frame, larger_than=reference)
        if not found:
            if reference is None:
                return None
            found = self.detector.detect(frame, near=reference)  # no larger face: go on with the tracked one
            if not found:
                return None
        choice = found[0]
        if reference is not None:
            best_overlap, best = max(((box.iou(reference), box) for box in found), key=lambda pair: pair[0])
            if best_overlap >= MATCH_IOU:
                choice = best
        # Measure it again the way tracking does: the cascade's boxes depend a little on the sizes searched.
        again = self.detector.detect(frame, near=choice)
        if again:
            choice = max(again, key=lambda box: box.iou(choice))
        self._last_raw = choice
        return choice
