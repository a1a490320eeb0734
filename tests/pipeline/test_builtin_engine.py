"""The builtin engine end to end on real media: durations, untouched pixels, no-face frames, bad input, variety."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines import EngineError
from pipeline.face import FaceDetector, FaceTracker
from pipeline.lips import LipTracker, LowerFace
from pipeline.media import audio as audiomod
from pipeline.media import decode as videomod
from tests import media
from tests.lipsync_support import decode, plain_reencode, psnr, render, stream_facts, talking


def _cut(speech: Path, dst: Path, seconds: float, *extra: str) -> Path:
    return media.convert(speech, dst, "-t", str(seconds), *extra)


def _assert_lasts_as_long_as(output: Path, sound: Path, fps: float) -> dict:
    facts = stream_facts(output)
    audio_seconds = audiomod.load_audio(sound).duration
    video_seconds = int(facts["video"]["nb_read_frames"]) / fps
    assert abs(video_seconds - audio_seconds) <= 1.0 / fps + 1e-6
    assert abs(facts["duration"] - audio_seconds) <= 1.0 / fps + 1e-6
    assert facts["video"]["codec_name"] == "h264" and facts["video"]["pix_fmt"] == "yuv420p"
    assert facts["audio"]["codec_name"] == "aac"
    return facts


def test_longer_audio_plays_the_video_back_and_forth(media_dir: Path, face_mp4: Path, speech_wav: Path) -> None:
    output, result = talking(media_dir, face_mp4, speech_wav)
    _assert_lasts_as_long_as(output, speech_wav, 25.0)
    assert result.details["source_frames"] == 75 and result.frames > 2 * 75
    assert result.details["face_frames"] == 75 and result.details["frames_changed"] > result.frames / 2
    assert result.details["lip_frames"] == 75 and result.details["frames_without_lips"] == 0
    for stage in ("audio", "motion", "decode", "faces", "warp", "encode"):
        assert stage in result.timings
    # Output frame 75 + k shows source frame 73 - k (the reverse pass); compare away from the mouth.
    frames, source = decode(output), decode(face_mp4)
    for k in (0, 10, 40):
        top = slice(0, 120)  # above the mouth
        shown = frames[75 + k, top]
        assert psnr(shown, source[73 - k, top]) > 35 > psnr(shown, source[min(74, 73 - k + 6), top])


def test_shorter_audio_cuts_the_video_and_pixels_outside_the_mouth_stay(tmp_path: Path, face_mp4: Path,
                                                                         speech_wav: Path) -> None:
    sound = _cut(speech_wav, tmp_path / "two-seconds.wav", 2.0)
    output = tmp_path / "out.mp4"
    render(sound, face_mp4, output)
    _assert_lasts_as_long_as(output, sound, 25.0)
    reference = plain_reencode(face_mp4, sound, tmp_path / "plain.mp4")
    ours, plain = decode(output), decode(reference)
    count = min(len(ours), len(plain))
    assert count >= 49
    # The mouth region of each frame, from tracking the unprocessed input.
    source = decode(face_mp4)[:count]
    faces = FaceTracker().update(source)
    lips = LipTracker().update([LowerFace.from_rgb(frame, face) for frame, face in zip(source, faces, strict=True)],
                               faces)
    outside = np.ones(ours[:count].shape[:3], dtype=bool)
    for index, mouth in enumerate(lips):
        assert mouth is not None
        x0, y0, x1, y1 = mouth.region().bounds(ours.shape[2], ours.shape[1])
        outside[index, y0:y1, x0:x1] = False
    assert psnr(ours[:count][outside], plain[:count][outside]) >= 38.0
    inside_change = np.abs(ours[:count][~outside].astype(int) - plain[:count][~outside]).mean()
    assert inside_change > 2.0  # and the mouth did move


def test_frames_without_a_face_pass_through(tmp_path: Path, speech_wav: Path) -> None:
    photo = media.astronaut()
    import cv2

    scenery = cv2.resize(photo[330:512, 0:182], (320, 320), interpolation=cv2.INTER_AREA)  # the suit: no face
    assert FaceDetector().detect(scenery) == []
    faces = list(media.face_frames(3.0, 25.0, (320, 320)))
    frames = faces[:25] + [scenery] * 25 + faces[50:]
    clip = media.write_video(tmp_path / "gap.mp4", frames, 25.0, (320, 320))
    sound = _cut(speech_wav, tmp_path / "three-seconds.wav", 3.0)
    output = tmp_path / "out.mp4"
    result = render(sound, clip, output)
    assert result.details["face_frames"] == 50
    ours, plain = decode(output), decode(plain_reencode(clip, sound, tmp_path / "plain.mp4"))
    source = decode(clip)
    for index in range(26, 49):  # the encoder may spread a change over a frame at the cuts
        assert psnr(ours[index], plain[index]) >= 38.0, index
        assert psnr(ours[index], source[index]) >= psnr(plain[index], source[index]) - 1.5, index
    changed = [np.abs(ours[i].astype(int) - plain[i]).max() > 40 for i in range(75)]
    assert any(changed[:25]) and any(changed[50:]) and not any(changed[26:49])


def test_a_video_without_any_face_fails_in_plain_words(tmp_path: Path, speech_wav: Path) -> None:
    clip = media.no_face_clip(tmp_path / "pattern.mp4", seconds=1.0)
    output = tmp_path / "out.mp4"
    with pytest.raises(EngineError, match=r"no face was found in the video 'pattern.mp4'"):
        render(_cut(speech_wav, tmp_path / "one-second.wav", 1.0), clip, output)
    assert not output.exists()


def test_bad_inputs_fail_in_plain_words(tmp_path: Path, face_mp4: Path, speech_wav: Path) -> None:
    output = tmp_path / "out.mp4"
    with pytest.raises(EngineError, match=r"'speech.wav' has no picture"):
        render(speech_wav, speech_wav, output)
    quiet = media.silence(tmp_path / "quiet.wav", seconds=2.0)
    with pytest.raises(EngineError, match=r"'quiet.wav' is silent"):
        render(quiet, face_mp4, output)
    junk = tmp_path / "voice.mp3"
    junk.write_bytes(b"\x00\x01 not really an mp3 " * 100)
    with pytest.raises(EngineError, match=r"'voice.mp3' is not a readable media file"):
        render(junk, face_mp4, output)
    assert not output.exists()


def _upright_after(rotation: int, frame: np.ndarray) -> np.ndarray:
    """The frame to store so that a player turning it by *rotation* (clockwise) shows *frame*."""
    return np.rot90(frame, k=rotation // 90).copy()


def _rotation_written_by_ffmpeg(tmp_path: Path) -> int:
    probe_clip = media.color_clip(tmp_path / "probe.mp4", seconds=0.2)
    tagged = tmp_path / "probe-rotated.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(probe_clip), "-c", "copy", "-metadata:s:v:0",
                    "rotate=90", str(tagged)], check=True)
    return videomod.open_video(tagged).rotation


def _variant(kind: str, folder: Path) -> Path:
    """A 1.2 s face clip with one awkward property."""
    seconds, size = 1.2, (192, 144)
    if kind == "rotated":
        rotation = _rotation_written_by_ffmpeg(folder)
        stored = [_upright_after(rotation, frame) for frame in media.face_frames(seconds, 25.0, size)]
        plain = media.write_video(folder / "stored.mp4", stored, 25.0, (size[1], size[0]))
        clip = folder / "phone.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(plain), "-c", "copy", "-metadata:s:v:0",
                        "rotate=90", str(clip)], check=True)
        return clip
    if kind == "odd-size":
        return media.face_clip(folder / "odd.mp4", seconds, size=(191, 143), codec_args=(
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p"))
    if kind == "10-bit":
        return media.face_clip(folder / "deep.mp4", seconds, size=size, codec_args=(
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le"))
    if kind == "vfr":
        steady = media.face_clip(folder / "steady.mp4", seconds, fps=30.0, size=size)
        clip = folder / "vfr.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(steady), "-vf",
                        r"select='not(mod(n\,3))+not(mod(n\,7))'", "-fps_mode", "vfr", "-c:v", "libx264",
                        "-preset", "ultrafast", str(clip)], check=True)
        return clip
    return media.face_clip(folder / "plain.mp4", seconds, size=size)


@pytest.mark.parametrize(
    ("video_kind", "audio_name", "audio_args", "expect_size", "expect_fps"),
    [
        ("rotated", "a.wav", (), (192, 144), Fraction(25)),  # stored 144x192 + rotation: shown 192x144
        ("odd-size", "a.wav", (), (190, 142), Fraction(25)),
        ("10-bit", "a.wav", (), (192, 144), Fraction(25)),
        ("vfr", "a.wav", (), (192, 144), Fraction(30)),
        ("plain", "a.mp3", ("-c:a", "libmp3lame"), (192, 144), Fraction(25)),
        ("plain", "a.m4a", ("-c:a", "aac"), (192, 144), Fraction(25)),
        ("plain", "a.ogg", ("-c:a", "libvorbis"), (192, 144), Fraction(25)),
        ("plain", "stereo-44k.wav", ("-ac", "2", "-ar", "44100"), (192, 144), Fraction(25)),
    ],
)
def test_awkward_inputs_render(tmp_path: Path, speech_wav: Path, video_kind: str, audio_name: str,
                               audio_args: tuple[str, ...], expect_size: tuple[int, int], expect_fps: Fraction) -> None:
    clip = _variant(video_kind, tmp_path)
    if video_kind == "rotated":
        stored = stream_facts(clip)["video"]
        assert (stored["width"], stored["height"]) == (144, 192)
    sound = _cut(speech_wav, tmp_path / audio_name, 1.6, *audio_args)  # longer than the clip: back and forth
    output = tmp_path / "out.mp4"
    result = render(sound, clip, output)
    facts = _assert_lasts_as_long_as(output, sound, float(expect_fps))
    assert (facts["video"]["width"], facts["video"]["height"]) == expect_size
    assert Fraction(facts["video"]["avg_frame_rate"]) == expect_fps
    assert result.details["face_frames"] > 0 and result.details["frames_changed"] > 0


def test_out_of_memory_halves_the_batch_and_goes_on(tmp_path: Path, face_mp4: Path, speech_wav: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the warp raises torch's CUDA out-of-memory error for pieces above 8 frames."""
    import torch

    from pipeline.engines.builtin.warp import MouthWarper

    real_apply = MouthWarper.apply
    sizes: list[int] = []

    def apply_with_small_memory(self, frames, mouths, opening, width, **options):  # type: ignore[no-untyped-def]
        sizes.append(len(frames))
        if len(frames) > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_apply(self, frames, mouths, opening, width, **options)

    monkeypatch.setattr(MouthWarper, "apply", apply_with_small_memory)
    monkeypatch.setattr(MouthWarper, "out_of_memory", torch.cuda.OutOfMemoryError)  # the CPU's warp has none
    sound = _cut(speech_wav, tmp_path / "two-seconds.wav", 2.0)
    result = render(sound, face_mp4, tmp_path / "out.mp4")
    assert result.details["warp_batch"] == 8
    assert sizes[:3] == [32, 16, 8] and max(sizes[3:]) <= 8
    assert result.details["frames_changed"] > 0
    _assert_lasts_as_long_as(tmp_path / "out.mp4", sound, 25.0)


