"""What ffprobe says about a media file, in the terms the pipeline needs, with plain-words errors."""

from __future__ import annotations

import collections
import json
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipeline.errors import EngineError
from pipeline.media.threads import in_background

PROBE_TIMEOUT_SECONDS = 60
# A file that decodes this much shorter than its container promises was cut short (an interrupted copy):
# the larger of the two. Generous enough for encoder priming, edit lists and frame-rate rounding.
CUT_SHORT_SECONDS = 0.5
CUT_SHORT_SHARE = 0.02
WAV_MAX_CHUNKS = 64
# What one job may ask of the server (pipeline.max_seconds, pipeline.max_pixels), checked from the probe before
# anything is decoded: the audio is decoded whole (16 kHz float32, about 4 MB a minute, several times that
# while its features are computed), so its length bounds the worker's memory; 4K UHD is the largest picture.
DEFAULT_MAX_SECONDS = 1800.0
DEFAULT_MAX_PIXELS = 3840 * 2160  # RIFF chunks read looking for a WAV's data chunk
PROBE_CACHE_SIZE = 16  # files whose probe is remembered (see probe_data)
_PROBED: collections.OrderedDict[tuple, dict[str, Any]] = collections.OrderedDict()
_PROBED_LOCK = threading.Lock()


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    duration: float  # seconds (container duration, else the longest stream)
    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0  # average frame rate of the video stream
    rotation: int = 0  # degrees clockwise a player applies (phone videos)
    pix_fmt: str = ""
    video_codec: str = ""
    audio_codec: str = ""
    sample_rate: int = 0
    channels: int = 0
    video_duration: float = 0.0  # seconds the container promises for the picture (0: it does not say)
    audio_duration: float = 0.0  # seconds the container promises for the sound (0: it does not say)
    audio_start: float = 0.0  # seconds from the start of the file to the sound's first sample

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height after rotation, as a player shows it."""
        if self.rotation % 180:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class Limits:
    """The longest audio and the largest picture a job may have; None: no limit."""

    max_seconds: float | None = DEFAULT_MAX_SECONDS
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    @classmethod
    def from_settings(cls, pipeline: Mapping[str, Any]) -> Limits:
        """From the `pipeline` config section (validated by the daemon's config)."""
        seconds, pixels = pipeline.get("max_seconds", DEFAULT_MAX_SECONDS), pipeline.get("max_pixels",
                                                                                          DEFAULT_MAX_PIXELS)
        return cls(max_seconds=None if seconds is None else float(seconds),
                   max_pixels=None if pixels is None else int(pixels))

    def check_sound(self, info: MediaInfo, role: str) -> None:
        """EngineError when the sound of *info* is longer than max_seconds."""
        seconds = info.audio_duration or info.duration
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise EngineError(f"the {role} {info.path.name} lasts {clock(seconds)}; this server renders at most "
                              f"{clock(self.max_seconds)} of sound in one job (pipeline.max_seconds) - split it "
                              "into shorter parts and drop them one by one")

    def check_picture(self, info: MediaInfo, role: str) -> None:
        """EngineError when the picture of *info* has more than max_pixels pixels."""
        if self.max_pixels is not None and info.width * info.height > self.max_pixels:
            raise EngineError(f"the {role} {info.path.name} is {info.width}x{info.height} pixels; this server "
                              f"takes at most {self.max_pixels / 1e6:.1f} megapixels (pipeline.max_pixels; "
                              "3840x2160 is 8.3) - scale it down (1920x1080 is plenty for a face) and drop it again")

    def check_inputs(self, audio: Path, video: Path) -> None:
        """Probe a job's inputs (both at once: each ffprobe is mostly start-up) and check both limits before
        any engine decodes them."""
        picture = in_background(lambda: probe(video, "video"), name="probe")
        self.check_sound(probe(audio, "audio"), "audio")
        self.check_picture(picture(), "video")


def clock(seconds: float) -> str:
    """A length as people read it: 0:45, 12:05, 3:00:00."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EngineError(f"{name} is not installed; install it (Debian: apt-get install ffmpeg) and retry")
    return path


def probe_data(path: Path, role: str = "file") -> dict[str, Any]:
    """ffprobe's JSON for *path* (format and streams; read-only). A job probes its inputs several times (the
    worker's limits, the engine's video and audio): an unchanged file (same inode, size and mtime) is
    probed once per process."""
    try:
        st = os.stat(path)
        key: tuple | None = (str(path.absolute()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None  # ffprobe says what is wrong with it
    with _PROBED_LOCK:
        if key in _PROBED:
            _PROBED.move_to_end(key)
            return _PROBED[key]
    ffprobe = require_tool("ffprobe")
    try:
        done = subprocess.run(
            [ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
             f"file:{path.absolute()}"],
            capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, check=False,
        )
    except subprocess.TimeoutExpired:
        raise EngineError(f"the {role} {path.name!r} could not be read within {PROBE_TIMEOUT_SECONDS} s; "
                          "it may be damaged: export it again and drop it again") from None
    if done.returncode < 0:  # killed (a stop, the OOM killer): says nothing about the file
        raise EngineError(f"ffprobe was stopped by signal {-done.returncode} while reading the {role} "
                          f"{path.name!r}; that was the server, not the file: retry the job")
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = reason[-1] if reason else "unknown format"
        raise EngineError(f"the {role} {path.name!r} is not a readable media file ({detail}); "
                          "check that it was copied completely and is a real audio/video file")
    data = json.loads(done.stdout or b"{}")
    if key is not None:
        with _PROBED_LOCK:
            _PROBED[key] = data
            while len(_PROBED) > PROBE_CACHE_SIZE:
                _PROBED.popitem(last=False)
    return data


def forget_probes() -> None:
    """Forget every remembered probe (benchmarks time a job's probes as a fresh worker pays them)."""
    with _PROBED_LOCK:
        _PROBED.clear()


def probe(path: str | Path, role: str = "file") -> MediaInfo:
    """Probe *path*; raise EngineError naming the file when it is not readable media."""
    path = Path(path)
    data = probe_data(path, role)
    streams = data.get("streams", [])
    fmt = data.get("format", {})
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    durations = [_float(fmt.get("duration"))] + [_float(s.get("duration")) for s in streams]
    duration = max((d for d in durations if d), default=0.0)
    info = MediaInfo(
        path=path,
        duration=_float(fmt.get("duration")) or duration,
        has_video=video is not None,
        has_audio=audio is not None,
        width=int(video.get("width", 0)) if video else 0,
        height=int(video.get("height", 0)) if video else 0,
        fps=_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")) if video else 0.0,
        rotation=_rotation(video) if video else 0,
        pix_fmt=video.get("pix_fmt", "") if video else "",
        video_codec=video.get("codec_name", "") if video else "",
        audio_codec=audio.get("codec_name", "") if audio else "",
        sample_rate=int(audio.get("sample_rate", 0) or 0) if audio else 0,
        channels=int(audio.get("channels", 0) or 0) if audio else 0,
        video_duration=_stream_duration(video) if video else 0.0,
        audio_duration=(_wav_duration(path) if "wav" in fmt.get("format_name", "").split(",") else 0.0)
        or (_stream_duration(audio) if audio else 0.0),
        audio_start=max(0.0, _float(audio.get("start_time")) - _float(fmt.get("start_time"))) if audio else 0.0,
    )
    return info


def check_complete(path: Path, role: str, read_seconds: float, promised_seconds: float) -> None:
    """EngineError when *path* decoded to much less than its container promises: the file is cut short.

    An interrupted copy of a faststart MP4 still probes as the whole length (the index is at the front)
    and ffmpeg decodes what is there without failing, so only the two lengths side by side tell.
    """
    if promised_seconds <= 0:
        return
    if read_seconds < promised_seconds - max(CUT_SHORT_SECONDS, CUT_SHORT_SHARE * promised_seconds):
        raise EngineError(f"the {role} {path.name} is cut short: only {read_seconds:.1f} s of "
                          f"{promised_seconds:.1f} s could be read (the copy was probably interrupted) - "
                          "copy it again and drop it again")


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _stream_duration(stream: dict) -> float:
    """A stream's own length: its duration (MP4, MOV), else its DURATION tag (Matroska, WebM), else 0."""
    seconds = _float(stream.get("duration"))
    if seconds > 0:
        return seconds
    tags = {key.lower(): value for key, value in stream.get("tags", {}).items()}
    hours, _, rest = str(tags.get("duration", "")).partition(":")
    minutes, _, secs = rest.partition(":")
    try:
        return int(hours) * 3600 + int(minutes) * 60 + float(secs)
    except ValueError:
        return 0.0


def _wav_duration(path: Path) -> float:
    """The length a WAV header promises (its data chunk's size), which ffprobe caps at the bytes present.

    0 when the header does not say (a streamed WAV writes 0 or 0xFFFFFFFF) or cannot be read.
    """
    rate = block = 0
    try:
        with open(path, "rb") as handle:
            if handle.read(12)[8:12] != b"WAVE":
                return 0.0
            for _ in range(WAV_MAX_CHUNKS):
                header = handle.read(8)
                if len(header) < 8:
                    return 0.0
                kind, size = header[:4], struct.unpack("<I", header[4:])[0]
                if kind == b"fmt ":
                    fmt = handle.read(size + size % 2)
                    rate, block = struct.unpack("<I", fmt[4:8])[0], struct.unpack("<H", fmt[12:14])[0]
                elif kind == b"data":
                    unknown = size in (0, 0xFFFFFFFF) or not rate or not block
                    return 0.0 if unknown else size / (rate * block)
                else:
                    handle.seek(size + size % 2, 1)
    except (OSError, struct.error):
        return 0.0
    return 0.0


def _rate(value: object) -> float:
    try:
        rate = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(rate) if rate > 0 else 0.0


def _rotation(stream: dict) -> int:
    rotate = stream.get("tags", {}).get("rotate")
    if rotate is not None:
        return int(float(rotate)) % 360
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            # Display matrix rotation is counter-clockwise; players rotate clockwise by its negative.
            return int(-float(side["rotation"])) % 360
    return 0
