"""The builtin engine's pipeline, strung together in one place that reads top to bottom.

  1. audio features   media.audio      decode to 16 kHz mono; log-mel and loudness per video frame
  2. mouth motion     builtin.motion   opening and width per frame (numpy)
  3. frames           media.pingpong   decoded in batches; cut, or played back and forth, to the audio's length
     faces            pipeline.face    tracked main face per frame (None: frame passes through)
     lips             pipeline.lips    the lips located in the face (None: frame passes through)
     synthesis        builtin.warp     mouth region warped in place (OpenCV on the CPU, torch on a GPU)
     encoding         media.encode     H.264 + AAC of the audio, MP4 with faststart

Frames stream through in batches of pipeline.batch_frames: memory does not grow with the video's
length, and the batches reuse the same memory (media.heap). On a CUDA out-of-memory error the warp batch
is halved and the job goes on.

The stages of step 3 overlap: a pipeline of threads over queues one batch deep (threads.prefetch),

  ffmpeg decoder -> [decode thread] -> [tracking thread: faces, lips] -> [this thread: warp] -> [writer] -> x264

so batch n + 1 is tracked while batch n is warped and batch n - 1 encoded. Each thread spends its time in
code that releases the GIL (the ffmpeg pipes, OpenCV, numpy, torch), so they run at once on several cores.
At most two batches wait between two stages: memory stays flat in the video's length.

OpenCV (and torch, for a GPU) are imported in a thread while step 1 runs (it needs neither): in a cold
process (`lipsyncd render`) their import overlaps the probe and the audio; in a warm worker it is already
done. On the CPU torch is never imported: its import alone costs a cold render about 1.5 s of CPU.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.engines.base import ProgressFn, RenderResult, no_progress
from pipeline.errors import EngineError
from pipeline.face import FaceBox, FaceTracker
from pipeline.lips import Lips, LipTracker, LowerFace
from pipeline.media import audio, encode, heap, pingpong, threads
from pipeline.media import decode as video
from pipeline.media.probe import Limits

if TYPE_CHECKING:
    from pipeline.engines.builtin import motion
    from pipeline.engines.builtin.warp import MouthWarper

PIXELS = "yuv420p"  # frames inside the pipeline: see pipeline.media.decode


@dataclass(frozen=True)
class BuiltinSettings:
    batch_frames: int = 32
    crf: int = 20
    preset: str = "veryfast"
    detect_every: int = 5
    mouth_gain: float = 1.0
    limits: Limits = Limits()  # pipeline.max_seconds and pipeline.max_pixels

    @classmethod
    def from_config(cls, pipeline: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> BuiltinSettings:
        """From the `pipeline` config section; a job's options may set mouth_gain and detect_every."""
        builtin = dict(pipeline.get("builtin") or {})
        builtin.update({key: value for key, value in (options or {}).items() if key in ("mouth_gain", "detect_every")})
        try:
            return cls(
                batch_frames=max(1, int(pipeline.get("batch_frames", cls.batch_frames))),
                crf=int(pipeline.get("crf", cls.crf)),
                preset=str(pipeline.get("preset", cls.preset)),
                detect_every=max(1, int(builtin.get("detect_every", cls.detect_every))),
                mouth_gain=float(builtin.get("mouth_gain", cls.mouth_gain)),
                limits=Limits.from_settings(pipeline),
            )
        except (TypeError, ValueError) as exc:
            raise EngineError(f"a builtin engine setting is not a number ({exc}); check pipeline.batch_frames, "
                              "pipeline.crf and pipeline.builtin in the configuration or the job's options") from None


class StageClock:
    """Seconds spent in each stage, in the order the stages first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def lipsync(audio_path: Path, video_path: Path, output: Path, *, settings: BuiltinSettings,
            device: str = "cpu", workdir: Path | None = None, progress: ProgressFn = no_progress) -> RenderResult:
    """Write *output*: *video_path*'s face speaking *audio_path*. EngineError in plain words on bad input."""
    heavy = threads.in_background(lambda: _import_heavy(device), name="import")
    with heap.frames_from_heap():  # batches reuse the same pages instead of fresh mappings (see media.heap)
        return _lipsync(Path(audio_path), Path(video_path), Path(output), settings, device, workdir, progress,
                        heavy)


