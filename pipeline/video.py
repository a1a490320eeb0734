"""Video in and out as streams of frame batches, through ffmpeg pipes (ffmpeg-python).

Public API (shared by the engines and the sync score; keep it stable):

- open_video(path) -> VideoInfo: probe a video, with plain-words EngineErrors (no picture, unreadable).
- read_frames(info, batch_frames, limit=None, max_side=None, pixels="rgb") -> iterator of writable uint8
  arrays: (B, H, W, 3) RGB by default. Every frame at the constant rate info.fps, rotation metadata
  applied (phone video comes out upright), any pixel format (10-bit included) converted to 8 bits.
  Variable frame rate input is resampled to info.fps (frames repeated or dropped, as a player shows
  them). max_side: scaled down by ffmpeg to fit (for analysis).
- frames_for_audio(info, n_frames, batch_frames, scratch, pixels="rgb") -> iterator of FrameBatch:
  exactly n_frames frames in output order; cut when the video is longer, played back and forth
  ("ping-pong": 0 1 .. N-1 N-2 .. 1 0 1 ..) when it is shorter. FrameBatch.sources says which source
  frame each one shows.
- source_index(j, n_source): the ping-pong mapping itself.
- VideoWriter(path, info, audio, crf=, preset=, pixels="rgb"): write batches; H.264 yuv420p + AAC of
  *audio* + faststart, the input's frame rate and colour description; odd sizes lose their last
  column/row (H.264 4:2:0 needs even sizes).
- prefetch(iterable, depth): run a producer in a thread so decoding overlaps the work on each batch.

Pixels: "rgb" (default) and "bgr" give (B, H, W, 3) arrays. "yuv420p" gives the decoder's own planes,
one flat row of H*W*3/2 bytes per frame (Y, then U, then V; see yuv_planes()), at an even size
(frame_size()); frames go from decoder to encoder with no colour conversion at all, so pixels an
engine does not touch reach the encoder exactly as decoded (the builtin engine works this way).

Memory never grows with the video's length: at most a few batches are alive at once. Ping-pong needs
frames in reverse, which a video decoder cannot give cheaply, so the source frames that will be shown
in reverse are kept as JPEG (quality 95, 4:4:4) in a file in the scratch folder during the first pass.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from pipeline.engines.base import EngineError
from pipeline.media import probe, require_tool

STANDARD_RATES = (Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30),
                  Fraction(48), Fraction(50), Fraction(60000, 1001), Fraction(60))
RATE_SNAP_TOLERANCE = 0.03  # an average rate within 3% of a standard one is that rate (VFR phone video)
MAX_RATE = Fraction(120)
JPEG_QUALITY = 95
STDERR_TAIL_LINES = 20
PIXELS = ("rgb", "bgr", "yuv420p")
REVERSE_SLACK_FRAMES = 10  # extra frames cached in case the frame count estimate is a little off
CACHE_ALL_FRAMES = 100  # a video this short plays back and forth entirely from the cache
AUDIO_BITRATE = "192k"

# ffprobe's colour matrix names -> swscale's, for the RGB -> YUV conversion of the output.
_MATRICES = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "fcc": "fcc", "smpte240m": "smpte240m",
             "bt2020nc": "bt2020", "bt2020c": "bt2020"}
# swscale matrix -> (colorspace, primaries, transfer) tags written into the output.
_TAGS = {"bt709": ("bt709", "bt709", "bt709"), "bt601": ("smpte170m", "smpte170m", "smpte170m"),
         "fcc": ("fcc", "smpte170m", "smpte170m"), "smpte240m": ("smpte240m", "smpte240m", "smpte240m"),
         "bt2020": ("bt2020nc", "bt2020", "bt709")}


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about an input video, as its frames will be decoded."""

    path: Path
    width: int  # of decoded frames: rotation applied
    height: int
    fps: Fraction  # the constant rate frames are decoded at
    duration: float  # seconds
    stream_index: int  # the video stream used
    start_time: float = 0.0  # seconds from the start of the file to the first frame (sound may start earlier)
    color_matrix: str = "bt601"  # swscale name of the input's YUV matrix, kept for the output
    rotation: int = 0  # degrees a player rotates it by (already applied to the frames)
    pix_fmt: str = ""
    color_tags: tuple[str, str, str] = ("", "", "")  # colour space, primaries, transfer as ffprobe names them
    full_range: bool = False  # YUV levels 0-255 (some phones) rather than 16-235

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3

    @property
    def estimated_frames(self) -> int:
        """Frames at info.fps over the duration; the exact count is known only after decoding."""
        return max(1, round(self.duration * float(self.fps)))


