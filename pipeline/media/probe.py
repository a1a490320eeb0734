"""What ffprobe says about a media file, in the terms the pipeline needs, with plain-words errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pipeline.errors import EngineError

PROBE_TIMEOUT_SECONDS = 60


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

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height after rotation, as a player shows it."""
        if self.rotation % 180:
            return self.height, self.width
        return self.width, self.height


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EngineError(f"{name} is not installed; install it (Debian: apt-get install ffmpeg) and retry")
    return path


def probe(path: str | Path, role: str = "file") -> MediaInfo:
    """Probe *path*; raise EngineError naming the file when it is not readable media."""
    path = Path(path)
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
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = reason[-1] if reason else "unknown format"
        raise EngineError(f"the {role} {path.name!r} is not a readable media file ({detail}); "
                          "check that it was copied completely and is a real audio/video file")
    data = json.loads(done.stdout or b"{}")
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
    )
    return info


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
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
