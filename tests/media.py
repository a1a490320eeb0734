"""Media fixtures made at test time with real tools: a real face photo panned into a clip, espeak-ng speech.

Shared by every test module (and bench/ scripts): import as `from tests import media`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from daemon.commands.samples import SPEECH_TEXT, astronaut, face_clip, face_frames, speech, write_video  # noqa: F401


def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("ffmpeg is not installed (apt-get install ffmpeg)")
    return path


def convert(src: Path, dst: Path, *extra: str) -> Path:
    """Re-encode *src* into *dst* (format from the extension), e.g. speech WAV -> MP3/M4A/OGG."""
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-i", str(src), *extra, str(dst)], check=True)
    return dst


def tone(path: Path, seconds: float = 2.0, freq: float = 440.0) -> Path:
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency={freq}:duration={seconds}", str(path)], check=True)
    return path


def silence(path: Path, seconds: float = 2.0) -> Path:
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "anullsrc=r=16000:cl=mono", "-t", str(seconds), str(path)], check=True)
    return path


def no_face_clip(path: Path, seconds: float = 2.0, fps: float = 25.0, size: tuple[int, int] = (160, 120)) -> Path:
    """A clip with no face in it (ffmpeg's test pattern)."""
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size[0]}x{size[1]}:rate={fps}:duration={seconds}",
                    "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", str(path)], check=True)
    return path


def color_clip(path: Path, seconds: float = 2.0, fps: float = 25.0, size: tuple[int, int] = (64, 48)) -> Path:
    """A tiny, fast-to-make clip for daemon tests that do not look at faces."""
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"color=c=gray:size={size[0]}x{size[1]}:rate={fps}:duration={seconds}",
                    "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", str(path)], check=True)
    return path


def truncated(src: Path, dst: Path, share: float = 0.45) -> Path:
    """The first *share* of *src*'s bytes, as an interrupted copy leaves it (`head -c`)."""
    size = src.stat().st_size
    with open(dst, "wb") as out:
        subprocess.run(["head", "-c", str(int(size * share)), str(src)], stdout=out, check=True)
    return dst


def faststart(src: Path, dst: Path, *extra: str) -> Path:
    """*src* re-encoded with the MP4 index at the front, as phones and editors export it."""
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-i", str(src), *extra, "-movflags", "+faststart", str(dst)],
                   check=True)
    return dst


def long_silence(path: Path, seconds: float = 3 * 3600.0) -> Path:
    """Hours of silence in a small file (AAC at 8 kbit/s: about 0.7 MB for 3 hours), made by ffmpeg's lavfi."""
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t",
                    str(seconds), "-c:a", "aac", "-b:a", "8k", str(path)], check=True)
    return path
