"""pipeline.media.decode: decode any input to constant-rate RGB batches, cut or ping-pong to a length, encode."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import EngineError
from pipeline.media import decode as video
from pipeline.media import encode, pingpong, threads
from pipeline.media.probe import probe
from tests import media


def _numbered_frames(count: int, size: tuple[int, int] = (64, 48)):
    """Frames that say their own index: red = 16 * (i % 16) + 8, green = 16 * (i // 16) + 8."""
    width, height = size
    for index in range(count):
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        frame[..., 0] = (index % 16) * 16 + 8
        frame[..., 1] = (index // 16) * 16 + 8
        yield frame


def _index_of(frames: np.ndarray) -> list[int]:
    pixel = frames[:, frames.shape[1] // 2, frames.shape[2] // 2].astype(int)
    return list(pixel[:, 0] // 16 + 16 * (pixel[:, 1] // 16))


def test_ping_pong_order() -> None:
    assert [pingpong.source_index(j, 4) for j in range(12)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert [pingpong.source_index(j, 1) for j in range(3)] == [0, 0, 0]
    assert [pingpong.source_index(j, 2) for j in range(5)] == [0, 1, 0, 1, 0]


@pytest.mark.parametrize("cache", ["raw", "jpeg"])
@pytest.mark.parametrize("n_source", [1, 3, 40, 130])  # 130: longer than the all-in-cache limit
def test_frames_for_audio_cuts_or_plays_back_and_forth(tmp_path: Path, n_source: int, cache: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The reverse passes come from the scratch cache: raw frames when they are few, JPEG when they would take
    more than pipeline.media.pingpong.RAW_CACHE_BYTES."""
    if cache == "jpeg":
        monkeypatch.setattr(pingpong, "RAW_CACHE_BYTES", 0)
    clip = media.write_video(tmp_path / "numbered.mp4", _numbered_frames(n_source), 25, (64, 48))
    info = video.open_video(clip)
    for n_out in sorted({1, max(1, n_source // 2), n_source, n_source + 1, n_source + 7, 3 * n_source + 5}):
        sources: list[int] = []
        shown: list[int] = []
        kinds: set[str] = set()  # the caches seen while it played
        for batch in pingpong.frames_for_audio(info, n_out, 16, tmp_path / "scratch"):
            assert batch.first == len(sources) and len(batch) <= 16
            assert batch.frames.flags.writeable
            sources += batch.sources.tolist()
            shown += _index_of(batch.frames)
            if (tmp_path / "scratch").exists():
                kinds |= {p.suffix for p in (tmp_path / "scratch").iterdir() if p.name.endswith("cache")}
        expected = [pingpong.source_index(j, n_source) for j in range(n_out)]
        assert sources == expected, n_out
        assert shown == expected, n_out  # the pixels really are those frames
        if n_out > n_source:
            assert kinds == {f".{'raw' if cache == 'raw' else 'jpg'}cache"}, n_out
    assert list((tmp_path / "scratch").iterdir()) == []  # the reverse-play cache is gone


def test_the_reverse_cache_is_jpeg_where_raw_frames_would_crowd_the_scratch_disk(tmp_path: Path) -> None:
    """Raw frames only while they take under a quarter of the scratch disk's free space: on a small one (a 1 MB
    tmpfs; 40 raw frames of 64x48 would take 0.45 MB) the cache is JPEG, and the frames are still right."""
    n_source = 40
    clip = media.write_video(tmp_path / "numbered.mp4", _numbered_frames(n_source), 25, (64, 48))
    info = video.open_video(clip)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(scratch)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        kinds: set[str] = set()
        shown: list[int] = []
        for batch in pingpong.frames_for_audio(info, 3 * n_source, 16, scratch):
            shown += _index_of(batch.frames)
            kinds |= {p.suffix for p in scratch.iterdir()}
        assert kinds == {".jpgcache"}
        assert shown == [pingpong.source_index(j, n_source) for j in range(3 * n_source)]
    finally:
        subprocess.run(["umount", str(scratch)], check=True)


def test_rotation_metadata_is_applied(tmp_path: Path) -> None:
    """A phone video stored sideways with a rotation flag comes out upright, as a player shows it."""
    frame = np.zeros((48, 64, 3), dtype=np.uint8)
    frame[:, :32] = (200, 30, 30)  # left half red
    frame[:, 32:] = (30, 30, 200)  # right half blue
    stored = media.write_video(tmp_path / "stored.mp4", [frame] * 10, 25, (64, 48))
    rotated = tmp_path / "phone.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(stored), "-c", "copy", "-metadata:s:v:0", "rotate=90",
                    str(rotated)], check=True)
    info = video.open_video(rotated)
    assert info.rotation in (90, 270)
    assert (info.width, info.height) == (48, 64)
    decoded = next(video.read_frames(info, 4))
    assert decoded.shape == (4, 64, 48, 3)
    # info.rotation is how far a player turns the picture clockwise; np.rot90 turns counter-clockwise.
    upright = np.rot90(frame, k=-info.rotation // 90)
    assert np.abs(decoded[0].astype(int) - upright).mean() < 8


def test_vfr_input_comes_out_at_a_constant_rate(tmp_path: Path) -> None:
    vfr = tmp_path / "vfr.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=30:duration=2",
                    "-vf", r"select='not(mod(n\,3))+not(mod(n\,7))'", "-fps_mode", "vfr", "-c:v", "libx264",
                    str(vfr)], check=True)
    info = video.open_video(vfr)
    assert info.fps == Fraction(30)
    frames = sum(len(batch) for batch in video.read_frames(info, 16))
    assert abs(frames - 60) <= 2


def test_ten_bit_and_odd_sizes_decode_and_encode(tmp_path: Path, short_wav: Path) -> None:
    deep = tmp_path / "deep.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1",
                    "-vf", "scale=161:121", "-c:v", "libx264", "-pix_fmt", "yuv444p10le", str(deep)], check=True)
    info = video.open_video(deep)
    assert (info.width, info.height, info.pix_fmt) == (161, 121, "yuv444p10le")
    out = tmp_path / "out.mp4"
    with encode.VideoWriter(out, info, short_wav, crf=23, preset="ultrafast") as writer:
        for frames in video.read_frames(info, 8):
            writer.write(frames)
    result = probe(out)
    assert (result.width, result.height, result.pix_fmt) == (160, 120, "yuv420p")
    assert result.video_codec == "h264" and result.audio_codec == "aac"
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # faststart


def test_an_audio_file_is_not_a_video(speech_wav: Path) -> None:
    with pytest.raises(EngineError, match=r"'speech.wav' has no picture \(it is an audio file\)"):
        video.open_video(speech_wav)


def test_writer_failure_is_a_plain_error_and_leaves_no_file(tmp_path: Path, face_mp4: Path) -> None:
    info = video.open_video(face_mp4)
    out = tmp_path / "out.mp4"
    with pytest.raises(EngineError, match="encoding the result 'out.mp4' failed"), \
            encode.VideoWriter(out, info, face_mp4) as writer:  # face_mp4 has no sound to take
        for frames in video.read_frames(info, 8):
            writer.write(frames)
    assert not out.exists()


def test_prefetch_passes_items_and_errors_through() -> None:
    def produce():
        yield 1
        yield 2
        raise EngineError("broken input")

    got = []
    with pytest.raises(EngineError, match="broken input"):
        for item in threads.prefetch(produce()):
            got.append(item)
    assert got == [1, 2]


def test_yuv420p_frames_come_straight_from_the_decoder(tmp_path: Path, speech_wav: Path) -> None:
    """pixels="yuv420p": the decoder's planes, an even size, back and forth like RGB; the writer takes them."""
    n_source = 40
    clip = media.write_video(tmp_path / "numbered.mp4", _numbered_frames(n_source, (66, 49)), 25, (66, 49),
                             codec_args=("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p"))
    info = video.open_video(clip)
    assert video.frame_size(info, "yuv420p") == (66, 48)
    rgb = np.concatenate(list(video.read_frames(info, 16)))
    grey = 16 + (219 / 255) * (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)
    sources: list[int] = []
    for batch in pingpong.frames_for_audio(info, 3 * n_source, 16, tmp_path / "scratch", pixels="yuv420p"):
        assert batch.frames.shape[1:] == (66 * 48 * 3 // 2,) and batch.frames.flags.writeable
        luma, chroma_u, chroma_v = video.yuv_planes(batch.frames, 66, 48)
        assert luma.shape[1:] == (48, 66) and chroma_u.shape[1:] == chroma_v.shape[1:] == (24, 33)
        for k, source in enumerate(batch.sources):
            assert abs(float(luma[k, 20:28, 28:36].mean()) - float(grey[source, 20:28, 28:36].mean())) < 3
        sources += batch.sources.tolist()
    assert sources == [pingpong.source_index(j, n_source) for j in range(3 * n_source)]

    out = tmp_path / "out.mp4"
    with encode.VideoWriter(out, info, speech_wav, crf=18, preset="ultrafast", pixels="yuv420p") as writer:
        for frames in video.read_frames(info, 16, pixels="yuv420p"):
            writer.write(frames)
    result = probe(out)
    assert (result.width, result.height, result.pix_fmt) == (66, 48, "yuv420p")


def test_full_range_input_is_brought_to_video_levels(tmp_path: Path) -> None:
    full = tmp_path / "full.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=black:size=64x48:rate=25:duration=0.4",
                    "-vf", "scale=out_range=pc,format=yuvj420p", "-c:v", "libx264", str(full)], check=True)
    info = video.open_video(full)
    assert info.full_range
    frames = next(video.read_frames(info, 4, pixels="yuv420p"))
    luma = video.yuv_planes(frames, 64, 48)[0]
    assert abs(float(luma.mean()) - 16) < 2  # black is 16 in video levels, 0 in full range


def test_a_cut_short_video_is_refused_when_its_end_is_decoded(tmp_path: Path) -> None:
    """Issue 13.4: the first 45% of a faststart MP4 still probes as 6 s; decoding to its end tells it is cut."""
    clip = media.no_face_clip(tmp_path / "clip.mp4", seconds=6.0, size=(160, 120))
    whole = media.faststart(clip, tmp_path / "whole.mp4", "-c", "copy")
    assert sum(len(b) for b in video.read_frames(video.open_video(whole), 32)) == 150
    info = video.open_video(media.truncated(whole, tmp_path / "notes.mp4"))
    assert info.promised == pytest.approx(6.0)
    with pytest.raises(EngineError, match=r"the video notes\.mp4 is cut short: only \d\.\d s of 6\.0 s could be "
                                          r"read .* copy it again"):
        for _ in video.read_frames(info, 32):
            pass
    # A limit the decoded part covers needs nothing more: those frames are whole.
    assert sum(len(b) for b in video.read_frames(info, 32, limit=10)) == 10


def test_an_unchanged_file_is_probed_once(tmp_path: Path, speech_wav: Path, face_mp4: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's limits, the engine's video and its audio each probe a job's input: ffprobe runs once per
    file (a wrapper first in PATH counts the runs), and again when the file changes."""
    import os
    import shutil

    from pipeline.media import audio

    calls = tmp_path / "calls"
    tools = tmp_path / "bin"
    tools.mkdir()
    wrapper = tools / "ffprobe"
    wrapper.write_text(f'#!/bin/sh\necho run >> {calls}\nexec {shutil.which("ffprobe")} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    clip = media.convert(face_mp4, tmp_path / "talk.mp4", "-i", str(speech_wav), "-map", "0:v", "-map", "1:a",
                         "-c:v", "copy", "-shortest")
    probe(clip, "video")
    video.open_video(clip)
    audio.load_audio(clip, "video")
    assert calls.read_text().count("run") == 1
    media.convert(face_mp4, tmp_path / "other.mp4", "-t", "1")
    os.replace(tmp_path / "other.mp4", clip)  # another file under the same name
    assert video.open_video(clip).duration < 2.0
    assert calls.read_text().count("run") == 2