@dataclass
class FrameBatch:
    """Consecutive output frames: frames[k] is output frame first + k and shows source frame sources[k]."""

    frames: np.ndarray  # writable uint8: (B, H, W, 3) RGB/BGR, or (B, H*W*3/2) yuv420p (see yuv_planes)
    sources: np.ndarray  # (B,) int64 source frame index
    first: int  # output index of frames[0]

    def __len__(self) -> int:
        return len(self.frames)


def open_video(path: str | Path, role: str = "video") -> VideoInfo:
    """Probe *path* as the video of a job; EngineError in plain words when it has no usable picture."""
    import ffmpeg

    path = Path(path)
    media = probe(path, role)
    if not media.has_video:
        kind = "an audio file" if media.has_audio else "not a video"
        raise EngineError(f"the {role} {path.name!r} has no picture (it is {kind}); drop a video of the "
                          "person's face (mp4, mov, mkv, webm) together with the audio")
    if media.width < 16 or media.height < 16:
        raise EngineError(f"the {role} {path.name!r} is only {media.width}x{media.height} pixels; "
                          "use a video in which the face is at least 100 pixels high")
    probed = ffmpeg.probe(f"file:{path.absolute()}", select_streams="v")
    stream = next(s for s in probed["streams"] if not s.get("disposition", {}).get("attached_pic"))
    fps = choose_rate(_fraction(stream.get("avg_frame_rate")), _fraction(stream.get("r_frame_rate")))
    width, height = media.display_size
    duration = media.duration or _float(stream.get("duration"))
    return VideoInfo(
        path=path, width=width, height=height, fps=fps, duration=duration, stream_index=int(stream["index"]),
        start_time=max(0.0, _float(stream.get("start_time")) - _float(probed.get("format", {}).get("start_time"))),
        color_matrix=_MATRICES.get(stream.get("color_space", ""), "bt601"),
        rotation=media.rotation, pix_fmt=media.pix_fmt,
        color_tags=tuple(_known(stream.get(key)) for key in ("color_space", "color_primaries",
                                                              "color_transfer")),  # type: ignore[arg-type]
        full_range=stream.get("color_range") == "pc" or media.pix_fmt.startswith("yuvj"),
    )


def choose_rate(average: Fraction, nominal: Fraction) -> Fraction:
    """The constant output rate: a standard rate near the average, else the nominal, else the average."""
    for rate in (average, nominal):
        if rate > 0:
            nearest = min(STANDARD_RATES, key=lambda standard: abs(rate - standard))
            if abs(rate - nearest) <= nearest * RATE_SNAP_TOLERANCE:
                return nearest
    for rate in (nominal, average):
        if 0 < rate <= MAX_RATE and rate.denominator in (1, 1001):
            return rate
    if average > 0:
        return min(average.limit_denominator(1001), MAX_RATE)
    return Fraction(25)


