"""The wav2lip engine: wall time against the ffmpeg floor, per-stage frames/s, fp16 vs fp32, memory vs length.

Baseline ("ffmpeg floor"): ffmpeg decoding the same clip and re-encoding it with the same audio and the
same encoder settings (libx264 crf/preset from the config defaults, AAC), in the same run. The engine
uses a randomly initialised generator saved in the public checkpoint format (no download): the
network's cost does not depend on its weights.

    .venv/bin/python bench/wav2lip.py [--device auto|cpu|cuda:0] [--seconds 5] [--size 480x480] [--fps 25]
                                      [--memory]   # also: peak RSS for 1x and 3x the length, in child processes

On CUDA it also checks fp16 against fp32 on the same face crops (mean and max absolute difference of
the generated pixels, 0-255). This script is what the lead runs on the GPU machine for issue 4.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.config import DEFAULTS  # noqa: E402
from tests import media  # noqa: E402
from tests.lipsync_support import own_peak_mb  # noqa: E402

BASELINE = "ffmpeg decode + re-encode (libx264 + AAC, same settings)"


def make_inputs(folder: Path, seconds: float, size: tuple[int, int], fps: float) -> tuple[Path, Path, Path]:
    import torch

    from pipeline.engines.wav2lip.model import Wav2Lip

    checkpoint = folder / "wav2lip_random.pth"
    torch.manual_seed(0)
    torch.save({"state_dict": {"module." + k: v for k, v in Wav2Lip().state_dict().items()}}, checkpoint)
    speech = media.speech(folder / "speech.wav", text=media.SPEECH_TEXT * max(1, round(seconds / 6)))
    audio = media.convert(speech, folder / "audio.wav", "-t", str(seconds))
    video = media.face_clip(folder / "face.mp4", seconds=seconds, fps=fps, size=size)
    return checkpoint, audio, video


def ffmpeg_floor(video: Path, audio: Path, out: Path) -> float:
    pipeline = DEFAULTS["pipeline"]
    started = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-i", str(audio), "-map", "0:v", "-map", "1:a",
                    "-c:v", "libx264", "-crf", str(pipeline["crf"]), "-preset", pipeline["preset"],
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart", str(out)], check=True)
    return time.perf_counter() - started


def run_engine(checkpoint: Path, audio: Path, video: Path, out: Path, device: str) -> dict:
    from pipeline.devices import resolve
    from pipeline.engines import JobSpec, get_engine

    settings = json.loads(json.dumps(DEFAULTS["pipeline"]))
    settings["wav2lip"]["checkpoint"] = str(checkpoint)
    engine = get_engine("wav2lip", settings)
    device = resolve(device)
    started = time.perf_counter()
    engine.check()
    load = time.perf_counter() - started
    started = time.perf_counter()
    result = engine.render(JobSpec(audio=audio, video=video, output=out, device=device, workdir=out.parent))
    wall = time.perf_counter() - started
    return {"device": device, "load": load, "wall": wall, "frames": result.frames, "timings": result.timings,
            "faces": result.details["faces_rendered"],
            "peak_rss_mb": own_peak_mb()}


def fp16_check(checkpoint: Path, video: Path, device: str) -> tuple[float, float]:
    """Mean and max |fp16 - fp32| of generated pixels (0-255) on the clip's first face crops."""
    import numpy as np
    import torch

    from pipeline.engines.wav2lip.engine import model_input, wav2lip_box
    from pipeline.engines.wav2lip.model import load_checkpoint
    from pipeline.face import FaceTracker
    from pipeline.media.decode import open_video, read_frames

    info = open_video(video)
    frames = next(read_frames(info, 16))
    crops = []
    for frame, box in zip(frames, FaceTracker().update(frames), strict=True):
        if box is not None:
            x1, y1, x2, y2 = (round(v) for v in wav2lip_box(box, [0, 10, 0, 0], info.width, info.height))
            crops.append(frame[y1:y2, x1:x2])
    windows = [np.random.default_rng(i).uniform(-4, 0, (80, 16)).astype(np.float32) for i in range(len(crops))]
    faces, mels = (torch.from_numpy(a).to(device) for a in model_input(crops, windows))
    model = load_checkpoint(checkpoint).to(device)
    with torch.inference_mode():
        full = model(mels, faces).float()
        half = model.half()(mels.half(), faces.half()).float()
    diff = (full - half).abs() * 255
    return float(diff.mean()), float(diff.max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", default="480x480", help="square: the test face is a square crop")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--memory", action="store_true", help="peak RSS at 1x and 3x the length (child processes)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="bench-w2l-") as tmp:
        folder = Path(tmp)
        checkpoint, audio, video = make_inputs(folder, args.seconds, (width, height), args.fps)
        if args.child:
            print(json.dumps(run_engine(checkpoint, audio, video, folder / "out.mp4", args.device)))
            return 0
        floor = ffmpeg_floor(video, audio, folder / "floor.mp4")
        run = run_engine(checkpoint, audio, video, folder / "out.mp4", args.device)
        frames, timings = run["frames"], run["timings"]
        print(f"clip: {args.seconds:g} s, {width}x{height} @ {args.fps:g} fps, {frames} frames, "
              f"{run['faces']} with a face; device {run['device']}")
        print(f"baseline ({BASELINE}): {floor:.2f} s")
        print(f"wav2lip engine: {run['wall']:.2f} s (+ {run['load']:.2f} s checkpoint load, once per worker)")
        print(f"ratio engine / baseline: {run['wall'] / floor:.2f}")
        print(f"real-time factor: {args.seconds / run['wall']:.2f}x")
        for stage, seconds in timings.items():
            print(f"  {stage:7s} {seconds:7.2f} s  {frames / seconds if seconds else 0:8.1f} frames/s")
        print(f"peak RSS: {run['peak_rss_mb']:.0f} MB")
        if run["device"].startswith("cuda"):
            mean, worst = fp16_check(checkpoint, video, run["device"])
            print(f"fp16 vs fp32 on the same crops: mean |diff| {mean:.3f}, max {worst:.2f} (0-255 pixel levels)")
    if args.memory:
        peaks = []
        for seconds in (args.seconds, 3 * args.seconds):
            done = subprocess.run([sys.executable, __file__, "--child", "1", "--device", args.device, "--seconds",
                                   str(seconds), "--size", args.size, "--fps", str(args.fps)],
                                  capture_output=True, text=True, check=True)
            peaks.append(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])
            print(f"peak RSS for {seconds:g} s: {peaks[-1]:.0f} MB")
        print(f"memory ratio 3x length / 1x length: {peaks[1] / peaks[0]:.2f} (streaming: close to 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
