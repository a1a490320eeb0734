"""Image synthesis: open and shape the mouth of each frame by warping it, batched, on the device.

For every frame with a face, the region around the mouth (MouthRegion.bounds(): nose to upper neck,
cheek to cheek) is cut out, warped with torch.nn.functional.grid_sample, and put back. Pixels outside
that region are never touched, and inside it only pixels the warp moves change.

The warp is a vertical remapping, column by column, through five knots below one another:
nose (fixed), upper lip edge (lifted by a fifth of the jaw drop), lower lip edge (dropped by the jaw
drop), chin (dropped by the jaw drop) and upper neck (fixed). Lip movement follows a lens-shaped
profile across the mouth (nothing at the corners), the jaw a wider window that fades out before the
cheeks. Between the two lip edges the open mouth's interior is painted dark with soft edges. A width
factor pulls the lips towards (rounded vowels) or away from (wide vowels) the mouth's centre.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.face import REGION_BOTTOM, REGION_TOP, MouthRegion

MAX_JAW_DROP = 0.10  # jaw drop at opening 1, in face heights
UPPER_LIP_LIFT = 0.2  # the upper lip rises this fraction of the jaw drop
CHIN_BELOW_SEAM = 0.36  # face heights from the lip seam to the chin
NECK_BELOW_SEAM = REGION_BOTTOM - 0.02  # the warp fades out here (inside MouthRegion.bounds())
NOSE_ABOVE_SEAM = REGION_TOP - 0.01
LIP_SPREAD = 1.1  # the lips' opening profile spans this many mouth half-widths
JAW_HALF_WIDTH = (0.30, 0.46)  # jaw moves fully within the first, not at all beyond the second (face widths)
WIDTH_WINDOW = (1.6, 0.14)  # the width change acts within this ellipse: mouth half-widths, face heights
INTERIOR_RGB = (38.0, 14.0, 16.0)  # the inside of an open mouth
INTERIOR_OPACITY = 0.9
INTERIOR_EDGE_LIGHT = 0.4  # the interior is this much less opaque at the lip edges than in the middle
MIN_DROP_PIXELS = 0.05  # below this (and with width ~1) a frame is left as it is
MIN_WIDTH_CHANGE = 0.004


class MouthWarper:
    """Applies per-frame opening/width to the mouths in a batch of frames, in place, on *device*.

    *pixels* as in pipeline.media.decode: "rgb" or "bgr" frames (B, H, W, 3), or "yuv420p" frames (B, H*W*3/2)
    with their size given to apply(); the three planes are warped with the same displacement field.
    """

    def __init__(self, device: str | torch.device = "cpu", pixels: str = "rgb") -> None:
        if pixels not in ("rgb", "bgr", "yuv420p"):
            raise ValueError(f"pixels must be rgb, bgr or yuv420p, not {pixels!r}")
        self.device = torch.device(device)
        self.pixels = pixels
        colour = {"rgb": INTERIOR_RGB, "bgr": INTERIOR_RGB[::-1], "yuv420p": _yuv(INTERIOR_RGB)}[pixels]
        self.interior = torch.tensor(colour, device=self.device).view(1, 3, 1, 1)

    def apply(self, frames: np.ndarray, mouths: Sequence[MouthRegion | None], opening: torch.Tensor,
              width: torch.Tensor, size: tuple[int, int] | None = None) -> int:
        """Warp frames[k] (uint8, modified in place) where mouths[k] is not None.

        opening and width are (B,) tensors from builtin.motion; *size* (width, height) is needed for
        yuv420p frames. Returns how many frames changed.
        """
        from pipeline.media.decode import yuv_planes

        opening_list = opening.detach().float().cpu().tolist()
        width_list = width.detach().float().cpu().tolist()
        if self.pixels == "yuv420p":
            if size is None:
                raise ValueError("yuv420p frames need their size")
            frame_width, height = size
            planes = yuv_planes(frames, frame_width, height)
        else:
            height, frame_width = frames.shape[1:3]
            planes = (frames,)
        chosen = [k for k, mouth in enumerate(mouths)
                  if mouth is not None and (opening_list[k] * MAX_JAW_DROP * mouth.face_h >= MIN_DROP_PIXELS
                                            or abs(width_list[k] - 1.0) >= MIN_WIDTH_CHANGE)]
        if not chosen:
            return 0
        regions = [mouths[k] for k in chosen]
        bounds = [region.bounds(frame_width, height) for region in regions]  # type: ignore[union-attr]
        # One crop size for the batch (even, so chroma lines up), centred on each region, inside the frame.
        crop_h = min(height - height % 2, _even_up(max(y1 - y0 for _, y0, _, y1 in bounds)))
        crop_w = min(frame_width - frame_width % 2, _even_up(max(x1 - x0 for x0, _, x1, _ in bounds)))
        origins = []
        for x0, y0, x1, y1 in bounds:
            ox = min(max(0, (x0 + x1 - crop_w) // 2), frame_width - crop_w) // 2 * 2
            oy = min(max(0, (y0 + y1 - crop_h) // 2), height - crop_h) // 2 * 2
            origins.append((ox, oy))
        params = torch.tensor(
            [[region.cx - ox, region.cy - oy, region.half_width, region.face_w, region.face_h,  # type: ignore[union-attr]
              opening_list[k], width_list[k]]
             for k, region, (ox, oy) in zip(chosen, regions, origins, strict=True)],
            dtype=torch.float32, device=self.device,
        )
        if self.pixels == "yuv420p":
            luma, chroma_u, chroma_v = planes
            y_crops = np.stack([luma[k, oy:oy + crop_h, ox:ox + crop_w] for k, (ox, oy) in zip(chosen, origins,
                                                                                               strict=True)])
            uv_crops = np.stack([np.stack((chroma_u[k, oy // 2:(oy + crop_h) // 2, ox // 2:(ox + crop_w) // 2],
                                           chroma_v[k, oy // 2:(oy + crop_h) // 2, ox // 2:(ox + crop_w) // 2]))
                                 for k, (ox, oy) in zip(chosen, origins, strict=True)])
            full = torch.from_numpy(y_crops).to(self.device).unsqueeze(1)
            half = torch.from_numpy(uv_crops).to(self.device)
            warped_full, warped_half = self._warp(full, half, params, self.interior[:, :1], self.interior[:, 1:])
            for k, (ox, oy), y_crop, uv_crop in zip(chosen, origins, warped_full.cpu().numpy(),
                                                    warped_half.cpu().numpy(), strict=True):
                luma[k, oy:oy + crop_h, ox:ox + crop_w] = y_crop[0]
                chroma_u[k, oy // 2:(oy + crop_h) // 2, ox // 2:(ox + crop_w) // 2] = uv_crop[0]
                chroma_v[k, oy // 2:(oy + crop_h) // 2, ox // 2:(ox + crop_w) // 2] = uv_crop[1]
        else:
            crops = np.stack([frames[k, oy:oy + crop_h, ox:ox + crop_w] for k, (ox, oy) in zip(chosen, origins,
                                                                                              strict=True)])
            full = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2)
            warped_full, _ = self._warp(full, None, params, self.interior, None)
            for k, (ox, oy), crop in zip(chosen, origins, warped_full.permute(0, 2, 3, 1).cpu().numpy(), strict=True):
                frames[k, oy:oy + crop_h, ox:ox + crop_w] = crop
        return len(chosen)

    def _warp(self, full: torch.Tensor, half: torch.Tensor | None, params: torch.Tensor, full_interior: torch.Tensor,
              half_interior: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Warp crops at full resolution (N, C, h, w) and, optionally, at half resolution (N, C2, h/2, w/2).

        uint8 in, uint8 out. The displacement field is computed once, at the half-resolution sample
        centres (it is smooth), and interpolated to full resolution; a zero displacement stays exactly
        zero, so unmoved pixels stay exactly as they were.
        """
        count, _, crop_h, crop_w = full.shape
        cx, seam, half_width, face_w, face_h, opening, width = (params[:, i].view(-1, 1, 1) for i in range(7))
        drop = opening * MAX_JAW_DROP * face_h
        # Half-resolution sample centres, in full-resolution pixel coordinates.
        centre_x = torch.arange(crop_w // 2, dtype=torch.float32, device=self.device).view(1, 1, -1) * 2.0 + 0.5
        centre_y = torch.arange(crop_h // 2, dtype=torch.float32, device=self.device).view(1, -1, 1) * 2.0 + 0.5
        shift_x, shift_y = _displacement(centre_x, centre_y, cx, seam, half_width, face_w, face_h, drop, width)
        shift_half = torch.stack((shift_x, shift_y), dim=1)  # (N, 2, h/2, w/2), full-resolution pixels
        shift_full = torch.nn.functional.interpolate(shift_half, size=(crop_h, crop_w), mode="bilinear",
                                                     align_corners=False)
        xs = torch.arange(crop_w, dtype=torch.float32, device=self.device).view(1, 1, -1)
        ys = torch.arange(crop_h, dtype=torch.float32, device=self.device).view(1, -1, 1)
        upper_edge, lower_edge = _lip_edges(xs, cx, seam, half_width, drop)
        moved_full = _sample(full, xs, ys, shift_full[:, 0], shift_full[:, 1])
        _paint(moved_full, ys, upper_edge, lower_edge, full_interior, pixel=1.0)
        moved_half = None
        if half is not None and half_interior is not None:
            half_xs = torch.arange(crop_w // 2, dtype=torch.float32, device=self.device).view(1, 1, -1)
            half_ys = torch.arange(crop_h // 2, dtype=torch.float32, device=self.device).view(1, -1, 1)
            moved_half = _sample(half, half_xs, half_ys, shift_x / 2.0, shift_y / 2.0)
            half_upper, half_lower = _lip_edges(centre_x, cx, seam, half_width, drop)
            _paint(moved_half, centre_y, half_upper, half_lower, half_interior, pixel=2.0)
            moved_half = moved_half.round_().clamp_(0, 255).to(torch.uint8)
        # Where the remapping is the identity, bilinear sampling lands within float error of the pixel
        # itself (weights 1 - 1e-5 and 1e-5), so rounding gives back exactly the input value.
        return moved_full.round_().clamp_(0, 255).to(torch.uint8), moved_half


def _sample(image: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, shift_x: torch.Tensor,
            shift_y: torch.Tensor) -> torch.Tensor:
    """grid_sample of uint8 *image* (N, C, h, w) at (xs + shift_x, ys + shift_y), in float."""
    height, width = image.shape[2:]
    grid = torch.stack(((xs + shift_x) * (2.0 / max(width - 1, 1)) - 1.0,
                        (ys + shift_y) * (2.0 / max(height - 1, 1)) - 1.0), dim=-1)
    return torch.nn.functional.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border",
                                           align_corners=True)


def _paint(image: torch.Tensor, rows: torch.Tensor, upper_edge: torch.Tensor, lower_edge: torch.Tensor,
           colour: torch.Tensor, pixel: float) -> None:
    """Paint the open mouth's interior between the lip edges into *image* (N, C, h, w), in place.

    *rows* are the image rows' centres and *pixel* their height, in full-resolution pixels; a row on an
    edge is painted by how much of it the opening covers. Only the rows the opening can reach are touched.
    """
    reach = (rows.view(-1) >= upper_edge.min() - pixel) & (rows.view(-1) <= lower_edge.max() + pixel)
    inside = torch.nonzero(reach).view(-1)
    if inside.numel() == 0:
        return
    top, bottom = int(inside[0]), int(inside[-1]) + 1
    band_rows = rows[:, top:bottom]
    covered = torch.clamp(torch.minimum(band_rows + pixel / 2, lower_edge) - torch.maximum(band_rows - pixel / 2,
                                                                                           upper_edge), 0.0, pixel)
    opening_height = torch.clamp(lower_edge - upper_edge, min=1e-6)
    depth = torch.sin(torch.pi * torch.clamp((band_rows - upper_edge) / opening_height, 0.0, 1.0))
    gap = (covered / pixel * INTERIOR_OPACITY * (1.0 - INTERIOR_EDGE_LIGHT * (1.0 - depth))).unsqueeze(1)
    band = image[:, :, top:bottom]
    band += gap * (colour - band)


def _even_up(value: int) -> int:
    return value + value % 2


def _yuv(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """BT.601 limited-range Y, U, V of an RGB colour (for a dark colour the matrix hardly matters)."""
    r, g, b = rgb
    return (16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0,
            128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0,
            128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0)


def _lip_edges(xs: torch.Tensor, cx: torch.Tensor, seam: torch.Tensor, half_width: torch.Tensor,
               drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output rows of the upper and lower lip edges per column: a lens-shaped opening around the seam."""
    lip = torch.clamp(1.0 - ((xs - cx) / (LIP_SPREAD * half_width)) ** 2, min=0.0)
    return seam - UPPER_LIP_LIFT * drop * lip, seam + drop * lip


def _displacement(xs: torch.Tensor, ys: torch.Tensor, cx: torch.Tensor, seam: torch.Tensor, half_width: torch.Tensor,
                  face_w: torch.Tensor, face_h: torch.Tensor, drop: torch.Tensor,
                  width: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(source - output) x and y at output pixels (xs, ys): jaw/lip remapping and the width change."""
    # Vertical remapping, column by column: output row -> source row through five knots.
    upper_edge, lower_edge = _lip_edges(xs, cx, seam, half_width, drop)
    jaw = 1.0 - _smoothstep(JAW_HALF_WIDTH[0], JAW_HALF_WIDTH[1], (xs - cx).abs() / face_w)
    nose = seam - NOSE_ABOVE_SEAM * face_h
    chin = seam + CHIN_BELOW_SEAM * face_h
    neck = seam + NECK_BELOW_SEAM * face_h
    chin_out = chin + drop * jaw
    source_y = ys.expand(xs.shape[0] if xs.shape[0] > 1 else cx.shape[0], ys.shape[1], 1)
    source_y = _segment(source_y, ys, nose, upper_edge, nose, seam)
    source_y = torch.where((ys > upper_edge) & (ys < lower_edge), seam.expand_as(source_y), source_y)
    source_y = _segment(source_y, ys, lower_edge, chin_out, seam, chin)
    source_y = _segment(source_y, ys, chin_out, neck, chin, neck)

    # Horizontal: pull towards / push away from the mouth centre inside a soft ellipse.
    window_x = (xs - cx) / (WIDTH_WINDOW[0] * half_width)
    window_y = (ys - seam - drop / 2) / (WIDTH_WINDOW[1] * face_h)
    window = 1.0 - _smoothstep(0.5, 1.0, window_x ** 2 + window_y ** 2)
    shift_x = (cx + (xs - cx) / width - xs) * window
    return shift_x, source_y - ys


def _segment(source_y: torch.Tensor, ys: torch.Tensor, out_start: torch.Tensor, out_end: torch.Tensor,
             src_start: torch.Tensor, src_end: torch.Tensor) -> torch.Tensor:
    """Within output rows [out_start, out_end] map linearly onto source rows [src_start, src_end]."""
    span = torch.clamp(out_end - out_start, min=1e-6)
    mapped = src_start + (ys - out_start) * (src_end - src_start) / span
    inside = (ys >= out_start) & (ys <= out_end)
    source_y, mapped, inside = torch.broadcast_tensors(source_y, mapped, inside)
    return torch.where(inside, mapped, source_y)


def _smoothstep(low: float, high: float, x: torch.Tensor) -> torch.Tensor:
    t = torch.clamp((x - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