def read_frames(info: VideoInfo, batch_frames: int, limit: int | None = None,
                max_side: int | None = None, pixels: str = "rgb") -> Iterator[np.ndarray]:
    """Decode *info*'s video in batches at the constant rate info.fps; stop after *limit* frames.

    With *max_side*, frames are scaled down (by ffmpeg) to fit it: see scaled_size(). *pixels*: see
    the module docstring.
    """
    import ffmpeg

    require_tool("ffmpeg")
    stream = ffmpeg.input(f"file:{info.path.absolute()}")[str(info.stream_index)]
    stream = stream.filter("fps", fps=f"{info.fps.numerator}/{info.fps.denominator}")
    width, height = scaled_size(info, max_side) if max_side else frame_size(info, pixels)
    if max_side and (width, height) != (info.width, info.height):
        stream = stream.filter("scale", width, height, flags="area")
    elif (width, height) != (info.width, info.height):  # yuv420p: an even size
        stream = stream.crop(0, 0, width, height)
    if pixels == "yuv420p" and info.full_range:
        stream = stream.filter("scale", out_range="tv")  # the encoder gets (and is told) 16-235
    options: dict[str, Any] = {"format": "rawvideo", "pix_fmt": _pix_fmt(pixels)}
    if limit is not None:
        options["frames:v"] = limit
    process = (
        stream.output("pipe:", **options)
        .global_args("-nostdin", "-v", "error")
        .run_async(pipe_stdout=True, pipe_stderr=True)
    )
    stderr = _StderrTail(process.stderr)
    delivered = 0
    try:
        while limit is None or delivered < limit:
            want = batch_frames if limit is None else min(batch_frames, limit - delivered)
            batch = _read_batch(process.stdout, width, height, want, pixels)
            if batch is None:
                break
            delivered += len(batch)
            yield batch
            if len(batch) < want:
                break
        process.stdout.close()
        code = process.wait()
        stderr.join()
        if code != 0 and (limit is None or delivered < limit):
            raise EngineError(f"the video {info.path.name!r} could not be decoded ({stderr.last_line()}); "
                              "export it again (H.264 MP4 works everywhere) and drop it again")
        if delivered == 0:
            raise EngineError(f"the video {info.path.name!r} has no frames that can be decoded; "
                              "export it again and drop it again")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def frame_size(info: VideoInfo, pixels: str = "rgb") -> tuple[int, int]:
    """Width and height of the frames read_frames() gives: yuv420p frames are cropped to an even size."""
    if pixels == "yuv420p":
        return info.width - info.width % 2, info.height - info.height % 2
    return info.width, info.height


