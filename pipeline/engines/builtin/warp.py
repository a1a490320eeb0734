"""Image synthesis: bring the mouth to rest, then open it by the audio, by warping each frame on the device.

For every frame with located lips (pipeline.lips), the region around the mouth (Lips.region().bounds():
nose to upper neck, cheek to cheek) is cut out, warped, and put back. Pixels outside that region are never
touched, and inside it only pixels the warp moves change.

The geometry and the shading are written once, as array expressions that numpy and torch both run (the
`xp` argument). Only the sampling has two backends: on the CPU numpy and OpenCV (cv2.remap: no torch to
import, a cold `lipsyncd render` is seconds shorter, and the warp costs less CPU than grid_sample), on a
GPU torch (grid_sample on the device). tests/pipeline/test_motion_warp.py checks that the two agree.

The warp is a vertical remapping, column by column, through knots below one another: nose (fixed),
the upper lip's lower edge (lifted by a fifth of the new opening), the lower lip's upper edge (the
template's own opening, if the person's mouth was open in that frame, is closed and the new opening
made instead: rest shape and new shape in one remapping), chin (moved by the difference) and upper
neck (fixed). Lips move along a lens-shaped profile across the mouth (nothing at the corners), the jaw
within a wider window that fades out before the cheeks; the lips themselves are moved, never painted,
so they keep their colour and texture.

Between the lips the inside of the mouth appears: where the template's mouth was open, its own inside
(teeth, tongue) as it was, under the upper lip; below it, or where the template's mouth was shut, a
shaded interior, darker further in and towards the middle, with soft edges and, when the mouth opens
wide, a hint of upper teeth under the upper lip. A width factor pulls the lips towards (rounded vowels)
or away from (wide vowels) the centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from pipeline.face import REGION_BOTTOM, REGION_TOP
from pipeline.lips import Lips

MAX_OPENING = 0.32  # the opening between the lips at opening 1, in mouth widths
UPPER_LIP_LIFT = 0.2  # the upper lip rises this fraction of the new opening ...
JAW_FOLLOW = 0.5  # ... the chin drops this fraction of it (the lower lip stretches the rest)
CHIN_BELOW_SEAM = 0.36  # face heights from the lip seam to the chin
NECK_BELOW_SEAM = REGION_BOTTOM - 0.02  # the warp fades out here (inside MouthRegion.bounds())
NOSE_ABOVE_SEAM = REGION_TOP - 0.01
LIP_SPREAD = 0.85  # the opening spans this many half-widths of the located mouth (inside its corners)
JAW_HALF_WIDTH = (0.30, 0.46)  # jaw moves fully within the first, not at all beyond the second (face widths)
WIDTH_WINDOW = (1.6, 0.14)  # the width change acts within this ellipse: mouth half-widths, face heights
DEEP_RGB = (30.0, 10.0, 12.0)  # the inside of an open mouth, deep in
EDGE_RGB = (96.0, 42.0, 44.0)  # ... and just inside the lips
TEETH_RGB = (200.0, 190.0, 178.0)  # upper teeth ...
TEETH_OPACITY = 0.75  # ... never quite covering the shade (a hint, not a painted bar)
INTERIOR_OPACITY = 0.92
FEATHER = 0.3  # the interior fades in over this share of the opening's height from each lip (soft edges)
OWN_INTERIOR_PAINT = 0.3  # where the template's own inside is shown, the shading is laid over it this much
TEETH_FROM = (0.45, 0.9)  # teeth show from this share of the full opening, fully at the second
TEETH_HEIGHT = 0.28  # ... as a band this share of the opening's height under the upper lip
TEETH_HALF_WIDTH = (0.35, 0.6)  # ... across the middle of the mouth (mouth half-widths: full, none)
MIN_DROP_PIXELS = 0.05  # below this (and with width ~1) a frame is left as it is
MIN_WIDTH_CHANGE = 0.004


class MouthWarper:
    """Applies per-frame opening/width to the mouths in a batch of frames, in place, on *device*.

    *pixels* as in pipeline.media.decode: "rgb" or "bgr" frames (B, H, W, 3), or "yuv420p" frames (B, H*W*3/2)
    with their size given to apply(); the three planes are warped with the same displacement field.
    *backend*: "numpy" (OpenCV, the CPU) or "torch" (any device); by default numpy on the CPU, torch elsewhere.
    """

    def __init__(self, device: str = "cpu", pixels: str = "rgb", backend: str | None = None) -> None:
        if pixels not in ("rgb", "bgr", "yuv420p"):
            raise ValueError(f"pixels must be rgb, bgr or yuv420p, not {pixels!r}")
        on_cpu = str(device).startswith("cpu")
        backend = backend or ("numpy" if on_cpu else "torch")
        if backend == "numpy" and not on_cpu:
            raise ValueError(f"the numpy warp runs on the CPU, not on {device!r}")
        self.pixels = pixels
        self.backend: _NumpyBackend | _TorchBackend = _NumpyBackend() if backend == "numpy" else _TorchBackend(device)
        convert = {"rgb": lambda rgb: rgb, "bgr": lambda rgb: rgb[::-1], "yuv420p": _yuv}[pixels]
        # (3 colours, 3 channels): deep, edge, teeth
        self.colours = self.backend.tensor([convert(rgb) for rgb in (DEEP_RGB, EDGE_RGB, TEETH_RGB)])

    @property
    def out_of_memory(self) -> type[BaseException] | tuple[()]:
        """What apply() raises when the device's memory is short for the batch (nothing on the CPU)."""
        return self.backend.out_of_memory

    def apply(self, frames: np.ndarray, mouths: Sequence[Lips | None], opening: Sequence[float] | np.ndarray,
              width: Sequence[float] | np.ndarray, size: tuple[int, int] | None = None) -> int:
        """Warp frames[k] (uint8, modified in place) where mouths[k] (its located lips) is not None.

        opening and width are per frame, from builtin.motion; *size* (width, height) is needed for
        yuv420p frames. Returns how many frames changed.
        """
        from pipeline.media.decode import yuv_planes

        opening_list = np.asarray(opening, dtype=np.float32).tolist()
        width_list = np.asarray(width, dtype=np.float32).tolist()
        if self.pixels == "yuv420p":
            if size is None:
                raise ValueError("yuv420p frames need their size")
            frame_width, height = size
            planes = yuv_planes(frames, frame_width, height)
        else:
            height, frame_width = frames.shape[1:3]
            planes = (frames,)
        chosen = [k for k, mouth in enumerate(mouths)
                  if mouth is not None and (abs(opening_list[k] * MAX_OPENING * 2 * mouth.half_width - mouth.gap)
                                            >= MIN_DROP_PIXELS or abs(width_list[k] - 1.0) >= MIN_WIDTH_CHANGE)]
        if not chosen:
            return 0
        regions = [mouths[k] for k in chosen]
        bounds = [region.region().bounds(frame_width, height) for region in regions]  # type: ignore[union-attr]
        # One crop size for the batch (even, so chroma lines up), centred on each region, inside the frame.
        crop_h = min(height - height % 2, _even_up(max(y1 - y0 for _, y0, _, y1 in bounds)))
        crop_w = min(frame_width - frame_width % 2, _even_up(max(x1 - x0 for x0, _, x1, _ in bounds)))
        origins = []
        for x0, y0, x1, y1 in bounds:
            ox = min(max(0, (x0 + x1 - crop_w) // 2), frame_width - crop_w) // 2 * 2
            oy = min(max(0, (y0 + y1 - crop_h) // 2), height - crop_h) // 2 * 2
            origins.append((ox, oy))
        params = self.backend.tensor(
            [[region.cx - ox, region.seam - oy, region.half_width, region.face_w, region.face_h,  # type: ignore[union-attr]
              opening_list[k], width_list[k], region.gap]  # type: ignore[union-attr]
             for k, region, (ox, oy) in zip(chosen, regions, origins, strict=True)])
        upload, download = self.backend.upload, self.backend.download
        if self.pixels == "yuv420p":
            luma, chroma_u, chroma_v = planes
            y_crops = np.stack([luma[k, oy:oy + crop_h, ox:ox + crop_w] for k, (ox, oy) in zip(chosen, origins,
                                                                                               strict=True)])
            uv_crops = np.stack([np.stack((chroma_u[k, oy // 2:(oy + crop_h) // 2, ox // 2:(ox + crop_w) // 2],
                                           chroma_v[k, oy // 2:(oy + crop_h) // 2, ox // 2:(ox + crop_w) // 2]))
                                 for k, (ox, oy) in zip(chosen, origins, strict=True)])
            warped_full, warped_half = self._warp(upload(y_crops[:, None]), upload(uv_crops), params,
                                                  self.colours[:, :1], self.colours[:, 1:])
            for k, (ox, oy), y_crop, uv_crop in zip(chosen, origins, download(warped_full), download(warped_half),
                                                    strict=True):
                luma[k, oy:oy + crop_h, ox:ox + crop_w] = y_crop[0]
                chroma_u[k, oy // 2:(oy + crop_h) // 2, ox // 2:(ox + crop_w) // 2] = uv_crop[0]
                chroma_v[k, oy // 2:(oy + crop_h) // 2, ox // 2:(ox + crop_w) // 2] = uv_crop[1]
        else:
            crops = np.stack([frames[k, oy:oy + crop_h, ox:ox + crop_w] for k, (ox, oy) in zip(chosen, origins,
                                                                                              strict=True)])
            warped_full, _ = self._warp(upload(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))), None, params,
                                        self.colours, None)
            for k, (ox, oy), crop in zip(chosen, origins, download(warped_full).transpose(0, 2, 3, 1), strict=True):
                frames[k, oy:oy + crop_h, ox:ox + crop_w] = crop
        return len(chosen)

    def _warp(self, full: Any, half: Any | None, params: Any, full_colours: Any,
              half_colours: Any | None) -> tuple[Any, Any | None]:
        """Warp crops at full resolution (N, C, h, w) and, optionally, at half resolution (N, C2, h/2, w/2).

        uint8 in, uint8 out, as the backend's arrays; *_colours are (3, C) interior colours (deep, edge,
        teeth) per plane. The displacement field is computed once, at the half-resolution sample centres
        (it is smooth), and interpolated to full resolution; a zero displacement stays exactly zero, so
        unmoved pixels stay exactly as they were.
        """
        backend, xp = self.backend, self.backend.xp
        _, _, crop_h, crop_w = full.shape
        cx, seam, half_width, face_w, face_h, opening, width, gap = (params[:, i].reshape(-1, 1, 1) for i in range(8))
        mouth = _Mouth(xp, cx, seam, half_width, opening * MAX_OPENING * 2 * half_width, gap, opening)
        # Half-resolution sample centres, in full-resolution pixel coordinates.
        centre_x = backend.arange(crop_w // 2).reshape(1, 1, -1) * 2.0 + 0.5
        centre_y = backend.arange(crop_h // 2).reshape(1, -1, 1) * 2.0 + 0.5
        shift_x, shift_y = _displacement(xp, centre_x, centre_y, mouth, face_w, face_h, width)
        shift_half = xp.stack((shift_x, shift_y), 1)  # (N, 2, h/2, w/2), full-resolution pixels
        xs = backend.arange(crop_w).reshape(1, 1, -1)
        ys = backend.arange(crop_h).reshape(1, -1, 1)
        # Where the remapping is the identity, bilinear sampling lands on (or within float error of) the
        # pixel itself, so rounding gives back exactly the input value.
        moved_full = backend.sample(full, shift_half, coarse=2)
        _paint(backend, moved_full, xs, ys, mouth, full_colours)
        moved_half = None
        if half is not None and half_colours is not None:
            moved_half = backend.sample(half, shift_half, pixel=2.0)
            _paint(backend, moved_half, centre_x, centre_y, mouth, half_colours)
        return moved_full, moved_half


class _NumpyBackend:
    """The CPU: numpy arrays, OpenCV's remap and resize (fixed-point bilinear: 1/32 pixel steps)."""

    xp = np
    out_of_memory: tuple[()] = ()  # except (): nothing to catch

    def tensor(self, values: Any) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    def arange(self, count: int) -> np.ndarray:
        return np.arange(count, dtype=np.float32)

    def upload(self, array: np.ndarray) -> np.ndarray:
        return array

    def download(self, array: np.ndarray) -> np.ndarray:
        return array

    def sample(self, image: np.ndarray, shift: np.ndarray, pixel: float = 1.0, coarse: int = 1) -> np.ndarray:
        """uint8 (N, C, h, w): each pixel of uint8 *image* taken from where *shift* (N, 2, h/coarse, w/coarse:
        x, y, in units of *pixel* image pixels; bilinearly interpolated to h x w with pixel centres aligned,
        as torch's align_corners=False) points; beyond the edge, the edge. Crop by crop: no batch-sized
        float arrays."""
        import cv2

        height, width = image.shape[2:]
        xs = np.arange(width, dtype=np.float32)
        ys = np.arange(height, dtype=np.float32).reshape(-1, 1)
        out = np.empty_like(image)
        for k, fields in enumerate(shift):
            if coarse != 1:
                fields = [cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR) for field in fields]
            map_x, map_y = cv2.convertMaps(xs + fields[0] / pixel, ys + fields[1] / pixel, cv2.CV_16SC2)
            for channel in range(image.shape[1]):
                cv2.remap(image[k, channel], map_x, map_y, cv2.INTER_LINEAR, dst=out[k, channel],
                          borderMode=cv2.BORDER_REPLICATE)
        return out

    def to_float(self, image: np.ndarray) -> np.ndarray:
        return image.astype(np.float32)

    def to_uint8(self, image: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)


class _TorchBackend:
    """Any torch device: grid_sample and interpolate (a GPU's job; also runs on the CPU, for the tests)."""

    def __init__(self, device: str) -> None:
        import torch

        self.xp = torch
        self.device = torch.device(device)
        self.out_of_memory = torch.cuda.OutOfMemoryError

    def tensor(self, values: Any) -> Any:
        return self.xp.tensor(values, dtype=self.xp.float32, device=self.device)

    def arange(self, count: int) -> Any:
        return self.xp.arange(count, dtype=self.xp.float32, device=self.device)

    def upload(self, array: np.ndarray) -> Any:
        return self.xp.from_numpy(array).to(self.device)

    def download(self, tensor: Any) -> np.ndarray:
        return tensor.cpu().numpy()

    def sample(self, image: Any, shift: Any, pixel: float = 1.0, coarse: int = 1) -> Any:
        """grid_sample of uint8 *image* (N, C, h, w), each pixel taken from where *shift* (N, 2, h/coarse,
        w/coarse: x, y, in units of *pixel* image pixels; bilinearly interpolated to h x w) points; uint8.

        The grid is built in place in grid_sample's (N, h, w, 2) layout: stacking x and y into it used to cost
        more than the sampling itself on the CPU.
        """
        torch = self.xp
        height, width = image.shape[2:]
        if coarse != 1:
            shift = torch.nn.functional.interpolate(shift, size=(height, width), mode="bilinear", align_corners=False)
        xs = torch.arange(width, dtype=torch.float32, device=image.device)
        ys = torch.arange(height, dtype=torch.float32, device=image.device)
        pixels = torch.stack((xs.view(1, -1).expand(height, width), ys.view(-1, 1).expand(height, width)), dim=-1)
        grid = torch.add(pixels, shift.permute(0, 2, 3, 1), alpha=1.0 / pixel)
        grid.mul_(torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=image.device)).sub_(1.0)
        return self.to_uint8(torch.nn.functional.grid_sample(image.float(), grid, mode="bilinear",
                                                             padding_mode="border", align_corners=True))

    def to_float(self, image: Any) -> Any:
        return image.float()

    def to_uint8(self, image: Any) -> Any:
        return image.round_().clamp_(0, 255).to(self.xp.uint8)


@dataclass(frozen=True)
class _Mouth:
    """Per crop (N, 1, 1) arrays of the backend *xp*: lip seam centre, half width, new opening and the
    template's own (pixels)."""

    xp: ModuleType
    cx: Any
    seam: Any
    half_width: Any
    drop: Any  # the new opening between the lips
    gap: Any  # the template's own opening in this frame
    opening: Any  # the new opening, 0..1

    def lens(self, xs: Any) -> Any:
        """How much of the opening each column gets: 1 in the middle, 0 at and beyond the corners."""
        return self.xp.clip(1.0 - ((xs - self.cx) / (LIP_SPREAD * self.half_width)) ** 2, 0.0, None)

    def edges(self, xs: Any) -> tuple[Any, Any]:
        """Output rows of the upper and lower lip's inner edges per column."""
        lens = self.lens(xs)
        return self.seam - UPPER_LIP_LIFT * self.drop * lens, self.seam + self.drop * lens


def _paint(backend: _NumpyBackend | _TorchBackend, image: Any, xs: Any, rows: Any, mouth: _Mouth,
           colours: Any) -> None:
    """Shade the open mouth's inside between the lips into uint8 *image* (N, C, h, w), in place.

    *xs* and *rows* are the image's column and row centres in full-resolution pixels (evenly spaced).
    Darker further in and towards the middle, fading in from each lip (soft edges), with upper teeth when
    wide open; laid only lightly over the template's own inside where it had one. Only rows the opening
    reaches are touched.
    """
    upper, lower = mouth.edges(xs)
    first = float(rows[0, 0, 0])
    pixel = float(rows[0, 1, 0]) - first if rows.shape[1] > 1 else 1.0
    top = max(0, math.ceil((float(upper.min()) - 2.0 - first) / pixel))
    bottom = min(rows.shape[1], math.floor((float(lower.max()) + 2.0 - first) / pixel) + 1)
    if top >= bottom:
        return
    xp = backend.xp
    y = rows[:, top:bottom]
    height = xp.clip(lower - upper, 1e-6, None)
    t = xp.clip((y - upper) / height, 0.0, 1.0)
    covered = xp.clip(xp.minimum(y + pixel / 2, lower) - xp.maximum(y - pixel / 2, upper), 0.0, pixel) / pixel
    soft = covered * xp.clip(xp.minimum(y - upper, lower - y) / xp.clip(FEATHER * height, 1.0, None) + 0.5, 0.0, 1.0)
    across = 1.0 - _smoothstep(xp, 0.5, 1.0, abs(xs - mouth.cx) / (LIP_SPREAD * mouth.half_width))
    depth = xp.sin(math.pi * t) * across
    deep, edge, teeth = (colours[i].reshape(1, -1, 1, 1) for i in range(3))
    shade = edge + (deep - edge) * depth[:, None]
    wide = _smoothstep(xp, *TEETH_FROM, mouth.opening) * (
        1.0 - _smoothstep(xp, *TEETH_HALF_WIDTH, abs(xs - mouth.cx) / mouth.half_width))
    tooth = TEETH_OPACITY * wide * (1.0 - _smoothstep(xp, 0.5 * TEETH_HEIGHT, TEETH_HEIGHT, t)) * (0.6 + 0.4 * depth)
    own = xp.clip(mouth.gap * mouth.lens(xs) - (y - upper) + 0.5, 0.0, 1.0)  # the template's inside shows here
    tooth = tooth * (1.0 - own)
    shade = shade + (teeth - shade) * tooth[:, None]
    opacity = INTERIOR_OPACITY * soft * (1.0 - own * (1.0 - OWN_INTERIOR_PAINT))
    band = backend.to_float(image[:, :, top:bottom])
    image[:, :, top:bottom] = backend.to_uint8(band + opacity[:, None] * (shade - band))


def _even_up(value: int) -> int:
    return value + value % 2


def _yuv(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """BT.601 limited-range Y, U, V of an RGB colour (for a dark colour the matrix hardly matters)."""
    r, g, b = rgb
    return (16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0,
            128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0,
            128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0)


def _displacement(xp: ModuleType, xs: Any, ys: Any, mouth: _Mouth, face_w: Any, face_h: Any,
                  width: Any) -> tuple[Any, Any]:
    """(source - output) x and y at output pixels (xs, ys): rest shape, new opening, and the width change."""
    # Vertical remapping, column by column: output row -> source row through the knots.
    upper_edge, lower_edge = mouth.edges(xs)
    seam = mouth.seam
    own_lower = seam + mouth.gap * mouth.lens(xs)  # the template's lower lip edge
    jaw = 1.0 - _smoothstep(xp, JAW_HALF_WIDTH[0], JAW_HALF_WIDTH[1], abs(xs - mouth.cx) / face_w)
    nose = seam - NOSE_ABOVE_SEAM * face_h
    chin = seam + CHIN_BELOW_SEAM * face_h
    neck = seam + NECK_BELOW_SEAM * face_h
    chin_out = chin + JAW_FOLLOW * (mouth.drop - mouth.gap) * jaw
    source_y = xp.broadcast_to(ys, (xs.shape[0] if xs.shape[0] > 1 else seam.shape[0], ys.shape[1], 1))
    source_y = _segment(xp, source_y, ys, nose, upper_edge, nose, seam)
    # The opening shows the template's own inside (its upper teeth, say) as it was, under the upper lip;
    # further down it is shaded (see _paint), over the top of the template's lower lip.
    inner = (ys > upper_edge) & (ys < lower_edge)
    source_y = xp.where(inner, xp.minimum(seam + (ys - upper_edge), own_lower), source_y)
    source_y = _segment(xp, source_y, ys, lower_edge, chin_out, own_lower, chin)
    source_y = _segment(xp, source_y, ys, chin_out, neck, chin, neck)

    # Horizontal: pull towards / push away from the mouth centre inside a soft ellipse.
    window_x = (xs - mouth.cx) / (WIDTH_WINDOW[0] * mouth.half_width)
    window_y = (ys - seam - mouth.drop / 2) / (WIDTH_WINDOW[1] * face_h)
    window = 1.0 - _smoothstep(xp, 0.5, 1.0, window_x ** 2 + window_y ** 2)
    shift_x = (mouth.cx + (xs - mouth.cx) / width - xs) * window
    return shift_x, source_y - ys


def _segment(xp: ModuleType, source_y: Any, ys: Any, out_start: Any, out_end: Any, src_start: Any,
             src_end: Any) -> Any:
    """Within output rows [out_start, out_end] map linearly onto source rows [src_start, src_end]."""
    span = xp.clip(out_end - out_start, 1e-6, None)
    mapped = src_start + (ys - out_start) * (src_end - src_start) / span
    inside = (ys >= out_start) & (ys <= out_end)
    return xp.where(inside, mapped, source_y)


def _smoothstep(xp: ModuleType, low: float, high: float, x: Any) -> Any:
    """0 below *low*, 1 above *high*, smooth in between."""
    t = xp.clip((x - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
