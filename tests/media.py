"""Media fixtures made at test time with real tools: a real face photo panned into a clip, espeak-ng speech.

Shared by every test module (and bench/ scripts): import as `from tests import media`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

SPEECH_TEXT = ("Hello, this is lipsyncd. Papa bought a big blue balloon. "
               "We open our mouths wide when we speak loudly, and close them when we stop.")


def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("ffmpeg is not installed (apt-get install ffmpeg)")
    return path


def speech(path: Path, text: str = SPEECH_TEXT, *, speed: int = 150, gap_ms: int = 0) -> Path:
    """Speak *text* with espeak-ng into a WAV (22.05 kHz mono). Other formats: convert() it."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    args = [espeak, "-s", str(speed), "-w", str(path)]
    if gap_ms:
        args += ["-g", str(max(1, gap_ms // 10))]
    subprocess.run([*args, text], check=True, capture_output=True)
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
                    f"anullsrc=r=16000:cl=mono", "-t", str(seconds), str(path)], check=True)
    return path


def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo (512x512 RGB): a real frontal face at about x 177-272, y 66-161."""
    from skimage import data

    return data.astronaut()


def face_frames(seconds: float = 3.0, fps: float = 25.0, size: tuple[int, int] = (320, 320),
                pan_pixels: int = 24, zoom: float = 1.0):
    """Yield RGB frames: a window over the astronaut photo panned slowly left-right and up-down."""
    import cv2

    photo = astronaut()
    h, w = photo.shape[:2]
    out_w, out_h = size
    # A square-ish window around the face, then resized to *size*.
    crop = int(300 / zoom)
    cx, cy = 225, 130
    n = max(1, round(seconds * fps))
    for i in range(n):
        t = i / max(1, n - 1)
        dx = int(round(pan_pixels * np.sin(2 * np.pi * t)))
        dy = int(round(pan_pixels / 2 * np.sin(np.pi * t)))
        x0 = int(np.clip(cx - crop // 2 + dx, 0, w - crop))
        y0 = int(np.clip(cy - crop // 2 + dy, 0, h - crop))
        window = photo[y0:y0 + crop, x0:x0 + crop]
        yield cv2.resize(window, (out_w, out_h), interpolation=cv2.INTER_AREA)


def write_video(path: Path, frames, fps: float, size: tuple[int, int], *, audio: Path | None = None,
                codec_args: tuple[str, ...] = ("-c:v", "libx264", "-preset", "ultrafast", "-crf", "18",
                                               "-pix_fmt", "yuv420p"),
                extra: tuple[str, ...] = ()) -> Path:
    """Pipe RGB frames into ffmpeg; optionally mux *audio* (cut to the video's length)."""
    w, h = size
    args = [_ffmpeg(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
            "-r", str(fps), "-i", "pipe:0"]
    if audio is not None:
        args += ["-i", str(audio), "-map", "0:v", "-map", "1:a", "-c:a", "aac", "-shortest"]
    args += [*codec_args, *extra, str(path)]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for frame in frames:
        proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}")
    return path


def face_clip(path: Path, seconds: float = 3.0, fps: float = 25.0, size: tuple[int, int] = (320, 320),
              audio: Path | None = None, **kwargs) -> Path:
    """A talking-head style clip: the astronaut's face, panned slowly. H.264/yuv420p."""
    return write_video(path, face_frames(seconds, fps, size), fps, size, audio=audio, **kwargs)


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
