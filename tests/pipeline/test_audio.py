"""pipeline.media.audio: any format in, 16 kHz mono out, features aligned to video frames, plain errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import EngineError
from pipeline.media import audio
from tests import media

FPS = 25.0


def _envelope_correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("speech.mp3", ("-c:a", "libmp3lame", "-b:a", "96k")),
        ("speech.m4a", ("-c:a", "aac", "-b:a", "96k")),
        ("speech.ogg", ("-c:a", "libvorbis")),
        ("speech.opus", ("-c:a", "libopus", "-b:a", "48k")),
        ("speech.flac", ()),
        ("stereo-44k.wav", ("-ac", "2", "-ar", "44100")),
    ],
)
def test_every_format_decodes_to_16k_mono_in_time(tmp_path: Path, speech_wav: Path, name: str,
                                                  extra: tuple[str, ...]) -> None:
    reference = audio.load_audio(speech_wav)
    converted = audio.load_audio(media.convert(speech_wav, tmp_path / name, *extra))
    assert converted.samples.dtype == np.float32 and converted.samples.ndim == 1
    assert abs(converted.duration - reference.duration) < 0.08  # codec padding only
    # The loudness envelopes line up frame for frame: no codec delay sneaks in.
    n = audio.frame_count(reference.duration, FPS)
    ref_level = audio.frame_loudness(reference.samples, FPS, n)
    new_level = audio.frame_loudness(converted.samples, FPS, n)
    same = _envelope_correlation(np.maximum(ref_level, -60), np.maximum(new_level, -60))
    shifted = _envelope_correlation(np.maximum(ref_level[1:], -60), np.maximum(new_level[:-1], -60))
    assert same > 0.9 and same > shifted


def test_features_follow_the_sound_frame_by_frame(tmp_path: Path) -> None:
    tone = media.tone(tmp_path / "tone.wav", seconds=1.0, freq=300.0)
    quiet = media.silence(tmp_path / "quiet.wav", seconds=1.0)
    both = tmp_path / "tone-then-silence.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(tone), "-i", str(quiet), "-filter_complex",
                    "[0:a]aresample=16000[a];[a][1:a]concat=n=2:v=0:a=1", str(both)], check=True)
    decoded = audio.load_audio(both)
    features = audio.frame_features(decoded, FPS)
    assert features.n_frames == 50
    assert features.mel.shape == (50, audio.N_MELS)
    assert features.loudness[:24].min() > -30  # the tone (ffmpeg sine: amplitude 1/8, -21 dBFS RMS)
    assert features.loudness[26:].max() <= audio.LOUDNESS_FLOOR_DBFS + 1  # digital silence
    # A 300 Hz tone puts its energy into the low mel bands.
    assert features.mel[:24, :20].mean() > features.mel[:24, 60:].mean() + 30
    audio.require_sound(features, both)  # not silent


def test_silent_audio_is_refused_in_plain_words(tmp_path: Path) -> None:
    quiet = media.silence(tmp_path / "quiet.wav", seconds=2.0)
    features = audio.frame_features(audio.load_audio(quiet), FPS)
    with pytest.raises(EngineError, match=r"'quiet.wav' is silent"):
        audio.require_sound(features, quiet)


def test_unreadable_audio_is_refused_in_plain_words(tmp_path: Path) -> None:
    junk = tmp_path / "voice.wav"
    junk.write_text("this is not a sound file\n" * 20)
    with pytest.raises(EngineError, match=r"'voice.wav' is not a readable media file"):
        audio.load_audio(junk)


def test_a_video_without_sound_is_not_an_audio(face_mp4: Path) -> None:
    with pytest.raises(EngineError, match="has no sound track"):
        audio.load_audio(face_mp4)


def test_a_sound_track_that_starts_after_the_picture_is_padded(tmp_path: Path, speech_wav: Path) -> None:
    """Sample 0 is time 0 of the file: sound that starts 0.4 s after the picture stays 0.4 s late."""
    picture = media.color_clip(tmp_path / "picture.mp4", seconds=8.0)
    late = tmp_path / "late.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(picture), "-itsoffset", "0.4", "-i", str(speech_wav),
                    "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(late)], check=True)
    reference = audio.load_audio(speech_wav)
    delayed = audio.load_audio(late)
    n = audio.frame_count(reference.duration, FPS)
    ref_level = np.maximum(audio.frame_loudness(reference.samples, FPS, n), -60)
    new_level = np.maximum(audio.frame_loudness(delayed.samples, FPS, n + 20), -60)
    best = max(range(0, 20), key=lambda lag: _envelope_correlation(ref_level, new_level[lag:]))
    assert best == 10  # 0.4 s at 25 fps


@pytest.mark.parametrize(("name", "extra"), [("notes.m4a", ("-c:a", "aac")), ("notes.mp3", ()), ("notes.wav", ()),
                                             ("notes.mkv", ("-c:a", "libopus"))])
def test_a_cut_short_audio_is_refused_in_plain_words(tmp_path: Path, name: str, extra: tuple[str, ...]) -> None:
    """Issue 13.4: an interrupted copy (the first 45% of the file) is not decoded into a shorter job."""
    whole = media.faststart(media.tone(tmp_path / "tone.wav", seconds=6.0), tmp_path / f"whole-{name}", *extra)
    assert audio.load_audio(whole).duration == pytest.approx(6.0, abs=0.1)
    cut = media.truncated(whole, tmp_path / name)
    with pytest.raises(EngineError, match=rf"the audio {name} is cut short: only 2\.\d s of 6\.0 s could be read"
                                          r".* copy it again"):
        audio.load_audio(cut)


def _peak_mb_of_features(sound: Path) -> tuple[float, float]:
    """Decode *sound* and compute its per-frame features in a child: (its samples' MB, its peak RSS in MB)."""
    script = ("import sys\nfrom pipeline.media import audio\nimport librosa\n"
              "from tests.lipsync_support import own_peak_mb\n"
              "sound = audio.load_audio(sys.argv[1], max_seconds=3600)\naudio.frame_features(sound, 25.0)\n"
              "print(sound.samples.nbytes / 2**20, own_peak_mb())\n")
    done = subprocess.run([sys.executable, "-c", script, str(sound)], capture_output=True, text=True, check=True,
                          timeout=300)
    samples_mb, peak_mb = (float(v) for v in done.stdout.split())
    return samples_mb, peak_mb


def test_memory_beyond_the_samples_is_flat_in_audio_length(tmp_path: Path) -> None:
    """Issue 13.7: features of a long audio took 30 MB a minute (the pipe's bytes and a copy, float64 sums over
    every sample, the whole spectrogram); now only the samples themselves (3.8 MB a minute) grow."""
    short = _peak_mb_of_features(media.long_silence(tmp_path / "short.m4a", seconds=180))
    long = _peak_mb_of_features(media.long_silence(tmp_path / "long.m4a", seconds=1200))
    assert long[1] - short[1] < 2 * (long[0] - short[0]) + 40


def test_the_numpy_mel_front_end_matches_librosa(speech_wav: Path) -> None:
    """frame_mel() is numpy only (no librosa import, no numba compile on the first call); it must give what
    librosa's melspectrogram (center=True, zero padding) averaged per video frame gives, to float32 rounding."""
    librosa = pytest.importorskip("librosa")

    sound = audio.load_audio(speech_wav)
    samples = sound.samples
    n_frames = audio.frame_count(sound.duration, FPS)
    reference = librosa.feature.melspectrogram(y=samples, sr=audio.SAMPLE_RATE, n_fft=audio.N_FFT,
                                               hop_length=audio.HOP_LENGTH, center=True, pad_mode="constant",
                                               power=2.0, n_mels=audio.N_MELS, fmax=audio.FMAX)
    frame_of_column = np.floor(np.arange(reference.shape[1]) * audio.HOP_LENGTH / audio.SAMPLE_RATE * FPS)
    per_frame = np.stack([reference[:, frame_of_column == k].mean(axis=1) for k in range(n_frames)])
    expected = librosa.power_to_db(per_frame, ref=1.0, amin=1e-10, top_db=None)
    mel = audio.frame_mel(samples, FPS, n_frames)
    assert mel.shape == expected.shape
    assert np.abs(mel - expected).max() < 0.01  # dB
    assert np.abs(audio.mel_filterbank() - librosa.filters.mel(sr=audio.SAMPLE_RATE, n_fft=audio.N_FFT,
                                                               n_mels=audio.N_MELS, fmax=audio.FMAX)).max() < 1e-6
    assert np.allclose(audio.mel_band_hz(), librosa.mel_frequencies(n_mels=audio.N_MELS + 2, fmin=0.0,
                                                                    fmax=audio.FMAX)[1:-1])
    assert "librosa" not in subprocess.run(
        [sys.executable, "-c", "import sys; import numpy as np; from pipeline.media import audio; "
         "audio.frame_mel(np.ones(16000, np.float32), 25.0, 25); audio.mel_band_hz(); print(sorted(sys.modules))"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2]).stdout
