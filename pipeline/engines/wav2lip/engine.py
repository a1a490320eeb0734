"""The wav2lip engine: a public Wav2Lip checkpoint run over a video in streamed batches.

One job reads top to bottom:

1. audio   decode to 16 kHz (pipeline.media.audio), Wav2Lip's mel spectrogram (wav2lip.audio);
           the output has one frame per 1/fps of audio.
2. faces   a first pass over the source frames with the builtin face tracker (pipeline.face) and the lip
           locator (pipeline.lips): one crop per source frame, as wide as the Haar box (brows to lower
           lip), as high as Wav2Lip's crop (down to the chin) and placed so that the located lips lie in
           its lower half, where the model repaints (the Haar geometry alone where no lips are found);
           padded by pipeline.wav2lip.pads and averaged over 5 frames.
3. render  the frames the audio needs (pipeline.media.pingpong.frames_for_audio: cut, or back and forth), each
           face cropped to 96x96, its lower half masked beside the unmasked crop, with its frame's 16
           mel steps; batched through the generator (fp16 on CUDA, fp32 on CPU); the generated face
           blended back under a feathered mask that is zero at the crop's edge, so no seam shows.
4. encode  H.264 + the job's audio (pipeline.media.encode.VideoWriter), overlapped with the work.

Frames without a face pass through untouched. Memory holds a few batches, never the whole video.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines.base import Engine, JobSpec, ProgressFn, RenderResult, no_progress
from pipeline.errors import EngineError, EngineUnavailable

FACE_SIZE = 96
SMOOTH_FRAMES = 5  # boxes are averaged over this many frames (Wav2Lip's inference does the same)
# The Haar box of pipeline.face spans brows to lower lip; Wav2Lip was trained on S3FD boxes, which reach
# the chin (about 1.18 box heights below the Haar box's top, by pipeline.face's geometry). This is the
# crop's height (before pads), and its place too where no lips are found.
CHIN_Y = 1.18
# Where lips are found, the crop is moved so the upper lip's top edge is this far down it (before pads):
# the model repaints only the lower half, and its training crops (forehead to chin) show the mouth at
# about 0.65-0.80 of their height. With the default 10-pixel chin pad the top lands at 0.62-0.67 on
# tests/fixtures/people; from the Haar geometry alone it sat at 0.51-0.66 (a bearded mouth at the mask's edge).
LIPS_TOP = 0.66
# ... and reaches at least this many lip heights below the lower lip (the chin, under a wide-open mouth).
BELOW_LIPS = 0.8
# The lips move the crop at most this share of its height from the Haar geometry (a wrong find cannot drag it).
MAX_SHIFT = 0.15
# Blend mask, in fractions of the crop: generated pixels are used from MASK_TOP down (the model only
# repaints the lower half), fading in over FEATHER of the crop's shorter side from every edge.
MASK_TOP = 0.42
FEATHER = 0.12
# Progress: where each stage ends, as a fraction of the whole job.
AUDIO_DONE, FACES_DONE = 0.03, 0.20


class Wav2LipEngine(Engine):
    name = "wav2lip"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        options = dict(settings.get("wav2lip") or {})
        self.checkpoint = options.get("checkpoint")
        self.pads = options.get("pads", [0, 10, 0, 0])
        self.batch_size = options.get("batch_size", 64)
        self.batch_frames = int(settings.get("batch_frames", 32))
        self.crf = int(settings.get("crf", 20))
        self.preset = str(settings.get("preset", "veryfast"))
        self.detect_every = int((settings.get("builtin") or {}).get("detect_every", 5))
        self._cpu_model: Any = None  # loaded by check(), moved to a device by _model()
        self._models: dict[str, Any] = {}

    # -- set-up ---------------------------------------------------------------------------------

    def check(self) -> None:
        """The settings make sense and the checkpoint loads (file name and what is wrong otherwise)."""
        from pipeline.engines.wav2lip.model import load_checkpoint

        pads = self.pads
        if not (isinstance(pads, Sequence) and len(pads) == 4 and all(isinstance(p, int) for p in pads)):
            raise EngineUnavailable(f"pipeline.wav2lip.pads must be four whole numbers of pixels "
                                    f"[top, bottom, left, right], not {pads!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise EngineUnavailable(f"pipeline.wav2lip.batch_size must be a whole number of at least 1, "
                                    f"not {self.batch_size!r}")
        if not self.checkpoint:
            raise EngineUnavailable("pipeline.wav2lip.checkpoint is not set: download wav2lip_gan.pth (or "
                                    "wav2lip.pth) from the Wav2Lip project's release and set the setting to "
                                    "its path")
        if self._cpu_model is None and not self._models:
            self._cpu_model = load_checkpoint(self.checkpoint)

    def _model(self, device: str) -> Any:
        model = self._models.get(device)
        if model is None:
            if self._cpu_model is None:
                self.check()
                if self._cpu_model is None:  # loaded for another device before: load again
                    from pipeline.engines.wav2lip.model import load_checkpoint

                    self._cpu_model = load_checkpoint(str(self.checkpoint))
            model = self._cpu_model
            if device != "cpu":
                model = model.to(device).half()
                self._cpu_model = None
            self._models[device] = model
        return model

    def close(self) -> None:
        self._models.clear()
        self._cpu_model = None

    # -- one job --------------------------------------------------------------------------------

    def render(self, spec: JobSpec, progress: ProgressFn = no_progress) -> RenderResult:
        from pipeline.engines.wav2lip.audio import melspectrogram
        from pipeline.media.audio import frame_count, load_audio
        from pipeline.media.decode import open_video
        from pipeline.media.encode import VideoWriter
        from pipeline.media.pingpong import frames_for_audio
        from pipeline.media.probe import Limits
        from pipeline.media.threads import prefetch

        timings: dict[str, float] = {}
        mark = time.monotonic()
        model = self._model(spec.device)
        limits = Limits.from_settings(self.settings)
        info = open_video(spec.video, max_pixels=limits.max_pixels)
        fps = float(info.fps)
        audio = load_audio(spec.audio, max_seconds=limits.max_seconds)
        mel = melspectrogram(audio.samples)
        n_frames = frame_count(audio.duration, fps)
        timings["audio"] = time.monotonic() - mark
        progress("audio", AUDIO_DONE)

        mark = time.monotonic()
        boxes, lip_frames = self._face_boxes(info, n_frames, progress)
        timings["faces"] = time.monotonic() - mark

        mark = time.monotonic()
        scratch_holder = None
        if spec.workdir is None:
            scratch_holder = tempfile.TemporaryDirectory(prefix="lipsyncd-w2l-")
            scratch = Path(scratch_holder.name)
        else:
            scratch = Path(spec.workdir)
        faces_rendered = 0
        batch_size = int(self.batch_size)
        try:
            with VideoWriter(spec.output, info, spec.audio, crf=self.crf, preset=self.preset) as writer:
                batches = frames_for_audio(info, n_frames, self.batch_frames, scratch)
                for batch in prefetch(batches, depth=2):
                    faces_rendered, batch_size = self._render_batch(
                        model, spec.device, batch, boxes, mel, fps, batch_size, faces_rendered)
                    writer.write(batch.frames)
                    done = (batch.first + len(batch)) / n_frames
                    progress("render", FACES_DONE + (1 - FACES_DONE) * 0.99 * done)
        finally:
            if scratch_holder is not None:
                scratch_holder.cleanup()
        timings["render"] = time.monotonic() - mark
        progress("encode", 1.0)
        return RenderResult(timings=timings, frames=n_frames, fps=fps,
                            details={"faces_rendered": faces_rendered, "lip_frames": lip_frames,
                                     "checkpoint": Path(str(self.checkpoint)).name})

    def _face_boxes(self, info: Any, n_frames: int, progress: ProgressFn) -> tuple[np.ndarray, int]:
        """(n_source, 4) float crops x1, y1, x2, y2 per source frame the job shows (NaN rows: no face), and
        how many of those frames had their lips located."""
        from pipeline.face import FaceTracker
        from pipeline.lips import LipTracker, LowerFace
        from pipeline.media.decode import read_frames
        from pipeline.media.threads import prefetch

        face_tracker = FaceTracker(detect_every=self.detect_every)
        lip_tracker = LipTracker(every=self.detect_every)
        faces: list[Any] = []
        lips: list[Any] = []
        expected = max(1, min(n_frames, info.estimated_frames))
        for frames in prefetch(read_frames(info, self.batch_frames, limit=n_frames)):
            found = face_tracker.update(frames)
            pictures = [None if face is None else LowerFace.from_rgb(frame, face)
                        for frame, face in zip(frames, found, strict=True)]
            faces.extend(found)
            lips.extend(lip_tracker.update(pictures, found))
            progress("faces", AUDIO_DONE + (FACES_DONE - AUDIO_DONE) * min(1.0, len(faces) / expected))
        if not any(face is not None for face in faces):
            raise EngineError(f"no face was found in the video {info.path.name!r}: Wav2Lip needs a person "
                              "facing the camera; drop a video where the face is clearly visible")
        lip_frames = sum(mouth is not None for mouth in lips)
        return crop_boxes(faces, lips, self.pads, info.width, info.height), lip_frames

    def _render_batch(self, model: Any, device: str, batch: Any, boxes: np.ndarray, mel: np.ndarray,
                      fps: float, batch_size: int, rendered: int) -> tuple[int, int]:
        """Repaint the mouths of one FrameBatch in place; returns (faces rendered so far, batch size now)."""
        from pipeline.engines.wav2lip.audio import mel_window

        frames = batch.frames
        height, width = frames.shape[1:3]
        jobs = []
        for k, source in enumerate(batch.sources):
            row = boxes[int(source)]
            if not np.all(np.isfinite(row)):
                continue
            x1, y1, x2, y2 = (int(round(v)) for v in row)
            x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
            if x2 - x1 < 8 or y2 - y1 < 8:
                continue
            jobs.append((k, (x1, y1, x2, y2)))
        start = 0
        while start < len(jobs):
            chunk = jobs[start:start + batch_size]
            crops = [frames[k, y1:y2, x1:x2] for k, (x1, y1, x2, y2) in chunk]
            windows = [mel_window(mel, batch.first + k, fps) for k, _ in chunk]
            try:
                generated = generate(model, device, crops, windows)
            except RuntimeError as exc:
                if not _out_of_memory(exc) or batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                _free_cache(device)
                continue
            for (k, (x1, y1, x2, y2)), face in zip(chunk, generated, strict=True):
                frames[k, y1:y2, x1:x2] = blend(frames[k, y1:y2, x1:x2], face)
            rendered += len(chunk)
            start += len(chunk)
        return rendered, batch_size


# -- the steps, as functions of arrays (tested on their own) -----------------------------------------

def crop_boxes(faces: Sequence[Any], lips: Sequence[Any], pads: Sequence[int], width: int,
               height: int) -> np.ndarray:
    """(n, 4) crops x1, y1, x2, y2 for frames' FaceBoxes and Lips (None: none), smoothed over SMOOTH_FRAMES
    within runs of frames with a face; NaN rows where there is no face."""
    nan = (np.nan,) * 4
    rows = [nan if face is None else wav2lip_box(face, pads, width, height, mouth)
            for face, mouth in zip(faces, lips, strict=True)]
    return smooth_boxes(np.asarray(rows, dtype=np.float64).reshape(-1, 4), SMOOTH_FRAMES)


def wav2lip_box(box: Any, pads: Sequence[int], width: int, height: int,
                lips: Any = None) -> tuple[float, float, float, float]:
    """A pipeline.face.FaceBox as Wav2Lip's crop (x1, y1, x2, y2): as wide as the box, CHIN_Y box heights
    high, down to the chin, plus pads, clipped. With the frame's pipeline.lips.Lips, placed so the lips lie
    in the lower half the model repaints (LIPS_TOP, BELOW_LIPS); without, from the Haar box's top."""
    top, bottom, left, right = pads
    crop_h = CHIN_Y * box.h
    upper = box.y
    lower = box.y + crop_h
    if lips is not None:
        shift = min(MAX_SHIFT * crop_h, max(-MAX_SHIFT * crop_h, lips.top - LIPS_TOP * crop_h - box.y))
        upper = box.y + shift
        lower = max(upper + crop_h, lips.bottom + BELOW_LIPS * lips.height)
    x1 = max(0.0, box.x - left)
    y1 = max(0.0, upper - top)
    x2 = min(float(width), box.x + box.w + right)
    y2 = min(float(height), lower + bottom)
    return x1, y1, x2, y2


