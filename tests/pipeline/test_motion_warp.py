"""The audio-to-mouth mapping and the mouth warp, each on its own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.builtin.motion import mouth_motion
from pipeline.engines.builtin.warp import MAX_OPENING, MouthWarper
from pipeline.face import FaceDetector
from pipeline.lips import Lips, LowerFace, locate
from pipeline.media import audio
from pipeline.media.decode import yuv_planes
from tests import media

FPS = 25.0


def test_mouth_opens_on_speech_and_shuts_in_pauses(tmp_path: Path) -> None:
    speech = media.speech(tmp_path / "gaps.wav", "Open. Wide. Mouth.", gap_ms=400)
    features = audio.frame_features(audio.load_audio(speech), FPS)
    track = mouth_motion(features)
    opening, width = track.opening, track.width
    assert len(track) == features.n_frames
    assert opening.min() >= 0.0 and opening.max() <= 1.0 and opening.max() > 0.8
    silent = features.loudness <= audio.LOUDNESS_FLOOR_DBFS + 1
    loud = features.loudness > np.percentile(features.loudness, 80)
    # Shut in pauses (after 0.24 s: it closes more slowly than it opens), open on the loudest frames.
    settled = np.array([silent[max(0, i - 6):i + 1].all() for i in range(len(silent))])
    assert settled.sum() > 10 and opening[settled].max() < 0.05
    assert opening[loud].mean() > 0.6
    assert width.min() >= 0.87 and width.max() <= 1.13
    # Deterministic: the same audio gives the same motion.
    again = mouth_motion(features)
    assert np.array_equal(again.opening, track.opening) and np.array_equal(again.width, track.width)
    # The gain scales the opening.
    assert float(mouth_motion(features, gain=0.5).opening.max()) <= 0.5 + 1e-6


def _astronaut_lips(photo: np.ndarray) -> Lips:
    face = FaceDetector().detect(photo)[0]
    lips = locate(LowerFace.from_rgb(photo, face), face)
    assert lips is not None
    return replace(lips, gap=0.0)  # closed lips: an opening of 0 leaves the frame as it is


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_warp_changes_only_the_mouth_region(backend: str) -> None:
    photo = media.astronaut()
    mouth = _astronaut_lips(photo)
    frames = np.stack([photo] * 4)
    warper = MouthWarper("cpu", backend=backend)
    changed = warper.apply(frames, [mouth, mouth, None, mouth], [0.0, 1.0, 1.0, 0.5], [1.0, 1.0, 1.0, 0.9])
    assert changed == 2  # opening 0 at width 1 is a no-op, and a frame without a face is left alone
    assert np.array_equal(frames[0], photo) and np.array_equal(frames[2], photo)
    x0, y0, x1, y1 = mouth.region().bounds(photo.shape[1], photo.shape[0])
    for index in (1, 3):
        outside = frames[index].copy()
        outside[y0:y1, x0:x1] = photo[y0:y1, x0:x1]
        assert np.array_equal(outside, photo)  # not one pixel outside the region
    # Fully open: a dark opening at the lip seam about as tall as the new opening (it fades in at the lips).
    column = frames[1, :, round(mouth.cx)].astype(float).mean(axis=1)
    seam = round(mouth.seam)
    dark_rows = np.flatnonzero(column[seam - 5:seam + 20] < 60)
    expected = MAX_OPENING * 2 * mouth.half_width
    assert expected * 0.4 <= len(dark_rows) <= expected * 1.3
    original = photo[:, round(mouth.cx)].astype(float).mean(axis=1)
    assert (original[seam - 5:seam + 20] < 60).sum() < 2


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_yuv_warp_moves_all_three_planes_inside_the_region_only(backend: str) -> None:
    import cv2

    photo = media.astronaut()
    mouth = _astronaut_lips(photo)
    # The photo as one yuv420p frame (I420: Y plane, then U, then V), as the decoder gives it.
    i420 = cv2.cvtColor(photo, cv2.COLOR_RGB2YUV_I420).reshape(1, -1)
    frames = np.repeat(i420, 2, axis=0)
    warper = MouthWarper("cpu", pixels="yuv420p", backend=backend)
    assert warper.apply(frames, [mouth, None], [1.0, 1.0], [0.9, 1.0], size=(512, 512)) == 1
    assert np.array_equal(frames[1], i420[0])
    before = yuv_planes(i420, 512, 512)
    after = yuv_planes(frames[:1], 512, 512)
    x0, y0, x1, y1 = mouth.region().bounds(512, 512)
    for plane, (old, new) in enumerate(zip(before, after, strict=True)):
        step = 1 if plane == 0 else 2
        changed = np.argwhere(old[0] != new[0])
        assert len(changed) > 50, plane
        rows, cols = changed[:, 0] * step, changed[:, 1] * step
        assert rows.min() >= y0 - 2 and rows.max() < y1 + 2 and cols.min() >= x0 - 2 and cols.max() < x1 + 2
    # The opening is dark in Y, just below the lip seam.
    seam, centre = round(mouth.seam), round(mouth.cx)
    assert after[0][0, seam + 2:seam + 6, centre - 3:centre + 3].mean() < 60
    assert before[0][0, seam + 2:seam + 6, centre - 3:centre + 3].mean() > 100


def test_the_cpu_warp_and_the_gpu_warp_agree() -> None:
    """The CPU warp (numpy and OpenCV) and the GPU's (torch's grid_sample, run here on the CPU) share the
    geometry and the shading; only the bilinear sampling differs (OpenCV steps in 1/32 pixel). Across
    openings, widths and a mouth open in the template, they differ by at most two levels (on the photo's
    sharpest edges), and by more than one in very few pixels."""
    import cv2

    photo = media.astronaut()
    closed = _astronaut_lips(photo)
    ajar = replace(closed, gap=0.08 * closed.half_width)
    i420 = cv2.cvtColor(photo, cv2.COLOR_RGB2YUV_I420).reshape(1, -1)
    mouths = [closed, closed, ajar, ajar, closed]
    opening, width = [0.2, 1.0, 0.0, 0.7, 0.5], [1.0, 0.9, 1.0, 1.1, 1.05]
    results = {}
    for backend in ("numpy", "torch"):
        for pixels, frames, size in (("rgb", np.stack([photo] * 5), None),
                                     ("yuv420p", np.repeat(i420, 5, axis=0), (512, 512))):
            frames = frames.copy()
            assert MouthWarper("cpu", pixels=pixels, backend=backend).apply(frames, mouths, opening, width,
                                                                           size=size) == 5
            results[backend, pixels] = frames.astype(int)
    for pixels, original in (("rgb", photo), ("yuv420p", i420[0])):
        cpu, gpu = results["numpy", pixels], results["torch", pixels]
        moved = (gpu != original[None]).sum()
        differ = np.abs(cpu - gpu)
        assert moved > 5000, pixels  # the warp did something worth comparing
        assert differ.max() <= 2 and (differ > 0).sum() <= moved * 0.15 and (differ > 1).sum() <= moved * 0.005, \
            (pixels, moved, differ.max(), (differ > 0).sum(), (differ > 1).sum())


def test_the_numpy_warp_is_for_the_cpu_only() -> None:
    with pytest.raises(ValueError, match="numpy warp runs on the CPU"):
        MouthWarper("cuda:0", backend="numpy")
