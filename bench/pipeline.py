"""The builtin engine: wall time against the ffmpeg floor, frames/s per stage, peak memory vs video length.

Baseline ("ffmpeg floor"): ffmpeg alone decoding the same clip and re-encoding it with the same audio
and the same encoder settings (libx264 crf/preset from the config defaults, yuv420p, AAC 192k,
+faststart), in the same run. Target on the CPU: engine / floor <= 2.0. Real time = video seconds /
engine seconds; target on a GPU at 1080p: >= 5x.

The engine is timed in a warm process (as in a worker, which imports torch/librosa once): the time of
engine.render() for one job. Stage figures: the engine's own per-stage seconds (time its main thread
spent in each stage; decode and encode run alongside in ffmpeg processes and threads, so their figure
is the time the main thread waited for them), and each stage alone on the same frames.

Memory: the engine renders a 1-minute and a 3-minute input (the 10 s clip looped with ffmpeg
-stream_loop, stream copy) in fresh child processes; each reports its own peak RSS (VmHWM) and the
largest of its ffmpeg children's. Target: <= 2 GB for 3 minutes at 1080p, within 10% of the 1-minute peak.

    .venv/bin/python bench/pipeline.py                                  # CPU, 720p, 10 s + memory at 1080p
    .venv/bin/python bench/pipeline.py --device cuda --size 1080        # on a GPU machine
    .venv/bin/python bench/pipeline.py --no-memory                      # skip the 1- and 3-minute renders
    .venv/bin/python bench/pipeline.py --no-memory --pingpong 4         # also a 4 s avatar under the speech

--pingpong S: a clip of S seconds under the longer speech plays back and forth; its reverse passes come from
a scratch cache of raw frames (pipeline.media.pingpong.RAW_CACHE_BYTES). Baseline, in the same run: the same
render with that cache as JPEG (as before, and still beyond the limit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "lipsyncd" / "numba"))  # as dev.sh

from daemon.config import DEFAULTS  # noqa: E402
from tests import media  # noqa: E402

BASELINE = "ffmpeg decode + re-encode (libx264 crf/preset of the config, yuv420p, AAC 192k, faststart)"
OUT = ROOT / "bench" / "out" / "pipeline"
SIZES = {360: (640, 360), 480: (854, 480), 720: (1280, 720), 1080: (1920, 1080)}
MEMORY_MINUTES = (1, 3)


def speech_of(seconds: float, folder: Path) -> Path:
    """espeak-ng speech, looped to *seconds*."""
    sentence = media.speech(folder / "sentence.wav")
    out = folder / f"speech-{seconds:g}s.wav"
    if not out.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(sentence), "-t", str(seconds),
                        str(out)], check=True)
    return out


def wide_face_frames(seconds: float, size: tuple[int, int], fps: float = 25.0):
    """The astronaut photo seen through a 16:9 window (undistorted), panned slowly."""
    import cv2
    import numpy as np

    photo = media.astronaut()
    window_w, window_h = 400, 225
    count = round(seconds * fps)
    for index in range(count):
        t = index / fps
        x0 = int(round(225 - window_w / 2 + 30 * np.sin(2 * np.pi * t / 6)))
        y0 = int(round(120 - window_h / 2 + 10 * np.sin(2 * np.pi * t / 4)))
        x0, y0 = min(max(0, x0), 512 - window_w), min(max(0, y0), 512 - window_h)
        yield cv2.resize(photo[y0:y0 + window_h, x0:x0 + window_w], size, interpolation=cv2.INTER_LINEAR)


def face_clip(size: int, seconds: float, folder: Path) -> Path:
    out = folder / f"face-{size}p-{seconds:g}s.mp4"
    if not out.exists():
        media.write_video(out, wide_face_frames(seconds, SIZES[size]), 25.0, SIZES[size], codec_args=(
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p"))
    return out


def looped(clip: Path, seconds: float, folder: Path) -> Path:
    out = folder / f"{clip.stem}-x{seconds:g}s.mp4"
    if not out.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(clip), "-t", str(seconds),
                        "-c", "copy", str(out)], check=True)
    return out


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children (the ffmpeg processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def ffmpeg_floor(video: Path, audio: Path, out: Path) -> dict:
    pipeline = DEFAULTS["pipeline"]
    cpu, started = cpu_seconds(), time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-i", str(audio), "-map", "0:v", "-map", "1:a",
                    "-c:v", "libx264", "-crf", str(pipeline["crf"]), "-preset", pipeline["preset"],
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "192k", "-movflags", "+faststart", "-shortest",
                    str(out)], check=True)
    return {"wall": time.perf_counter() - started, "cpu": cpu_seconds() - cpu}


def run_engine(audio: Path, video: Path, out: Path, device: str) -> dict:
    from pipeline.engines import JobSpec, get_engine
    from pipeline.media.probe import forget_probes

    engine = get_engine("builtin", DEFAULTS["pipeline"])
    engine.check()
    forget_probes()  # each render probes its inputs, as a job's first probe (in a worker: its verify stage) does
    cpu, started = cpu_seconds(), time.perf_counter()
    result = engine.render(JobSpec(audio=audio, video=video, output=out, device=device, workdir=out.parent))
    wall = time.perf_counter() - started
    return {"wall": wall, "cpu": cpu_seconds() - cpu, "frames": result.frames, "fps": result.fps,
            "timings": result.timings, "details": result.details}


def stages_alone(video: Path, audio: Path, device: str, out: Path) -> dict[str, float]:
    """Frames/s of each stage on its own, as the engine runs it (same pixels, same settings), on the clip's
    frames decoded once into memory (short clips only)."""
    from pipeline.engines.builtin import motion
    from pipeline.engines.builtin.lipsync import PIXELS
    from pipeline.engines.builtin.warp import MouthWarper
    from pipeline.face import FaceTracker
    from pipeline.lips import LipTracker, LowerFace
    from pipeline.media import audio as audiomod
    from pipeline.media import decode as videomod
    from pipeline.media import encode

    pipeline = DEFAULTS["pipeline"]
    batch = pipeline["batch_frames"]
    info = videomod.open_video(video)
    size = videomod.frame_size(info, PIXELS)
    started = time.perf_counter()
    batches = list(videomod.read_frames(info, batch, pixels=PIXELS))
    decode = time.perf_counter() - started
    frames = sum(len(b) for b in batches)

    started = time.perf_counter()
    sound = audiomod.load_audio(audio)
    features = audiomod.frame_features(sound, float(info.fps), frames)
    audio_seconds = time.perf_counter() - started
    started = time.perf_counter()
    track = motion.mouth_motion(features)
    motion_seconds = time.perf_counter() - started

    tracker = FaceTracker(pipeline["builtin"]["detect_every"])
    started = time.perf_counter()
    faces = [tracker.update(videomod.yuv_planes(b, *size)[0]) for b in batches]
    track_seconds = time.perf_counter() - started

    lip_tracker = LipTracker(pipeline["builtin"]["detect_every"])
    started = time.perf_counter()
    all_lips = []
    for b, batch_faces in zip(batches, faces, strict=True):
        luma, u, v = videomod.yuv_planes(b, *size)
        pictures = [LowerFace.from_yuv(luma[k], u[k], v[k], face) if face is not None else None
                    for k, face in enumerate(batch_faces)]
        all_lips.append(lip_tracker.update(pictures, batch_faces))
    lips_seconds = time.perf_counter() - started

    warper = MouthWarper(device, pixels=PIXELS)
    copies = [b.copy() for b in batches]
    started = time.perf_counter()
    index = 0
    for frames_batch, mouths in zip(copies, all_lips, strict=True):
        span = slice(index, index + len(frames_batch))
        warper.apply(frames_batch, mouths, track.opening[span], track.width[span], size=size)
        index += len(frames_batch)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    warp_seconds = time.perf_counter() - started

    started = time.perf_counter()
    with encode.VideoWriter(out, info, audio, crf=pipeline["crf"], preset=pipeline["preset"],
                              pixels=PIXELS) as writer:
        for frames_batch in copies:
            writer.write(frames_batch)
    encode = time.perf_counter() - started
    del copies, batches
    return {"decode (reader)": frames / decode, "audio features": frames / audio_seconds,
            "mouth motion": frames / motion_seconds, "face tracking": frames / track_seconds,
            "lip locating": frames / lips_seconds,
            "mouth warp": frames / warp_seconds, "encode (writer)": frames / encode}


def pingpong_cache(size: int, avatar_seconds: float, sound: Path, device: str) -> dict:
    """A short avatar under longer speech: raw-frame cache against the JPEG cache, alternating, best of 3."""
    from pipeline.media import pingpong

    clip = face_clip(size, avatar_seconds, OUT)
    limit, results = pingpong.RAW_CACHE_BYTES, {"raw": [], "jpeg": []}
    try:
        for _ in range(3):
            for kind in results:
                pingpong.RAW_CACHE_BYTES = limit if kind == "raw" else 0
                results[kind].append(run_engine(sound, clip, OUT / "pingpong.mp4", device))
    finally:
        pingpong.RAW_CACHE_BYTES = limit
    best = {kind: min(runs, key=lambda r: r["wall"]) for kind, runs in results.items()}
    cpu = {kind: min(r["cpu"] for r in runs) for kind, runs in results.items()}
    print(f"back and forth: a {avatar_seconds:g} s {size}p clip under {best['raw']['frames']} frames of speech "
          "(reverse passes from the scratch cache)")
    for kind in results:
        print(f"  {kind} cache   {best[kind]['wall']:7.2f} s wall {cpu[kind]:7.2f} s CPU   the tracking thread "
              f"waited {best[kind]['timings'].get('decode', 0.0):.2f} s for frames")
    print(f"  ratio raw / JPEG: {best['raw']['wall'] / best['jpeg']['wall']:.2f} wall, "
          f"{cpu['raw'] / cpu['jpeg']:.2f} CPU")
    return {kind: {"wall": best[kind]["wall"], "cpu": cpu[kind]} for kind in results}


def memory_child(video: str, audio: str, out: str, device: str) -> None:
    """Run in a fresh process: render, then print peak RSS of this process and of its largest ffmpeg child."""
    result = run_engine(Path(audio), Path(video), Path(out), device)
    from tests.lipsync_support import own_peak_mb

    own = own_peak_mb()  # not ru_maxrss: that one keeps the bench parent's peak across fork and exec
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # an upper bound, likewise
    print(json.dumps({"peak_rss_mb": own, "largest_ffmpeg_child_mb": children, "wall": result["wall"],
                      "frames": result["frames"]}))


def memory_run(video: Path, audio: Path, out: Path, device: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--memory-child", str(video), str(audio), str(out), device],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--size", type=int, default=720, choices=sorted(SIZES), help="clip height (default 720)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    parser.add_argument("--memory-size", type=int, default=1080, choices=sorted(SIZES),
                        help="height of the 1- and 3-minute memory inputs (default 1080)")
    parser.add_argument("--no-memory", action="store_true", help="skip the 1- and 3-minute memory renders")
    parser.add_argument("--pingpong", type=float, metavar="S",
                        help="also render an S-second clip under the speech: raw vs JPEG reverse-pass cache")
    parser.add_argument("--memory-child", nargs=4, metavar=("VIDEO", "AUDIO", "OUT", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0

    from pipeline.devices import resolve

    device = resolve(args.device)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"builtin engine bench: device {device}, {args.size}p, {args.seconds:g} s clip at 25 fps")
    clip = face_clip(args.size, args.seconds, OUT)
    sound = speech_of(args.seconds, OUT)

    run_engine(sound, clip, OUT / "warmup.mp4", device)  # imports, numba cache, CUDA context
    # Alternate the two, three times each, and keep each one's best: both see the same machine load.
    floors, engines = [], []
    for _ in range(3):
        floors.append(ffmpeg_floor(clip, sound, OUT / "floor.mp4"))
        engines.append(run_engine(sound, clip, OUT / "engine.mp4", device))
    floor = min(floors, key=lambda r: r["wall"])
    engine = min(engines, key=lambda r: r["wall"])
    ratio = engine["wall"] / floor["wall"]
    cpu_ratio = min(r["cpu"] for r in engines) / min(r["cpu"] for r in floors)
    frames = engine["frames"]
    realtime = frames / engine["fps"] / engine["wall"]
    print(f"baseline: {BASELINE}")
    print(f"  ffmpeg floor      {floor['wall']:7.2f} s wall {floor['cpu']:7.2f} s CPU  "
          f"{frames / floor['wall']:7.1f} frames/s")
    print(f"  builtin engine    {engine['wall']:7.2f} s wall {engine['cpu']:7.2f} s CPU  "
          f"{frames / engine['wall']:7.1f} frames/s   {realtime:.2f}x real time")
    print(f"  ratio engine / floor: {ratio:.2f} wall (target <= 2.0 on the CPU), {cpu_ratio:.2f} CPU time")
    print("engine's threads, per stage (decode: the tracking thread waiting for the decoder; wait: the main "
          "thread waiting for the tracking thread; encode: waiting for the writer):")
    for stage, seconds in engine["timings"].items():
        rate = f"{frames / seconds:9.1f} frames/s" if seconds > 0 and stage not in ("probe", "imports") else ""
        print(f"  {stage:<8} {seconds:7.2f} s {rate}")
    from pipeline.engines.builtin.lipsync import _cv2_threads

    with _cv2_threads():  # the engine's own thread settings
        alone = stages_alone(clip, sound, device, OUT / "stages.mp4")
    print("each stage alone on the same frames:")
    for stage, rate in alone.items():
        print(f"  {stage:<16} {rate:9.1f} frames/s")
    summary = {"device": device, "size": args.size, "seconds": args.seconds, "frames": frames, "floor": floor,
               "engine": {"wall": engine["wall"], "cpu": engine["cpu"]}, "ratio": ratio, "cpu_ratio": cpu_ratio,
               "realtime": realtime, "timings": engine["timings"], "alone_fps": alone}

    if args.pingpong:
        summary["pingpong"] = pingpong_cache(args.size, args.pingpong, sound, device)

    if not args.no_memory:
        print(f"peak memory, {args.memory_size}p, in fresh processes (this may take several minutes on a CPU):")
        base = face_clip(args.memory_size, 10.0, OUT)
        peaks = {}
        for minutes in MEMORY_MINUTES:
            seconds = 60.0 * minutes
            video = looped(base, seconds, OUT)
            audio = speech_of(seconds - 0.5, OUT)  # a little shorter: cut, not back and forth
            peak = memory_run(video, audio, OUT / f"memory-{minutes}min.mp4", device)
            peaks[minutes] = peak
            print(f"  {minutes} min: engine process {peak['peak_rss_mb']:7.0f} MB peak RSS, largest ffmpeg child "
                  f"{peak['largest_ffmpeg_child_mb']:5.0f} MB; {peak['frames']} frames in {peak['wall']:.1f} s "
                  f"({peak['frames'] / peak['wall']:.1f} frames/s)")
        short, long = peaks[MEMORY_MINUTES[0]]["peak_rss_mb"], peaks[MEMORY_MINUTES[-1]]["peak_rss_mb"]
        print(f"  3 min vs 1 min: {100 * (long - short) / short:+.1f}%   (targets: <= 2048 MB, within 10%)")
        summary["memory"] = peaks
    (OUT / f"summary-{device.replace(':', '')}-{args.size}p.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
