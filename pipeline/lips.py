"""Where the lips are: found in the picture from colour and edges, not guessed from the face box.

Public API (shared by the engines; the sync score keeps its own, independent locator):

- Lips: the located mouth in frame pixels: the corners (cx, half_width), the upper lip's top edge, the
  seam (the upper lip's lower edge), the opening between the lips (gap: 0 when they touch) and the lower
  lip's bottom edge, with the face's size for scale.
- locate(picture, face) -> Lips | None: one frame. *picture* is a LowerFace cut from RGB or YUV frames.
- LipTracker(every).update(pictures, faces) -> list[Lips | None]: a video, fed in consecutive batches.

How lips are found (in a lower-face window scaled to WINDOW_WIDTH pixels, in YCrCb, so the Y and the
subsampled U/V planes of the decoder's YUV frames serve as they are):

1. Lip colour: lips are redder than the skin around them whatever the skin's tone: Cr up, Cb a little
   down (Hsu, Abdel-Mottaleb and Jain's mouth map). Each pixel's lip score is (Cr - 0.5 Cb) minus the
   window's median, in units of the window's spread; lipstick only makes it stronger. Beards and
   moustaches (grey to brown hair) and teeth (white) score below the skin.
2. Darkness: the line or gap between the lips is the darkest horizontal stretch of the lower face. A
   mouth drawn as a line (illustrations, pale lips) is found from this alone.
3. The lips are the best horizontally elongated blob of (1), closed vertically so that an open mouth's
   two lips and the teeth or dark gap between them make one blob, near where a mouth can be on the face
   box. Its corners give the width; its central columns give the top, bottom, and the gap: the rows
   between the lips that are not lip-coloured (teeth, the dark inside) or, with the lips closed, the
   darkest row. Confidence comes from the colour contrast and the shape; below MIN_CONFIDENCE the frame
   has no lips (the engine leaves it untouched) rather than a guess.

Tracking: every `every`-th frame (and a batch's last) is located in full; frames in between take the
lips' position relative to the face box interpolated between the two keyframes around them (the face
tracker already follows the head), while the opening between the lips, which changes every frame when
the person speaks, is measured on every frame in a narrow strip at the tracked mouth. Small changes between
keyframes are smoothed (steadier corners); a move beyond jitter (a head turning) is followed at once; a
keyframe far off the track is held unless the frame beside it agrees (a hand passing does not stay put).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipeline.face import FaceBox, MouthRegion

# The lower-face window searched, as fractions of the Haar face box (brows to about the lower lip).
WINDOW_X = (0.12, 0.88)
WINDOW_Y = (0.52, 1.22)
WINDOW_WIDTH = 64  # the window is scaled to this many pixels wide
BLUR = 1.0  # colour and darkness are smoothed by this (window pixels) against compression noise
BLUR_MARGIN = 3  # columns blurred beyond those measured
CB_WEIGHT = 0.5  # lip colour: Cr - CB_WEIGHT * Cb (lips: Cr up, Cb a little down)
# Where the seam can be, and the mouth's size, as fractions of the face box.
MOUTH_Y = (0.62, 1.00)
MOUTH_X = (0.30, 0.70)
MOUTH_TYPICAL = 0.74  # a mouth placed higher than this (the nose's shadow, a moustache) ...
HIGH_PENALTY = 1.5  # ... must stand out this much more (spreads) per 0.1 face heights above it,
HIGH_SHARE = 0.3  # ... and its rows this share more (of their difference from the skin)
PLACE_WIDTHS = (0.30, 0.38, 0.46, 0.54)  # the mouth is placed by boxes this wide (face widths) ...
PLACE_HEIGHT = 0.35  # ... and this high (of their width), against a ring around them ...
RING_SIZE = (1.5, 3.0)  # ... this much wider and higher
Z_RANGE = (-3.0, 6.0)  # each cue counts within these many spreads of its median
SEAM_REACH = 0.06  # the mouth's most distinct row is within this of the placed centre (face heights) ...
REACH_UP = 0.03  # ... and the mouth reaches at most this much further up (the nose is above), LIP_REACH down
WIDTH_RANGE = (0.7, 1.4)  # the corners are kept within these shares of the placing box's width
CENTRE_COLUMNS = 0.40  # the seam and the opening are measured over this middle share of the mouth's width
LIP_REACH = 0.07  # each lip's colour is looked for this far above / below the seam (face heights)
LIP_THICKNESS = (0.02, 0.06)  # each lip's height is kept within these (face heights)
LIP_SIDE = 3  # ... and where the rows this far above and below are both lip-coloured, ...
LIP_SIDES_WEIGHT = 2.0  # ... counted this much (levels of luma per level of lip colour)
SEAM_STEP = 2  # closed lips meet where the rows this far below are lightest against their own darkness
CLOSED_SEAM = 0.025  # a dip in lip colour this high (face heights) is closed lips, not an opening
BAND_LEVEL = 0.35  # the mouth's band: rows that differ from the skin by this share of the most different row
MAX_MOUTH = 0.30  # the whole mouth, lips and opening, is at most this high (face heights)
LIP_RED = 1.0  # rows beside the mouth's band this many levels redder than the skin are lip too
TEETH_RED = 2.0  # bright rows this many levels less red than the skin are teeth
TEETH_GAP = 0.07  # teeth this high (face heights) at most may part the band from the other lip, ...
TEETH_LIP_SHARE = 0.4  # ... whose colour is at least this share of the band's own
GAP_CONTRAST = 4.0  # an opening is this many levels less lip-coloured than the lips around it
DARK_WEIGHT = 0.5  # weight of the seam's darkness (levels of luma) against lip colour (levels of chroma) ...
DARK_CAP = 8.0  # ... counted up to this many levels (a shadow under the chin is darker than any seam)
RUN_GAP = 2  # ... along a run of columns with gaps this wide at most
CORNER_LIP_RED = 4.0  # lips this much redder than above and below them bound the corners by their colour ...
CORNER_SLACK = 1  # ... give or take this many columns
CORNER_SHARE = 0.30  # the corners are where the lips' contrast falls under this share of its peak
MIN_STRENGTH = 4.0  # the mouth must differ from the skin by this many levels (colour + darkness) ...
MIN_CONFIDENCE = 0.5  # ... (confidence 1 at twice that); below this share of it: no lips
TRACK_REACH = 0.05  # between keyframes the opening is looked for within this of the tracked seam (face heights)
TRACK_ALPHA = 0.5  # keyframe positions relative to the face are smoothed by this much (steadier corners)
JUMP = (0.08, 0.06)  # a keyframe this far from the track (face widths across, heights down) is held ...
MAX_HELD = 2  # ... unless the next frame agrees, at most this many keyframes in a row; then the track follows it
MOVE = (0.03, 0.02)  # a keyframe this far from the track is followed at once, not smoothed (a head turning)


@dataclass(frozen=True)
class Lips:
    """A located mouth, in frame pixels. y grows downwards: top <= seam <= seam + gap <= bottom."""

    cx: float  # the mouth's centre between the corners
    half_width: float  # half the distance between the corners
    top: float  # upper lip's top edge, at the centre
    seam: float  # upper lip's lower edge (where the lips meet when closed)
    gap: float  # opening between the lips at the centre (teeth or the dark inside); 0: closed
    bottom: float  # lower lip's bottom edge
    face_w: float
    face_h: float
    confidence: float = 1.0

    @property
    def height(self) -> float:
        """The lips' height (both lips and any opening), top to bottom."""
        return self.bottom - self.top

    @property
    def centre(self) -> tuple[float, float]:
        return self.cx, (self.top + self.bottom) / 2

    def region(self) -> MouthRegion:
        """The mouth region around the seam: its bounds() are the only pixels a mouth edit may change."""
        return MouthRegion(cx=self.cx, cy=self.seam, half_width=self.half_width, face_w=self.face_w,
                           face_h=self.face_h)

    def relative_to(self, face: FaceBox) -> tuple[float, ...]:
        """Everything but the gap, in face-box units: for tracking between keyframes."""
        return ((self.cx - face.x) / face.w, self.half_width / face.w, (self.top - face.y) / face.h,
                (self.seam - face.y) / face.h, (self.bottom - self.gap - face.y) / face.h)

    @classmethod
    def on_face(cls, relative: Sequence[float], face: FaceBox, gap: float, confidence: float) -> Lips:
        """The inverse of relative_to(), with this frame's *gap*."""
        cx, half_width, top, seam, closed_bottom = relative
        return cls(cx=face.x + cx * face.w, half_width=half_width * face.w, top=face.y + top * face.h,
                   seam=face.y + seam * face.h, gap=gap, bottom=face.y + closed_bottom * face.h + gap,
                   face_w=face.w, face_h=face.h, confidence=confidence)