def _import_heavy(device: str) -> None:
    """OpenCV, and torch for a GPU: seconds in a cold process."""
    import cv2  # noqa: F401

    from pipeline.engines.builtin import motion, warp  # noqa: F401

    if not device.startswith("cpu"):
        import torch  # noqa: F401


def _lipsync(audio_path: Path, video_path: Path, output: Path, settings: BuiltinSettings, device: str,
             workdir: Path | None, progress: ProgressFn, heavy: Any) -> RenderResult:
    clock = StageClock()
    progress("audio", 0.0)

    # 1. Inputs and audio features, one row per output frame.
    with clock.stage("probe"):
        info = video.open_video(video_path, max_pixels=settings.limits.max_pixels)
    with clock.stage("audio"):
        sound = audio.load_audio(audio_path, max_seconds=settings.limits.max_seconds)
        n_frames = audio.frame_count(sound.duration, float(info.fps))
        features = audio.frame_features(sound, float(info.fps), n_frames)
        audio.require_sound(features, audio_path)
    with clock.stage("imports"):  # what the import thread had left to do (nothing in a warm worker)
        heavy()
    with _cv2_threads():
        return _render(audio_path, video_path, output, settings, device, workdir, progress, clock, info, sound,
                       n_frames, features)


def _render(audio_path: Path, video_path: Path, output: Path, settings: BuiltinSettings, device: str,
            workdir: Path | None, progress: ProgressFn, clock: StageClock, info: video.VideoInfo,
            sound: audio.Audio, n_frames: int, features: audio.FrameFeatures) -> RenderResult:
    """Steps 2 and 3, once OpenCV (and torch, for a GPU) is imported."""
    from pipeline.engines.builtin import motion
    from pipeline.engines.builtin.warp import MouthWarper

    # 2. Mouth motion for every output frame.
    with clock.stage("motion"):
        track = motion.mouth_motion(features, gain=settings.mouth_gain)

    # 3. Frames, batch by batch: faces, mouth warp, encoding.
    # Frames stay in the decoder's YUV 4:2:0 from decoder to encoder: no colour conversion, and pixels
    # away from the mouth reach the encoder exactly as decoded. Faces are tracked on the Y plane.
    tracker = FaceTracker(settings.detect_every)
    lip_tracker = LipTracker(settings.detect_every)
    warper = MouthWarper(device, pixels=PIXELS)
    size = video.frame_size(info, PIXELS)
    faces_by_source: dict[int, tuple[FaceBox | None, Lips | None]] = {}  # source frame -> face, lips: reused
    warp_size = settings.batch_frames
    changed = 0
    with contextlib.ExitStack() as stack:
        scratch = Path(workdir) if workdir is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="lipsyncd-builtin-")))
        writer = stack.enter_context(encode.VideoWriter(output, info, audio_path, crf=settings.crf,
                                                       preset=settings.preset, pixels=PIXELS))
        decoded = threads.prefetch(
            pingpong.frames_for_audio(info, n_frames, settings.batch_frames, scratch, pixels=PIXELS))
        tracked = stack.enter_context(contextlib.closing(threads.prefetch(
            _tracked(decoded, tracker, lip_tracker, faces_by_source, size, video_path, clock))))
        while True:
            with clock.stage("wait"):  # for the tracking thread: the time the stages before did not hide
                item = next(tracked, None)
            if item is None:
                break
            batch, mouths = item
            with clock.stage("warp"):
                span = slice(batch.first, batch.first + len(batch))
                warp_size, count = _warp(warper, batch.frames, mouths, track, span, warp_size, size)
                changed += count
            with clock.stage("encode"):
                writer.write(batch.frames)
            progress("render", 0.98 * (batch.first + len(batch)) / n_frames)
        if tracker.faces_seen == 0:
            raise _no_face(video_path)
        with clock.stage("encode"):
            writer.close()  # the ExitStack's second close() is a no-op
    progress("encode", 1.0)
    return RenderResult(
        timings=clock.seconds,
        frames=n_frames,
        fps=float(info.fps),
        details={
            "engine": "builtin",
            "device": device,
            "source_frames": tracker.frames_seen,
            "face_frames": sum(face is not None for face, _ in faces_by_source.values()),
            "lip_frames": sum(lips is not None for _, lips in faces_by_source.values()),
            "frames_without_lips": sum(face is not None and lips is None for face, lips in faces_by_source.values()),
            "frames_changed": changed,
            "face_detections": tracker.detections_run,
            "warp_batch": warp_size,
            "size": list(size),
            "audio_seconds": round(sound.duration, 3),
        },
    )


