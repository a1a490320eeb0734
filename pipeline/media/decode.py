"""Frames in: a video decoded as a stream of batches at a constant rate, through an ffmpeg pipe.

Public API (shared by the engines and the sync score; keep it stable):

- open_video(path) -> VideoInfo: probe a video, with plain-words EngineErrors (no picture, unreadable).
- read_frames(info, batch_frames, limit=None, max_side=None, pixels="rgb") -> iterator of writable uint8
  arrays: (B, H, W, 3) RGB by default. A video that ends well before its container says (an interrupted
  copy) raises EngineError "... is cut short" when the decoder reaches its end. Every frame at the
  constant rate info.fps, rotation metadata applied (phone video comes out upright), any pixel format
  (10-bit included) converted to 8 bits.
  Variable frame rate input is resampled to info.fps (frames repeated or dropped, as a player shows
  them). max_side: scaled down by ffmpeg to fit (for analysis).

The rest of the media room: pingpong.frames_for_audio (exactly as many frames as the audio needs),
encode.VideoWriter (frames out), threads.prefetch (decoding overlapping the work on each batch).

Pixels: "rgb" (default) and "bgr" give (B, H, W, 3) arrays. "yuv420p" gives the decoder's own planes,
one flat row of H*W*3/2 bytes per frame (Y, then U, then V; see yuv_planes()), at an even size
(frame_size()); frames go from decoder to encoder with no colour conversion at all, so pixels an
engine does not touch reach the encoder exactly as decoded (the builtin engine works this way).
Memory never grows with the video's length: at most a few batches are alive at once.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipeline.errors import EngineError
from pipeline.media.probe import Limits, check_complete, probe, probe_data, require_tool

STANDARD_RATES = (Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30),
                  Fraction(48), Fraction(50), Fraction(60000, 1001), Fraction(60))
RATE_SNAP_TOLERANCE = 0.03  # an average rate within 3% of a standard one is that rate (VFR phone video)
MAX_RATE = Fraction(120)
STDERR_TAIL_LINES = 20
PIXELS = ("rgb", "bgr", "yuv420p")

# ffprobe's colour matrix names -> swscale's, for the RGB -> YUV conversion of the output.
_MATRICES = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "fcc": "fcc", "smpte240m": "smpte240m",
             "bt2020nc": "bt2020", "bt2020c": "bt2020"}


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
    promised: float = 0.0  # seconds of picture the container promises (0: unknown); checked when decoded

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3

    @property
    def estimated_frames(self) -> int:
        """Frames at info.fps over the duration; the exact count is known only after decoding."""
        return max(1, round(self.duration * float(self.fps)))


def open_video(path: str | Path, role: str = "video", max_pixels: int | None = None) -> VideoInfo:
    """Probe *path* as the video of a job; EngineError in plain words when it has no usable picture or one
    larger than *max_pixels* (pipeline.max_pixels)."""
    path = Path(path)
    media = probe(path, role)
    if not media.has_video:
        kind = "an audio file" if media.has_audio else "not a video"
        raise EngineError(f"the {role} {path.name!r} has no picture (it is {kind}); drop a video of the "
                          "person's face (mp4, mov, mkv, webm) together with the audio")
    if media.width < 16 or media.height < 16:
        raise EngineError(f"the {role} {path.name!r} is only {media.width}x{media.height} pixels; "
                          "use a video in which the face is at least 100 pixels high")
    Limits(max_seconds=None, max_pixels=max_pixels).check_picture(media, role)
    probed = probe_data(path, role)  # the probe just made: ffprobe runs once
    stream = next(s for s in probed["streams"] if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic"))
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
        promised=media.video_duration,
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
        if limit is None or delivered < limit:  # the decoder reached the end: all of the picture?
            # First: a cut-off file often ends in a decoding error, and "cut short" says what to do.
            check_complete(info.path, "video", delivered / float(info.fps), info.promised)
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
    # A bytearray, not np.empty: numpy asks for transparent huge pages for arrays of 4 MB and more, and where THP
    # defrag is "madvise" (Debian's default) their first touch can stall in memory compaction. Measured: the
    # tracking thread waited 0.6-1.4 s instead of 0.25 s for the decoder on a 10 s 720p clip.
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
