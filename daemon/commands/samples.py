"""Sample media made on the spot with real tools: a real face photo panned into a clip, espeak-ng speech.

Used by `lipsyncd demo`, the test suite (tests/media.py) and the benchmarks, so all three exercise the
same kind of input. The face is scikit-image's astronaut photo (public domain, NASA).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

SPEECH_TEXT = ("Hello, this is lipsyncd. Papa bought a big blue balloon. "
               "We open our mouths wide when we speak loudly, and close them when we stop.")
# Where the face sits in the 512x512 astronaut photo (its centre), and the window panned over it.
FACE_CENTRE = (225, 130)
WINDOW = 300


class SampleError(RuntimeError):
    """A tool needed to make sample media is missing; the message says how to install it."""


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SampleError(f"{name} is not installed; install it with: apt-get install {package}")
    return path


def speech(path: Path, text: str = SPEECH_TEXT, *, speed: int = 150, gap_ms: int = 0) -> Path:
    """Speak *text* with espeak-ng into a WAV (22.05 kHz mono)."""
    args = [_tool("espeak-ng", "espeak-ng"), "-s", str(speed), "-w", str(path)]
    if gap_ms:
        args += ["-g", str(max(1, gap_ms // 10))]
    subprocess.run([*args, text], check=True, capture_output=True)
    return path


def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo (512x512 RGB): a real frontal face at about x 177-272, y 66-161."""
    try:
        from skimage import data
    except ImportError:
        raise SampleError("scikit-image is needed for the sample face: pip install 'lipsyncd[demo]'") from None
    return data.astronaut()


def face_frames(seconds: float = 3.0, fps: float = 25.0, size: tuple[int, int] = (320, 320),
                pan_pixels: int = 24, zoom: float = 1.0) -> Iterator[np.ndarray]:
    """RGB frames of a window over the astronaut photo, panned slowly left-right and up-down."""
    import cv2

    photo = astronaut()
    h, w = photo.shape[:2]
    crop = int(WINDOW / zoom)
    cx, cy = FACE_CENTRE
    n = max(1, round(seconds * fps))
    for i in range(n):
        t = i / max(1, n - 1)
        dx = int(round(pan_pixels * np.sin(2 * np.pi * t)))
        dy = int(round(pan_pixels / 2 * np.sin(np.pi * t)))
        x0 = int(np.clip(cx - crop // 2 + dx, 0, w - crop))
        y0 = int(np.clip(cy - crop // 2 + dy, 0, h - crop))
        window = photo[y0:y0 + crop, x0:x0 + crop]
        yield cv2.resize(window, size, interpolation=cv2.INTER_AREA)


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float, size: tuple[int, int], *,
                audio: Path | None = None,
                codec_args: tuple[str, ...] = ("-c:v", "libx264", "-preset", "ultrafast", "-crf", "18",
                                               "-pix_fmt", "yuv420p"),
                extra: tuple[str, ...] = ()) -> Path:
    """Pipe RGB frames into ffmpeg; optionally mux *audio* (cut to the video's length)."""
    w, h = size
    args = [_tool("ffmpeg", "ffmpeg"), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0"]
    if audio is not None:
        args += ["-i", str(audio), "-map", "0:v", "-map", "1:a", "-c:a", "aac", "-shortest"]
    args += [*codec_args, *extra, str(path)]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for frame in frames:
            proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
    finally:
        proc.stdin.close()
    if proc.wait() != 0:
        raise SampleError(f"ffmpeg failed writing {path}")
    return path


def face_clip(path: Path, seconds: float = 3.0, fps: float = 25.0, size: tuple[int, int] = (320, 320),
              audio: Path | None = None, **kwargs) -> Path:
    """A talking-head style clip: the astronaut's face, panned slowly. H.264/yuv420p."""
    return write_video(path, face_frames(seconds, fps, size), fps, size, audio=audio, **kwargs)