@dataclass(frozen=True)
class LowerFace:
    """The lower-face window of one frame, scaled to WINDOW_WIDTH: Y, Cr, Cb (float32, same shape).

    (x0, y0) is the window's top-left in frame pixels and *scale* window pixels per frame pixel.
    """

    luma: np.ndarray
    cr: np.ndarray
    cb: np.ndarray
    x0: float
    y0: float
    scale: float

    @classmethod
    def from_rgb(cls, frame: np.ndarray, face: FaceBox) -> LowerFace | None:
        import cv2

        cut = _window(face, frame.shape[1], frame.shape[0])
        if cut is None:
            return None
        (x0, y0, x1, y1), size, scale = cut
        small = cv2.resize(np.ascontiguousarray(frame[y0:y1, x0:x1]), size, interpolation=cv2.INTER_AREA)
        ycc = cv2.cvtColor(small, cv2.COLOR_RGB2YCrCb).astype(np.float32)
        return cls(ycc[..., 0], ycc[..., 1], ycc[..., 2], float(x0), float(y0), scale)

    @classmethod
    def from_yuv(cls, luma: np.ndarray, u: np.ndarray, v: np.ndarray, face: FaceBox) -> LowerFace | None:
        """From one frame's Y plane (H, W) and 4:2:0 U (Cb) and V (Cr) planes (H/2, W/2)."""
        import cv2

        cut = _window(face, luma.shape[1], luma.shape[0], even=True)
        if cut is None:
            return None
        (x0, y0, x1, y1), size, scale = cut

        def shrink(plane: np.ndarray, step: int) -> np.ndarray:
            part = np.ascontiguousarray(plane[y0 // step:y1 // step, x0 // step:x1 // step])
            return cv2.resize(part, size, interpolation=cv2.INTER_AREA).astype(np.float32)

        return cls(shrink(luma, 1), shrink(v, 2), shrink(u, 2), float(x0), float(y0), scale)


def _window(face: FaceBox, width: int, height: int,
            even: bool = False) -> tuple[tuple[int, int, int, int], tuple[int, int], float] | None:
    """The lower-face window in frame pixels (clipped), its scaled size, and the scale."""
    x0 = max(0, math.floor(face.x + WINDOW_X[0] * face.w))
    x1 = min(width, math.ceil(face.x + WINDOW_X[1] * face.w))
    y0 = max(0, math.floor(face.y + WINDOW_Y[0] * face.h))
    y1 = min(height, math.ceil(face.y + WINDOW_Y[1] * face.h))
    if even:
        x0, y0, x1, y1 = x0 - x0 % 2, y0 - y0 % 2, x1 - x1 % 2, y1 - y1 % 2
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    scale = WINDOW_WIDTH / (x1 - x0)
    return (x0, y0, x1, y1), (WINDOW_WIDTH, max(8, round((y1 - y0) * scale))), scale


def locate(picture: LowerFace | None, face: FaceBox) -> Lips | None:
    """The lips in one frame's lower face, or None when they cannot be found with confidence."""
    if picture is None:
        return None
    maps = _Maps(picture)
    scale = picture.scale
    place = _place(maps, picture, face)
    if place is None:
        return None
    centre_x, centre_y, width = place
    face_h = face.h * scale
    band = slice(max(0, round(centre_x - CENTRE_COLUMNS * width / 2)),
                 min(maps.red.shape[1], round(centre_x + CENTRE_COLUMNS * width / 2) + 1))
    reach = SEAM_REACH * face_h
    vertical = _vertical(maps, band, max(0, math.floor(centre_y - reach)),
                         min(maps.red.shape[0], math.ceil(centre_y + reach)), face_h,
                         typical=(face.y + MOUTH_TYPICAL * face.h - picture.y0) * scale)
    if vertical is None:
        return None
    corners = _corners(maps, vertical, centre_x, width)
    top, seam, gap, bottom, strength = vertical
    confidence = min(1.0, strength / (2 * MIN_STRENGTH))
    if corners is None or confidence < MIN_CONFIDENCE:
        return None
    left, right = corners
    to_x = lambda value: picture.x0 + value / scale  # noqa: E731 - window -> frame pixels (edges)
    to_y = lambda value: picture.y0 + value / scale  # noqa: E731
    return Lips(cx=to_x((left + right + 1) / 2), half_width=(right - left + 1) / 2 / scale, top=to_y(top),
                seam=to_y(seam), gap=gap / scale, bottom=to_y(bottom), face_w=face.w, face_h=face.h,
                confidence=confidence)


def _place(maps: _Maps, picture: LowerFace, face: FaceBox) -> tuple[float, float, float] | None:
    """Centre (x, y) and width of the mouth in window pixels: the box most lip-coloured and dark
    against the ring around it (a difference of boxes on integral images, at a few mouth widths)."""
    import cv2

    mouthness = maps.mouthness()
    total = cv2.integral(mouthness.astype(np.float64))
    rows, columns = mouthness.shape
    scale = picture.scale
    x_lo, x_hi = ((face.x + share * face.w - picture.x0) * scale for share in MOUTH_X)
    y_lo, y_hi = ((face.y + share * face.h - picture.y0) * scale for share in MOUTH_Y)
    best: tuple[float, float, float, float] | None = None
    for share in PLACE_WIDTHS:
        width = share * face.w * scale
        iw, ih = max(2, round(width)), max(2, round(PLACE_HEIGHT * width))
        ow, oh = round(RING_SIZE[0] * iw), round(RING_SIZE[1] * ih)
        ow, oh = ow + (ow - iw) % 2, oh + (oh - ih) % 2
        pad_y, pad_x = (oh - ih) // 2, (ow - iw) // 2
        ys = np.arange(max(pad_y, math.ceil(y_lo - ih / 2)), min(rows - oh + pad_y, math.floor(y_hi - ih / 2)) + 1)
        xs = np.arange(max(pad_x, math.ceil(x_lo - iw / 2)), min(columns - ow + pad_x, math.floor(x_hi - iw / 2)) + 1)
        if len(ys) == 0 or len(xs) == 0:
            continue
        y0, x0 = ys[:, None], xs[None, :]
        inner = _box(total, y0, x0, ih, iw)
        outer = _box(total, y0 - pad_y, x0 - pad_x, oh, ow)
        response = inner / (iw * ih) - (outer - inner) / (ow * oh - iw * ih)
        centre_fy = ((ys + ih / 2) / scale + picture.y0 - face.y) / face.h
        response = response - HIGH_PENALTY * np.clip(MOUTH_TYPICAL - centre_fy, 0.0, None)[:, None] / 0.1
        k = np.unravel_index(int(np.argmax(response)), response.shape)
        value = float(response[k])
        if best is None or value > best[0]:
            best = (value, float(xs[k[1]] + iw / 2), float(ys[k[0]] + ih / 2), float(iw))
    if best is None or best[0] <= 0:
        return None
    return best[1], best[2], best[3]


def _box(total: np.ndarray, y0: np.ndarray, x0: np.ndarray, height: int, width: int) -> np.ndarray:
    """Sums of boxes with top-left corners (y0, x0) from an integral image."""
    return total[y0 + height, x0 + width] - total[y0, x0 + width] - total[y0 + height, x0] + total[y0, x0]


def refine(picture: LowerFace | None, lips: Lips) -> Lips:
    """*lips* (tracked: placed by interpolation between keyframes) with this frame's own seam and opening,
    measured in a narrow strip at the tracked mouth: the lips move against the face box between keyframes
    (a nod, the jaw), and where they meet changes as the mouth closes. Unseen: closed, where tracked."""
    measured = _seam_and_gap(picture, lips)
    if measured is None:
        return replace(lips, bottom=lips.bottom - lips.gap, gap=0.0)
    seam, gap = measured
    shift = seam - lips.seam
    return replace(lips, top=lips.top + shift, seam=seam, gap=gap, bottom=lips.bottom - lips.gap + shift + gap)


def _seam_and_gap(picture: LowerFace | None, lips: Lips) -> tuple[float, float] | None:
    """This frame's seam (frame rows) and opening (frame pixels) near *lips*' seam, or None if unseen."""
    if picture is None:
        return None
    scale, (rows, columns) = picture.scale, picture.luma.shape
    centre, half = (lips.cx - picture.x0) * scale, max(1.0, CENTRE_COLUMNS * lips.half_width * scale)
    band = slice(max(0, round(centre - half)), min(columns, round(centre + half) + 1))
    if band.stop <= band.start:
        return None
    seam = (lips.seam - picture.y0) * scale
    reach = max(2.0, TRACK_REACH * lips.face_h * scale)
    lowest, highest = max(0, math.floor(seam - reach)), min(rows, math.ceil(seam + reach))
    known = (math.floor((lips.top - picture.y0) * scale), math.ceil((lips.bottom - lips.gap - picture.y0) * scale))
    vertical = _vertical(_Maps(picture, band), slice(None), lowest, highest, lips.face_h * scale, known=known)
    return None if vertical is None else (picture.y0 + vertical[1] / scale, vertical[2] / scale)


class _Maps:
    """Lip colour and darkness of a lower-face window (or of its *columns* only), smoothed. Only
    differences between rows and columns are used, so no common offset needs removing."""

    def __init__(self, picture: LowerFace, columns: slice | None = None) -> None:
        import cv2

        lumas, cr, cb = picture.luma, picture.cr, picture.cb
        keep = slice(None)
        if columns is not None:  # blur a little around the columns, then keep just them
            start = max(0, columns.start - BLUR_MARGIN)
            lumas, cr, cb = (plane[:, start:columns.stop + BLUR_MARGIN] for plane in (lumas, cr, cb))
            keep = slice(columns.start - start, columns.stop - start)
        self.red = cv2.GaussianBlur(cr - CB_WEIGHT * cb, (0, 0), BLUR)[:, keep]
        self.dark = -cv2.GaussianBlur(lumas, (0, 0), BLUR)[:, keep]

    def mouthness(self) -> np.ndarray:
        """Lip colour, darkness and horizontal edges, each in units of its own spread over the window,
        summed: lipstick stands out by colour, pale lips by their dark seam and edges."""
        import cv2

        edges = np.abs(cv2.Sobel(self.dark, cv2.CV_32F, 0, 1, ksize=3))
        return sum(_robust_z(cue) for cue in (self.red, self.dark, edges))


def _robust_z(values: np.ndarray) -> np.ndarray:
    """(values - median) / (1.4826 MAD), clipped to Z_RANGE."""
    median = float(np.median(values))
    spread = max(1e-3, 1.4826 * float(np.median(np.abs(values - median))))
    return np.clip((values - median) / spread, *Z_RANGE)


def _vertical(maps: _Maps, band: slice, lowest: int, highest: int, face_h: float, typical: float | None = None,
              known: tuple[int, int] | None = None) -> tuple[float, float, float, float, float] | None:
    """Top, seam, gap, bottom (window pixels, edges) and strength of the lips in the columns *band*.

    The mouth is the band of rows that differs most from the skin around it, in colour either way
    (lips redder; teeth and the inside of an open mouth less red; on dark skin often the whole mouth
    less red) and in brightness (the dark seam; bright teeth, which are less red than skin, unlike a
    highlight), peaking between *lowest* and
    *highest*; lip-coloured rows just beside it are taken in. Inside it, the least lip-coloured stretch
    (teeth, the inside) is the opening if it stands out from the lips around it; otherwise the lips
    touch along the band's darkest row.
    """
    red = maps.red[:, band].mean(axis=1)
    dark = maps.dark[:, band].mean(axis=1)
    rows = len(red)
    if highest - lowest < 3:
        return None
    margin = max(2, round(LIP_REACH * face_h))
    context = slice(max(0, lowest - margin), min(rows, highest + margin))
    base_red, base_dark = float(np.median(red[context])), float(np.median(dark[context]))
    red, dark = red - base_red, dark - base_dark
    teeth = red < -TEETH_RED  # bright and less red: teeth (a skin highlight is bright but not less red)
    contrast = np.clip(dark, 0.0, 2 * DARK_CAP) + np.clip(-dark, 0.0, 2 * DARK_CAP) * teeth
    differs = np.convolve(np.abs(red) + DARK_WEIGHT * contrast, np.ones(3) / 3, "same")
    first, last = max(0, lowest - round(REACH_UP * face_h)), min(rows - 1, highest + margin)  # the mouth's rows
    if known is None:
        above = 0.0 if typical is None else np.clip((typical - np.arange(rows)) / (0.1 * face_h), 0.0, 1.0)
        peak = lowest + int(np.argmax((differs * (1.0 - HIGH_SHARE * above))[lowest:highest]))
        strength = float(differs[peak])
        if strength < MIN_STRENGTH:
            return None
        level = BAND_LEVEL * strength
        top, bottom = _grow(differs, peak, level, -1, first), _grow(differs, peak, level, 1, last)
    else:  # the lips' rows are known (tracked): only where they meet and how far apart, this frame
        top, bottom = (min(max(first, row), last) for row in known)
        if bottom - top < 2:
            return None
        strength = float(differs[top:bottom + 1].max())
        if strength < MIN_STRENGTH:
            return None
    thin, thick = (share * face_h for share in LIP_THICKNESS)
    # Lips beside the band (pale lips around bright teeth): lip-coloured rows just above and below.
    while top > first and top > bottom - MAX_MOUTH * face_h and red[top - 1] > LIP_RED:
        top -= 1
    while bottom < last and bottom < top + MAX_MOUTH * face_h and red[bottom + 1] > LIP_RED:
        bottom += 1
    # The other lip across the teeth (the band may be one lip only: teeth differ little from skin). A
    # moustache is higher than teeth, so the skin above it is not taken for a lip.
    lip_level = TEETH_LIP_SHARE * float(red[top:bottom + 1].max())
    top = _across_teeth(red, top, -1, max(first, round(bottom - MAX_MOUTH * face_h)), lip_level,
                        round(TEETH_GAP * face_h))
    bottom = _across_teeth(red, bottom, 1, min(last, round(top + MAX_MOUTH * face_h)), lip_level,
                           round(TEETH_GAP * face_h))
    inner = slice(top + 1, bottom)  # an opening has lip (or lip line) on both sides
    seam, gap = None, 0.0
    if inner.stop - inner.start >= 1:
        low = inner.start + int(np.argmin(red[inner]))
        lips_red = max(float(red[top:low].max(initial=-np.inf)), float(red[low + 1:bottom + 1].max(initial=-np.inf)))
        if lips_red - float(red[low]) >= GAP_CONTRAST:
            cut = (lips_red + float(red[low])) / 2
            start, end = _grow(-red, low, -cut, -1, top), _grow(-red, low, -cut, 1, bottom)
            if start > 0 and end + 1 < rows and red[start - 1] > cut and red[end + 1] > cut:
                seam, gap = float(start), float(end - start + 1)  # lip-coloured on both sides
    if seam is None:
        middle = slice(top + max(1, (bottom - top) // 5), bottom - max(1, (bottom - top) // 5) + 1)
        if middle.stop <= middle.start:
            middle = slice(top, bottom + 1)
        # The lips meet on a thin dark line with the lit lower lip below it: darker than the rows around it
        # and than the rows below. The darkest row alone is often inside a dark (lipstick) upper lip, and
        # a moustache's lower edge is dark with lighter rows below but no thin line.
        step = SEAM_STEP
        padded = np.concatenate((np.full(step, dark[0]), dark, np.full(step, dark[-1])))
        above_rows, below_rows = padded[:-2 * step], padded[2 * step:]
        line_score = (dark - (above_rows + below_rows) / 2) + (dark - below_rows)
        # ... and lip colour on both sides (a shadow under the lower lip has skin below it, a moustache hair above).
        reach = LIP_SIDE
        red_padded = np.concatenate((np.full(reach, red[0]), red, np.full(reach, red[-1])))
        windows = np.lib.stride_tricks.sliding_window_view(red_padded, reach)
        red_above, red_below = windows[:rows].mean(axis=1), windows[reach + 1:reach + 1 + rows].mean(axis=1)
        line_score = line_score + LIP_SIDES_WEIGHT * np.minimum(red_above, red_below)
        seam = middle.start + int(np.argmax(line_score[middle])) + 0.5
    opened = max(0.0, gap - max(1.0, CLOSED_SEAM * face_h))
    seam += (gap - opened) / 2
    top_edge = min(max(float(top), seam - thick), seam - thin)
    bottom_edge = max(min(float(bottom + 1), seam + opened + thick), seam + opened + thin)
    return top_edge, seam, opened, bottom_edge, strength


def _across_teeth(red: np.ndarray, edge: int, step: int, limit: int, lip_level: float,
                  most: int) -> int:
    """The far edge of a lip beyond a few rows that are not lip-coloured (teeth) next to *edge*, else *edge*."""
    row = edge + step
    while 0 <= row < len(red) and abs(row - edge) <= most and (row - limit) * step <= 0:
        if red[row] > max(lip_level, LIP_RED):
            if abs(row - edge) == 1:
                return edge  # no teeth in between
            while 0 <= row + step < len(red) and (row + step - limit) * step <= 0 and red[row + step] > LIP_RED:
                row += step
            return row
        row += step
    return edge


def _grow(values: np.ndarray, start: int, level: float, step: int, limit: int) -> int:
    """The last row from *start* in direction *step* (not past *limit*) whose value stays above *level*."""
    row = start
    while row != limit and 0 <= row + step < len(values) and values[row + step] > level:
        row += step
    return row


def _corners(maps: _Maps, vertical: tuple[float, float, float, float, float], centre: float,
             width: float) -> tuple[int, int] | None:
    """First and last column of the mouth: where the lips stand out from the skin above and below them
    (in colour either way, as in _vertical: a mouth between a moustache and a beard, or on dark skin, is
    often less red than what surrounds it), kept within WIDTH_RANGE of the width *width* that placed it
    (teeth in an open mouth may leave no contrast at the centre: then the placing width is used)."""
    top, seam, gap, bottom, _ = vertical
    rows, columns = maps.red.shape
    t, b = int(top), max(int(top) + 1, math.ceil(bottom))
    pad = max(1, b - t)
    above, below = slice(max(0, t - pad), t), slice(b, min(rows, b + pad))
    if above.stop <= above.start or below.stop <= below.start:
        return None
    ring_red = (maps.red[above].mean(axis=0) + maps.red[below].mean(axis=0)) / 2
    ring_dark = (maps.dark[above].mean(axis=0) + maps.dark[below].mean(axis=0)) / 2
    line = min(rows - 1, int(seam + gap / 2))
    redder = np.convolve(maps.red[t:b].mean(axis=0) - ring_red, np.ones(3) / 3, mode="same")
    darker = np.convolve(np.clip(maps.dark[line] - ring_dark, 0.0, None), np.ones(3) / 3, mode="same")
    contrast = np.abs(redder) + DARK_WEIGHT * darker  # the seam fades out at the corners
    low, high = WIDTH_RANGE
    outer = (max(0, round(centre - high * width / 2)), min(columns - 1, round(centre + high * width / 2) - 1))
    inner = (round(centre - low * width / 2), round(centre + low * width / 2) - 1)
    threshold = CORNER_SHARE * float(contrast[outer[0]:outer[1] + 1].max(initial=0.0))
    # Each corner is the outer end of the first run of columns that stand out, going out from the narrowest
    # mouth: walking out from the middle stops at teeth (bright, no seam line) and the outermost strong column
    # may be an earring or a crease; the corners themselves are dark.
    left = _run_end(contrast, threshold, inner[0], outer[0] - 1)
    right = _run_end(contrast, threshold, inner[1], outer[1] + 1)
    lip_red = float(redder[inner[0]:inner[1] + 1].mean()) if inner[1] >= inner[0] else 0.0
    if lip_red >= CORNER_LIP_RED:  # lips redder than around them: the mouth ends where their colour does
        level = CORNER_SHARE * float(redder[outer[0]:outer[1] + 1].max())
        left = max(left, _run_end(redder, level, inner[0], outer[0] - 1) - CORNER_SLACK)
        right = min(right, _run_end(redder, level, inner[1], outer[1] + 1) + CORNER_SLACK)
    return max(0, left), min(columns - 1, right)


def _run_end(values: np.ndarray, threshold: float, start: int, stop: int) -> int:
    """From *start* towards *stop* (exclusive): the last index of the first run above *threshold* (gaps of up
    to RUN_GAP indices inside it allowed), else start."""
    step = 1 if stop > start else -1
    end, seen, weak = start, False, 0
    for index in range(start, stop, step):
        if values[index] > threshold:
            end, seen, weak = index, True, 0
        elif seen:
            weak += 1
            if weak > RUN_GAP:
                break
    return end


def _jumped(track: tuple[float, ...], found: tuple[float, ...]) -> bool:
    """Whether a keyframe's lips (relative to the face) are far from the tracked ones."""
    return abs(found[0] - track[0]) > JUMP[0] or abs(found[3] - track[3]) > JUMP[1]


def _moved(track: tuple[float, ...], found: tuple[float, ...]) -> bool:
    """Whether a keyframe's lips moved beyond jitter (relative to the face) since the last keyframe."""
    return abs(found[0] - track[0]) > MOVE[0] or abs(found[3] - track[3]) > MOVE[1]


class LipTracker:
    """The lips of a video's main face, frame by frame, fed in consecutive batches (see the docstring)."""

    def __init__(self, every: int = 5) -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self.every = every
        self.frames_seen = 0
        self.lips_seen = 0
        self.located = 0  # full locate() runs
        self._carry: tuple[int, tuple[float, ...] | None, float] | None = None  # last keypoint
        self._smoothed: tuple[float, ...] | None = None
        self._held = 0  # keyframes in a row that disagreed with the track

    def _confirmed(self, relative: tuple[float, ...], pictures: Sequence[LowerFace | None],
                   faces: Sequence[FaceBox | None], i: int) -> bool:
        """Whether a keyframe far from the track is confirmed by the frame beside it (a head turning moves
        the mouth for good; a hand or a shadow passing does not stay in the same place)."""
        j = i + 1 if i + 1 < len(faces) else i - 1
        face = faces[j] if j >= 0 else None
        beside = locate(pictures[j], face) if face is not None else None
        self.located += face is not None
        return beside is not None and not _jumped(relative, beside.relative_to(face))

    def update(self, pictures: Sequence[LowerFace | None], faces: Sequence[FaceBox | None]) -> list[Lips | None]:
        """Lips for the next consecutive frames: their lower-face windows and tracked faces (None: no face)."""
        count = len(faces)
        if count == 0:
            return []
        first = self.frames_seen
        keys = sorted({i for i in range(count) if (first + i) % self.every == 0} | {count - 1})
        points: dict[int, tuple[tuple[float, ...] | None, float]] = {}
        if self._carry is not None:
            points[self._carry[0]] = self._carry[1:]
        for i in keys:
            face = faces[i]
            found = locate(pictures[i], face) if face is not None else None
            self.located += face is not None
            if found is None or face is None:
                self._smoothed = None
                points[first + i] = (None, 0.0)
                continue
            relative = found.relative_to(face)
            if self._smoothed is not None:
                if _jumped(self._smoothed, relative):
                    if self._held < MAX_HELD and not self._confirmed(relative, pictures, faces, i):
                        self._held += 1  # one odd keyframe (a hand, a shadow): keep to the track
                        points[first + i] = (self._smoothed, found.confidence)
                        continue
                elif not _moved(self._smoothed, relative):  # steadier corners; a real move is followed at once
                    relative = tuple(s + TRACK_ALPHA * (r - s) for s, r in zip(self._smoothed, relative, strict=True))
            self._held = 0
            self._smoothed = relative
            points[first + i] = (relative, found.confidence)
        ordered = sorted(points)
        result: list[Lips | None] = []
        k = 0
        for g in range(first, first + count):
            while k + 1 < len(ordered) and ordered[k + 1] <= g:
                k += 1
            face = faces[g - first]
            a = ordered[k]
            rel_a, conf_a = points[a]
            if a == g:
                relative, confidence = rel_a, conf_a
            else:
                b = ordered[k + 1]
                rel_b, conf_b = points[b]
                if rel_a is None or rel_b is None:
                    relative, confidence = None, 0.0
                else:
                    t = (g - a) / (b - a)
                    relative = tuple(x + (y - x) * t for x, y in zip(rel_a, rel_b, strict=True))
                    confidence = min(conf_a, conf_b)
            if relative is None or face is None:
                result.append(None)
                continue
            result.append(refine(pictures[g - first], Lips.on_face(relative, face, 0.0, confidence)))
        last = ordered[-1]
        self._carry = (last, *points[last])
        self.frames_seen += count
        self.lips_seen += sum(lips is not None for lips in result)
        return result