def test_a_still_photo_works_as_the_video(tmp_path: Path, speech_wav: Path) -> None:
    """A PNG of a face is a one-frame video: it is held for the whole audio, mouth moving."""
    import cv2

    photo = tmp_path / "portrait.png"
    cv2.imwrite(str(photo), cv2.cvtColor(media.astronaut()[0:320, 80:400], cv2.COLOR_RGB2BGR))
    sound = _cut(speech_wav, tmp_path / "two-seconds.wav", 2.0)
    output = tmp_path / "out.mp4"
    result = render(sound, photo, output)
    _assert_lasts_as_long_as(output, sound, 25.0)
    assert result.details["source_frames"] == 1 and result.details["frames_changed"] > 10


def test_a_cut_short_video_fails_instead_of_playing_back_and_forth(tmp_path: Path, speech_wav: Path) -> None:
    """Issue 13.4: the first 45% of a faststart MP4 (container: 6 s) under 5 s of speech is no 'done' output."""
    clip = media.face_clip(tmp_path / "face.mp4", seconds=6.0)
    whole = media.faststart(clip, tmp_path / "whole.mp4", "-c", "copy")
    cut = media.truncated(whole, tmp_path / "notes.mp4")
    output = tmp_path / "out.mp4"
    with pytest.raises(EngineError, match=r"the video notes\.mp4 is cut short: only \d\.\d s of 6\.0 s"):
        render(_cut(speech_wav, tmp_path / "five.wav", 5.0), cut, output)