def _no_face(video_path: Path) -> EngineError:
    return EngineError(f"no face was found in the video {video_path.name!r}; use a video in which one person "
                       "faces the camera, with the face at least an eighth of the picture high")


@contextlib.contextmanager
def _cv2_threads() -> Iterator[None]:
    """Leave most CPU cores to the ffmpeg decoder and encoder that run alongside (and to each other).

    OpenCV defaults to one thread per core; next to two busy ffmpeg processes that mostly adds contention.
    """
    import cv2

    saved = cv2.getNumThreads()
    cv2.setNumThreads(max(1, (os.cpu_count() or 1) // 4))
    try:
        yield
    finally:
        cv2.setNumThreads(saved)


def _tracked(batches: Iterator[pingpong.FrameBatch], tracker: FaceTracker, lip_tracker: LipTracker,
             known: dict[int, tuple[FaceBox | None, Lips | None]], size: tuple[int, int], video_path: Path,
             clock: StageClock) -> Iterator[tuple[pingpong.FrameBatch, list[Lips | None]]]:
    """The tracking stage (its own thread): each decoded batch with the lips of its frames."""
    with contextlib.closing(batches):  # stops the decode thread and its ffmpeg when this stage stops
        while True:
            with clock.stage("decode"):  # time this thread waited for the decoder
                batch = next(batches, None)
            if batch is None:
                return
            if tracker.faces_seen == 0 and int(batch.sources[0]) in known:
                raise _no_face(video_path)  # the whole video was seen: do not play it back and forth for nothing
            yield batch, _mouths(batch, video.yuv_planes(batch.frames, *size), tracker, lip_tracker, known, clock)


def _mouths(batch: pingpong.FrameBatch, planes: tuple[Any, Any, Any], tracker: FaceTracker, lip_tracker: LipTracker,
            known: dict[int, tuple[FaceBox | None, Lips | None]], clock: StageClock) -> list[Lips | None]:
    """The lips of a batch (None: the frame passes through): face and lips tracked on the first pass
    through the video (on its YUV planes), remembered for later passes."""
    sources = batch.sources.tolist()
    if all(source in known for source in sources):
        return [known[source][1] for source in sources]
    luma, u, v = planes
    with clock.stage("faces"):
        faces = tracker.update(luma)
    with clock.stage("lips"):
        pictures = [LowerFace.from_yuv(luma[k], u[k], v[k], face) if face is not None else None
                    for k, face in enumerate(faces)]
        lips = lip_tracker.update(pictures, faces)
    known.update(zip(sources, zip(faces, lips, strict=True), strict=True))
    return lips


def _warp(warper: MouthWarper, frames: Any, mouths: list, track: motion.MouthTrack, span: slice,
          pieces: int, size: tuple[int, int]) -> tuple[int, int]:
    """Warp a batch in pieces of *pieces* frames; on CUDA out-of-memory halve the pieces and go on.

    Returns the piece size to use from now on and how many frames changed.
    """
    opening, width = track.opening[span], track.width[span]
    start = changed = 0
    while start < len(frames):
        piece = slice(start, start + pieces)
        try:
            changed += warper.apply(frames[piece], mouths[piece], opening[piece], width[piece], size=size)
        except warper.out_of_memory:
            import torch

            if pieces == 1:
                raise EngineError("the GPU ran out of memory even for one frame; free the GPU (other jobs?) "
                                  "or set pipeline.device to cpu") from None
            pieces = max(1, pieces // 2)
            torch.cuda.empty_cache()
            continue
        start += pieces
    return pieces, changed
