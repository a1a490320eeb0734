"""Image synthesis: open and shape the mouth of each frame by warping it, batched, on the device.

For every frame with a face, the region around the mouth (MouthRegion.bounds(): nose to upper neck,
cheek to cheek) is cut out, warped with torch.nn.functional.grid_sample, and put back. Pixels outside
that region are never touched, and inside it only pixels the warp moves change.

The warp is a vertical remapping, column by column, through five knots below one another:
nose (fixed), upper lip edge (lifted by a fifth of the jaw drop), lower lip edge (dropped by the jaw
drop), chin (dropped by the jaw drop) and upper neck (fixed). Lip movement follows an elliptical
(lens-shaped) profile across the mouth (nothing at the corners), the jaw a wider window that fades out before the
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
    """Applies per-frame opening/width to the mouths in a batch of frames, in place, on *device*."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.interior = torch.tensor(INTERIOR_RGB, device=self.device).view(1, 3, 1, 1)

    def apply(self, frames: np.ndarray, mouths: Sequence[MouthRegion | None], opening: torch.Tensor,
              width: torch.Tensor) -> int:
        """Warp frames[k] (uint8 RGB, (B, H, W, 3), modified in place) where mouths[k] is not None.

        opening and width are (B,) tensors from pipeline.motion. Returns how many frames changed.
        """
        opening_list = opening.detach().float().cpu().tolist()
        width_list = width.detach().float().cpu().tolist()
        height, frame_width = frames.shape[1:3]
        chosen = [k for k, mouth in enumerate(mouths)
                  if mouth is not None and (opening_list[k] * MAX_JAW_DROP * mouth.face_h >= MIN_DROP_PIXELS
                                            or abs(width_list[k] - 1.0) >= MIN_WIDTH_CHANGE)]
        if not chosen:
            return 0
        regions = [mouths[k] for k in chosen]
        bounds = [region.bounds(frame_width, height) for region in regions]  # type: ignore[union-attr]
        crop_h = min(height, max(y1 - y0 for _, y0, _, y1 in bounds))
        crop_w = min(frame_width, max(x1 - x0 for x0, _, x1, _ in bounds))
        origins = []
        for x0, y0, x1, y1 in bounds:  # the same crop size for all, centred on each region, inside the frame
            ox = min(max(0, (x0 + x1 - crop_w) // 2), frame_width - crop_w)
            oy = min(max(0, (y0 + y1 - crop_h) // 2), height - crop_h)
            origins.append((ox, oy))
        crops = np.stack([frames[k, oy:oy + crop_h, ox:ox + crop_w] for k, (ox, oy) in zip(chosen, origins,
                                                                                          strict=True)])
        params = torch.tensor(
            [[region.cx - ox, region.cy - oy, region.half_width, region.face_w, region.face_h,  # type: ignore[union-attr]
              opening_list[k], width_list[k]]
             for k, region, (ox, oy) in zip(chosen, regions, origins, strict=True)],
            dtype=torch.float32, device=self.device,
        )
        warped = self._warp(torch.from_numpy(crops).to(self.device), params)
        for k, (ox, oy), crop in zip(chosen, origins, warped.cpu().numpy(), strict=True):
            frames[k, oy:oy + crop_h, ox:ox + crop_w] = crop
        return len(chosen)

    def _warp(self, crops: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """crops (N, h, w, 3) uint8 on the device; params (N, 7); returns warped (N, h, w, 3) uint8."""
        count, crop_h, crop_w = crops.shape[:3]
        image = crops.permute(0, 3, 1, 2).float()
        geometry = [params[:, i].view(-1, 1, 1) for i in range(7)]
        cx, seam, half_width, face_w, face_h, opening, width = geometry
        drop = opening * MAX_JAW_DROP * face_h

        # The displacement field is smooth: compute it on a grid of every other pixel and interpolate
        # (a zero displacement stays exactly zero, so unmoved pixels stay exactly where they are).
        coarse_h, coarse_w = max(2, (crop_h + 1) // 2 + 1), max(2, (crop_w + 1) // 2 + 1)
        coarse_x = torch.linspace(0, crop_w - 1, coarse_w, device=self.device).view(1, 1, -1)
        coarse_y = torch.linspace(0, crop_h - 1, coarse_h, device=self.device).view(1, -1, 1)
        shift_x, shift_y = _displacement(coarse_x, coarse_y, cx, seam, half_width, face_w, face_h, drop, width)
        shift = torch.nn.functional.interpolate(torch.stack((shift_x, shift_y), dim=1), size=(crop_h, crop_w),
                                                mode="bilinear", align_corners=True)
        xs = torch.arange(crop_w, dtype=torch.float32, device=self.device).view(1, 1, -1)
        ys = torch.arange(crop_h, dtype=torch.float32, device=self.device).view(1, -1, 1)
        grid = torch.stack(((xs + shift[:, 0]) * (2.0 / max(crop_w - 1, 1)) - 1.0,
                            (ys + shift[:, 1]) * (2.0 / max(crop_h - 1, 1)) - 1.0), dim=-1)
        moved = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="border",
                                                align_corners=True)

        # The open mouth's interior, between the moved lip edges: computed only in the rows it can reach;
        # a pixel on an edge is painted by how much of it the opening covers.
        upper_edge, lower_edge = _lip_edges(xs, cx, seam, half_width, drop)
        top = max(0, int(torch.floor(upper_edge.min()).item()) - 1)
        bottom = min(crop_h, int(torch.ceil(lower_edge.max()).item()) + 2)
        if bottom > top:
            rows = ys[:, top:bottom]
            covered = torch.clamp(torch.minimum(rows + 0.5, lower_edge) - torch.maximum(rows - 0.5, upper_edge), 0, 1)
            opening_height = torch.clamp(lower_edge - upper_edge, min=1e-6)
            depth = torch.sin(torch.pi * torch.clamp((rows - upper_edge) / opening_height, 0.0, 1.0))
            gap = (covered * INTERIOR_OPACITY * (1.0 - INTERIOR_EDGE_LIGHT * (1.0 - depth))).unsqueeze(1)
            band = moved[:, :, top:bottom]
            band += gap * (self.interior - band)
        # Where the remapping is the identity, bilinear sampling lands within float error of the pixel
        # itself (weights 1 - 1e-5 and 1e-5), so rounding gives back exactly the input value.
        return moved.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


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
