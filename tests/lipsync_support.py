"""Helpers for the builtin engine and sync score tests: renders shared within a session, frame comparison."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import numpy as np

from daemon.config import DEFAULTS
from pipeline.engines import JobSpec, RenderResult, get_engine


def render(audio: Path, video: Path, output: Path, **builtin: object) -> RenderResult:
    """Run the builtin engine with the default settings (plus builtin.* overrides) on the CPU."""
    settings = {**DEFAULTS["pipeline"], "builtin": {**DEFAULTS["pipeline"]["builtin"], **builtin}}
    engine = get_engine("builtin", settings)
    return engine.render(JobSpec(audio=audio, video=video, output=output, device="cpu", workdir=output.parent))


@functools.cache
def talking(media_dir: Path, face: Path, speech: Path) -> tuple[Path, RenderResult]:
    """The face clip (3 s) speaking the espeak-ng sentence (about 9 s): plays back and forth. Rendered once."""
    folder = media_dir / "talking"
    folder.mkdir(exist_ok=True)
    output = folder / "talking.mp4"
    return output, render(speech, face, output)


def plain_reencode(video: Path, audio: Path, output: Path, *, loop: bool = False) -> Path:
    """The input as ffmpeg alone re-encodes it with the engine's encoder settings and the same audio."""
    loop_args = ["-stream_loop", "-1"] if loop else []
    pipeline = DEFAULTS["pipeline"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *loop_args, "-i", str(video), "-i", str(audio), "-map", "0:v",
                    "-map", "1:a", "-shortest", "-c:v", "libx264", "-crf", str(pipeline["crf"]), "-preset",
                    pipeline["preset"], "-pix_fmt", "yuv420p", "-c:a", "aac", str(output)], check=True)
    return output


def decode(path: Path) -> np.ndarray:
    """Every frame of *path* as RGB (small clips only)."""
    info = json.loads(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                      "stream=width,height", "-of", "json", str(path)],
                                     check=True, capture_output=True).stdout)["streams"][0]
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, info["height"], info["width"], 3)


def stream_facts(path: Path) -> dict:
    """ffprobe's view: format duration, and per codec type its stream."""
    data = json.loads(subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_format", "-show_streams",
                                      "-of", "json", str(path)], check=True, capture_output=True).stdout)
    facts = {"duration": float(data["format"]["duration"])}
    for stream in data["streams"]:
        facts[stream["codec_type"]] = stream
    return facts


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10.0 * np.log10(255.0 ** 2 / error)


def own_peak_mb() -> float:
    """This process's own peak resident memory (VmHWM), in MB.

    Not getrusage's ru_maxrss: Linux keeps that across fork and exec, so a child started by a big process
    (pytest after decoding clips, a bench after its warm-up) reports its parent's peak as its own."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM")