@pytest.mark.parametrize(("options", "words"), [
    ({"detect_every": float("inf")}, "detect_every must be a whole number from 1 to 100, not inf"),
    ({"detect_every": 2.5}, "detect_every must be a whole number from 1 to 100, not 2.5"),
    ({"detect_every": 0}, "detect_every must be a whole number from 1 to 100, not 0"),
    ({"detect_every": 10 ** 400}, "detect_every must be a whole number from 1 to 100, not 1000"),
    ({"mouth_gain": "x"}, "mouth_gain must be a number from 0 to 4, not 'x'"),
    ({"mouth_gain": float("nan")}, "mouth_gain must be a number from 0 to 4, not nan"),
    ({"mouth_gain": True}, "mouth_gain must be a number from 0 to 4, not True"),
    ({"mouth_gian": 1.2}, "'mouth_gian' is not an option of the builtin engine"),
])
def test_bad_job_options_fail_in_plain_words(tmp_path: Path, face_mp4: Path, short_wav: Path, options: dict,
                                             words: str) -> None:
    """Issue 13.6: each engine declares its options; a bad value is the drop's plain error, not an internal one."""
    from daemon.config import DEFAULTS
    from pipeline.engines import JobSpec, get_engine

    engine = get_engine("builtin", DEFAULTS["pipeline"])
    spec = JobSpec(audio=short_wav, video=face_mp4, output=tmp_path / "out.mp4", workdir=tmp_path, options=options)
    with pytest.raises(EngineError, match="the job's options cannot be used") as caught:
        engine.render(spec)
    assert words in str(caught.value)
    assert "Fix `options:` in the manifest" in str(caught.value)
    assert engine.check_options({"detect_every": 3, "mouth_gain": 1}) == {"detect_every": 3, "mouth_gain": 1}