def smooth_boxes(boxes: np.ndarray, window: int = SMOOTH_FRAMES) -> np.ndarray:
    """Average each box with its neighbours (window frames, centred) within runs of frames that have a
    face, so jitter is smoothed but a box is never pulled towards a frame without a face."""
    out = boxes.copy()
    valid = np.all(np.isfinite(boxes), axis=1)
    half = window // 2
    n = len(boxes)
    start = 0
    while start < n:
        if not valid[start]:
            start += 1
            continue
        stop = start
        while stop < n and valid[stop]:
            stop += 1
        run = boxes[start:stop]
        sums = np.concatenate([np.zeros((1, 4)), np.cumsum(run, axis=0)])
        for i in range(len(run)):
            lo, hi = max(0, i - half), min(len(run), i + half + 1)
            out[start + i] = (sums[hi] - sums[lo]) / (hi - lo)
        start = stop
    return out


def model_input(crops: Sequence[np.ndarray], windows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(faces (B, 6, 96, 96) float32 0..1 BGR: lower half masked, then the unmasked crop; mels (B, 1, 80, 16))."""
    import cv2

    faces = np.empty((len(crops), FACE_SIZE, FACE_SIZE, 6), dtype=np.float32)
    for i, crop in enumerate(crops):
        face = cv2.resize(np.ascontiguousarray(crop[..., ::-1]), (FACE_SIZE, FACE_SIZE))  # RGB -> BGR
        faces[i, :, :, 3:] = face
        faces[i, :, :, :3] = face
        faces[i, FACE_SIZE // 2:, :, :3] = 0
    faces /= 255.0
    mels = np.stack(windows).astype(np.float32)[:, None]
    return np.ascontiguousarray(faces.transpose(0, 3, 1, 2)), mels


def generate(model: Any, device: str, crops: Sequence[np.ndarray], windows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Generated faces, each resized back to its crop's size, RGB uint8."""
    import cv2
    import torch

    faces, mels = model_input(crops, windows)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    with torch.inference_mode():
        out = model(torch.from_numpy(mels).to(device, dtype), torch.from_numpy(faces).to(device, dtype))
        out = (out.float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    results = []
    for crop, face in zip(crops, out, strict=True):
        h, w = crop.shape[:2]
        results.append(cv2.resize(np.ascontiguousarray(face[..., ::-1]), (w, h)))  # BGR -> RGB, crop size
    return results


def feather_mask(height: int, width: int) -> np.ndarray:
    """(height, width, 1) float32 weights of the generated face: 0 at every edge of the crop and above
    MASK_TOP, rising smoothly to 1 over FEATHER of the crop's shorter side."""
    feather = max(2.0, FEATHER * min(height, width))
    y = np.arange(height, dtype=np.float32)
    x = np.arange(width, dtype=np.float32)
    top = MASK_TOP * height
    ay = _smoothstep((y - top) / feather) * _smoothstep((height - 1 - y) / feather)
    ax = _smoothstep(x / feather) * _smoothstep((width - 1 - x) / feather)
    return (ay[:, None] * ax[None, :])[..., None]


def blend(original: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """The generated face over the original crop under feather_mask (uint8 RGB in, uint8 RGB out)."""
    alpha = feather_mask(*original.shape[:2])
    mixed = original.astype(np.float32) + alpha * (generated.astype(np.float32) - original.astype(np.float32))
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _out_of_memory(exc: RuntimeError) -> bool:
    return "out of memory" in str(exc).lower()


def _free_cache(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