def yuv_planes(frames: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y (B, H, W), U and V (B, H/2, W/2) planes of a batch of yuv420p frames."""
    count = frames.shape[0]
    flat = frames.reshape(count, -1)
    luma, chroma = width * height, (width // 2) * (height // 2)
    return (flat[:, :luma].reshape(count, height, width),
            flat[:, luma:luma + chroma].reshape(count, height // 2, width // 2),
            flat[:, luma + chroma:luma + 2 * chroma].reshape(count, height // 2, width // 2))


def scaled_size(info: VideoInfo, max_side: int | None) -> tuple[int, int]:
    """The frame size read_frames() gives for *max_side* (aspect kept, even sizes when scaled)."""
    longest = max(info.width, info.height)
    if max_side is None or longest <= max_side:
        return info.width, info.height
    scale = max_side / longest
    return max(2, round(info.width * scale / 2) * 2), max(2, round(info.height * scale / 2) * 2)


def _read_batch(pipe: IO[bytes], width: int, height: int, want: int, pixels: str) -> np.ndarray | None:
    """Up to *want* frames from a rawvideo pipe, in a writable array; None at the end."""
    frame_bytes = _frame_bytes(width, height, pixels)
    buffer = bytearray(frame_bytes * want)
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        count = pipe.readinto(view[filled:])  # type: ignore[attr-defined]
        if not count:
            break
        filled += count
    frames = filled // frame_bytes
    if frames == 0:
        return None
    array = np.frombuffer(buffer, dtype=np.uint8, count=frames * frame_bytes)
    if pixels == "yuv420p":
        return array.reshape(frames, frame_bytes)
    return array.reshape(frames, height, width, 3)


def source_index(output_index: int, n_source: int) -> int:
    """Which source frame output frame *output_index* shows when the video plays back and forth."""
    if n_source <= 1:
        return 0
    period = 2 * n_source - 2
    phase = output_index % period
    return phase if phase < n_source else period - phase


def frames_for_audio(info: VideoInfo, n_frames: int, batch_frames: int, scratch: Path,
                     pixels: str = "rgb") -> Iterator[FrameBatch]:
    """Exactly *n_frames* output frames in batches: the video cut, or played back and forth, to fit.

    Batches hold at most *batch_frames* frames; a batch ends where the direction turns. Forward passes
    are decoded (again) from the video; reverse passes come from a JPEG cache filled on the first pass.
    """
    estimate = info.estimated_frames
    cache: _FrameCache | None = None
    if n_frames > estimate - 2:
        # Keep every frame a reverse pass may show: output frame j >= N shows 2N - 2 - j (down to 0,
        # where the next forward pass starts), so with n output frames it reaches down to 2N - 1 - n.
        keep_from = max(0, 2 * estimate - 1 - n_frames - REVERSE_SLACK_FRAMES)
        cache = _FrameCache(scratch, keep_from=0 if estimate <= CACHE_ALL_FRAMES else keep_from,
                            row_width=frame_size(info, pixels)[0])
    try:
        n_source = 0
        for frames in read_frames(info, batch_frames, limit=n_frames, pixels=pixels):
            if cache is not None:
                cache.put_many(n_source, frames)
            yield FrameBatch(frames, np.arange(n_source, n_source + len(frames)), n_source)
            n_source += len(frames)
        produced = n_source
        if produced >= n_frames:
            return
        # The video is shorter than the audio: back and forth until the audio ends.
        if n_source <= CACHE_ALL_FRAMES:  # short: every pass from the cache, no decoder restarts
            keep, stop = range(0, n_source), n_source
        else:
            keep, stop = range(max(0, 2 * n_source - 1 - n_frames), n_source - 1), n_source - 1
        if cache is None:
            cache = _FrameCache(scratch, keep_from=keep.start, row_width=frame_size(info, pixels)[0])
        if not cache.covers(keep):  # the frame count estimate was off: decode the missing frames again
            cache.keep_from = min(cache.keep_from, keep.start)
            _fill_cache(cache, info, batch_frames, stop=stop, pixels=pixels)
        while produced < n_frames:
            window = [source_index(j, n_source) for j in range(produced, min(n_frames, produced + batch_frames))]
            run = _one_direction(window, n_source)
            if cache.covers(run):
                yield FrameBatch(cache.get_many(run, info, pixels), np.asarray(run, dtype=np.int64), produced)
                produced += len(run)
                continue
            # A forward pass (reverse passes are always cached): decode it from the video again.
            length = min(n_source - run[0], n_frames - produced)
            for batch in _decode_run(info, run[0], run[0] + length, batch_frames, produced, pixels):
                produced += len(batch)
                yield batch
    finally:
        if cache is not None:
            cache.close()


def _one_direction(indices: list[int], n_source: int) -> list[int]:
    """The leading run of *indices* that moves in one direction (a turn starts a new batch)."""
    if n_source <= 1 or len(indices) < 2:
        return indices
    step = indices[1] - indices[0]
    end = 1
    while end < len(indices) and indices[end] - indices[end - 1] == step:
        end += 1
    return indices[:end]


def _decode_run(info: VideoInfo, start: int, stop: int, batch_frames: int, first_output: int,
                pixels: str) -> Iterator[FrameBatch]:
    """Source frames [start, stop) decoded again from the start of the video, exactly as the first pass."""
    index = 0
    for frames in read_frames(info, batch_frames, limit=stop, pixels=pixels):
        if index + len(frames) > start:
            keep = frames[max(0, start - index):]
            first_source = max(index, start)
            yield FrameBatch(keep, np.arange(first_source, first_source + len(keep)), first_output)
            first_output += len(keep)
        index += len(frames)


def _fill_cache(cache: _FrameCache, info: VideoInfo, batch_frames: int, stop: int, pixels: str) -> None:
    """Decode frames [0, stop) into the cache (when the frame count estimate was too far off)."""
    index = 0
    for frames in read_frames(info, batch_frames, limit=stop, pixels=pixels):
        cache.put_many(index, frames)
        index += len(frames)


class _FrameCache:
    """Source frames kept as JPEG in one scratch file, for reading in any order."""

    def __init__(self, folder: Path, keep_from: int = 0, row_width: int = 0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.keep_from = keep_from
        self.row_width = row_width  # yuv420p frames: the frame width
        self.path = folder / f".frames-{id(self):x}.jpgcache"
        self.file = open(self.path, "w+b")  # noqa: SIM115 (closed in close())
        self.where: dict[int, tuple[int, int]] = {}

    def put_many(self, first: int, frames: np.ndarray) -> None:
        """Keep frames first, first + 1, ... (those from keep_from on that are not kept yet)."""
        import cv2

        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                  cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        for offset, frame in enumerate(frames):
            index = first + offset
            if index < self.keep_from or index in self.where:
                continue
            if frame.ndim == 1:  # yuv420p: the planes as one grey picture (H * 3/2 rows of W)
                frame = frame.reshape(-1, self.row_width)
            ok, data = cv2.imencode(".jpg", frame, params)  # RGB is stored as if BGR, read back the same way
            if not ok:
                raise EngineError("could not keep a video frame for back-and-forth playback (JPEG encoding "
                                  "failed); check the free space of the work folder")
            self.file.seek(0, 2)
            position = self.file.tell()
            self.file.write(data.tobytes())
            self.where[index] = (position, len(data))

    def covers(self, run: Iterable[int]) -> bool:
        return all(index in self.where for index in run)

    def get_many(self, run: list[int], info: VideoInfo, pixels: str) -> np.ndarray:
        import cv2

        width, height = frame_size(info, pixels)
        if pixels == "yuv420p":
            frames = np.empty((len(run), _frame_bytes(width, height, pixels)), dtype=np.uint8)
            mode = cv2.IMREAD_GRAYSCALE
        else:
            frames = np.empty((len(run), height, width, 3), dtype=np.uint8)
            mode = cv2.IMREAD_COLOR
        for k, index in enumerate(run):
            position, size = self.where[index]
            self.file.seek(position)
            data = np.frombuffer(self.file.read(size), dtype=np.uint8)
            frames[k] = cv2.imdecode(data, mode).reshape(frames.shape[1:])
        return frames

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class VideoWriter:
    """Encode RGB batches to H.264 (yuv420p, crf/preset) + AAC of *audio*, MP4 with faststart.

    Writing happens in a thread, so encoding overlaps the work on the next batch. Use as a context
    manager: a clean exit finishes the file (EngineError if ffmpeg failed); an exception removes it.
    """

    def __init__(self, path: str | Path, info: VideoInfo, audio: str | Path, *, crf: int = 20,
                 preset: str = "veryfast", queue_depth: int = 1, pixels: str = "rgb") -> None:
        import ffmpeg

        require_tool("ffmpeg")
        self.path = Path(path)
        self.pixels = pixels
        self.width, self.height = frame_size(info, pixels)
        self.frame_shape = ((_frame_bytes(self.width, self.height, pixels),) if pixels == "yuv420p"
                            else (self.height, self.width, 3))
        self.frames_written = 0
        picture = ffmpeg.input("pipe:", format="rawvideo", pix_fmt=_pix_fmt(pixels), s=f"{self.width}x{self.height}",
                               framerate=f"{info.fps.numerator}/{info.fps.denominator}")
        if pixels == "yuv420p":  # the decoder's own YUV: keep its colour description as it was
            tags = dict(zip(("colorspace", "color_primaries", "color_trc"), info.color_tags, strict=True))
            tags = {key: value for key, value in tags.items() if value}
        else:
            matrix = info.color_matrix if info.color_matrix in _TAGS else "bt601"
            tags = dict(zip(("colorspace", "color_primaries", "color_trc"), _TAGS[matrix], strict=True))
            even_width, even_height = self.width - self.width % 2, self.height - self.height % 2
            if (even_width, even_height) != (self.width, self.height):
                picture = picture.crop(0, 0, even_width, even_height)
            picture = picture.filter("scale", out_color_matrix=matrix, out_range="tv").filter("format", "yuv420p")
        sound = ffmpeg.input(f"file:{Path(audio).absolute()}").audio
        output = ffmpeg.output(
            picture, sound, str(self.path), format="mp4", vcodec="libx264", pix_fmt="yuv420p", crf=crf,
            preset=preset, color_range="tv", acodec="aac", audio_bitrate=AUDIO_BITRATE, movflags="+faststart",
            **tags,
        )
        self.process = output.overwrite_output().global_args("-nostdin", "-v", "error").run_async(
            pipe_stdin=True, pipe_stderr=True)
        self.stderr = _StderrTail(self.process.stderr)
        self.queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=queue_depth)
        self.failure: BaseException | None = None
        self.stopping = False
        self.closed = False
        self.thread = threading.Thread(target=self._pump, name="video-writer", daemon=True)
        self.thread.start()

    def write(self, frames: np.ndarray) -> None:
        """Queue a batch of frames (in the writer's *pixels*); it must not be modified afterwards."""
        if frames.shape[1:] != self.frame_shape or frames.dtype != np.uint8:
            raise ValueError(f"frames of shape {frames.shape}/{frames.dtype} given to a "
                             f"{self.width}x{self.height} {self.pixels} writer")
        if self.failure is not None:
            self._raise_failure()
        self.queue.put(np.ascontiguousarray(frames))
        self.frames_written += len(frames)

    def close(self) -> None:
        """Finish the file; EngineError (with ffmpeg's reason) if encoding failed. A second call does nothing."""
        if self.closed:
            return
        self.closed = True
        self.queue.put(None)
        self.thread.join()
        with contextlib.suppress(BrokenPipeError, OSError):
            self.process.stdin.close()
        code = self.process.wait()
        self.stderr.join()
        if self.failure is not None or code != 0:
            self._raise_failure()

    def abort(self) -> None:
        """Stop encoding and remove the partial file."""
        self.stopping = True
        if self.process.poll() is None:
            self.process.kill()
        self.thread.join()
        self.process.wait()
        self.stderr.join()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is None:
            try:
                self.close()
            except BaseException:
                self.path.unlink(missing_ok=True)
                raise
        else:
            self.abort()

    def _pump(self) -> None:
        while True:
            try:
                frames = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self.stopping:
                    return
                continue
            if frames is None:
                return
            if self.failure is not None or self.stopping:
                continue  # drain until the end
            try:
                self.process.stdin.write(frames.data)
            except (BrokenPipeError, OSError) as exc:
                self.failure = exc

    def _raise_failure(self) -> None:
        self.process.wait()
        self.stderr.join()
        raise EngineError(f"encoding the result {self.path.name!r} failed ({self.stderr.last_line()}); "
                          "check the free space of the output folder and that the audio file is readable")


T = TypeVar("T")


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Produce *items* in a background thread, at most *depth* ahead of the consumer.

    Exceptions from the producer are re-raised in the consumer; closing the returned iterator early
    stops the producer (and closes it, so a decoder it owns is stopped).
    """
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer
            _put_final(slots, ("error", exc), stop)
        else:
            _put_final(slots, ("end", None), stop)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        thread.join()


def _put_final(slots: queue.Queue, message: tuple[str, Any], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            slots.put(message, timeout=0.1)
            return
        except queue.Full:
            continue


class _StderrTail:
    """Drain a process's stderr in a thread (so it never blocks), keeping the last lines."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.thread = threading.Thread(target=self._drain, args=(pipe,), name="ffmpeg-stderr", daemon=True)
        self.thread.start()

    def _drain(self, pipe: IO[bytes]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in pipe:
                text = line.decode("utf-8", "replace").strip()
                if text:
                    self.lines.append(text)
        with contextlib.suppress(OSError):
            pipe.close()

    def join(self) -> None:
        self.thread.join(timeout=10)

    def last_line(self) -> str:
        return self.lines[-1] if self.lines else "ffmpeg gave no reason"


def _pix_fmt(pixels: str) -> str:
    if pixels not in PIXELS:
        raise ValueError(f"pixels must be one of {', '.join(PIXELS)}, not {pixels!r}")
    return "yuv420p" if pixels == "yuv420p" else f"{pixels}24"


def _frame_bytes(width: int, height: int, pixels: str) -> int:
    if pixels == "yuv420p":
        return width * height + 2 * (width // 2) * (height // 2)
    return width * height * 3


def _known(value: object) -> str:
    """An ffprobe colour tag, or '' when it says nothing."""
    text = str(value or "")
    return "" if text in ("", "unknown", "unspecified", "reserved") else text


def _fraction(value: object) -> Fraction:
    try:
        rate = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return Fraction(0)
    return rate if rate > 0 else Fraction(0)


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