# Peak memory of a child that imports torch and the pipeline and fails a job before decoding anything;
# decoding 3 hours of audio and its features took 3.9 GB.
EARLY_FAILURE_MAX_RSS_MB = 1000


def test_a_three_hour_audio_is_refused_before_decoding(tmp_path: Path, face_mp4: Path) -> None:
    """Issue 13.7: a 3-hour silent m4a drove the worker to 3.9 GB; pipeline.max_seconds (default 30 minutes)
    refuses it from the probe. The render runs in a child so that its peak memory can be measured."""
    sound = media.long_silence(tmp_path / "talk.m4a")
    script = ("import sys\nfrom pathlib import Path\nfrom pipeline.errors import EngineError\n"
              "from tests.lipsync_support import own_peak_mb, render\n"
              "try:\n    render(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))\n"
              "except EngineError as exc:\n    print(exc)\n"
              "print(int(own_peak_mb()))\n")
    done = subprocess.run([sys.executable, "-c", script, str(sound), str(face_mp4), str(tmp_path / "out.mp4")],
                          capture_output=True, text=True, timeout=600, check=True)
    message, peak_mb = done.stdout.strip().splitlines()
    assert message == ("the audio talk.m4a lasts 3:00:00; this server renders at most 30:00 of sound in one job "
                       "(pipeline.max_seconds) - split it into shorter parts and drop them one by one")
    assert int(peak_mb) < EARLY_FAILURE_MAX_RSS_MB


def test_a_picture_larger_than_max_pixels_is_refused(tmp_path: Path, face_mp4: Path, short_wav: Path) -> None:
    """Issue 13.7: pipeline.max_pixels is checked from the probe before a frame is decoded."""
    from daemon.config import DEFAULTS
    from pipeline.engines import JobSpec, get_engine

    engine = get_engine("builtin", {**DEFAULTS["pipeline"], "max_pixels": 320 * 240})
    spec = JobSpec(audio=short_wav, video=face_mp4, output=tmp_path / "out.mp4", workdir=tmp_path)
    with pytest.raises(EngineError, match=r"the video face\.mp4 is 320x320 pixels; this server takes at most 0\.1 "
                                          r"megapixels \(pipeline\.max_pixels; .*scale it down"):
        engine.render(spec)
    assert not spec.output.exists()


def test_tracking_and_warping_overlap_in_their_own_threads(tmp_path: Path, face_mp4: Path, speech_wav: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The stages are a pipeline of threads: the faces of the next batch are tracked while this one is warped.
    The real tracker and warper run; their calls are only timed."""
    import threading
    import time

    from pipeline.engines.builtin.warp import MouthWarper

    calls: list[tuple[str, str, float, float]] = []  # stage, thread, start, end

    def timed(stage: str, real):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                calls.append((stage, threading.current_thread().name, start, time.perf_counter()))
        return call

    monkeypatch.setattr(FaceTracker, "update", timed("track", FaceTracker.update))
    monkeypatch.setattr(MouthWarper, "apply", timed("warp", MouthWarper.apply))
    result = render(speech_wav, face_mp4, tmp_path / "out.mp4")
    assert result.details["frames_changed"] > 0
    tracks = [c for c in calls if c[0] == "track"]
    warps = [c for c in calls if c[0] == "warp"]
    assert len(tracks) >= 3 and len(warps) >= 3
    assert {c[1] for c in tracks}.isdisjoint({c[1] for c in warps}), "tracking and warping share a thread"
    overlaps = sum(1 for _, _, s1, e1 in tracks for _, _, s2, e2 in warps if s1 < e2 and s2 < e1)
    assert overlaps >= 1, "no batch was tracked while another was warped"
